"""flowae: a flow-matching autoencoder whose decoder reuses ``speech.flow``."""

__version__ = "0.1.0"
