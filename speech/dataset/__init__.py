"""Index reading, processors and batching (see dataset.py for the data flow)."""

from .context import PipelineContext, SkipCounter
from .dataset import DataListError, Dataset, read_data_list, read_index

__all__ = ["Dataset", "DataListError", "PipelineContext", "SkipCounter", "read_data_list", "read_index"]
