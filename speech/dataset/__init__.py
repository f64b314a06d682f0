"""Index reading, processors and batching (see dataset.py for the data flow)."""
from .dataset import Dataset, DataListError, read_data_list

__all__ = ["Dataset", "DataListError", "read_data_list"]
