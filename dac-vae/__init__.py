"""DAC-VAE: a DAC-style waveform autoencoder with a Gaussian latent (installs as ``dac_vae``).

Stands alone: it never imports ``speech``, so the codec can be used and trained by itself.
"""

__version__ = "0.1.0"
