"""DAC-VAE: a DAC-style waveform autoencoder with a Gaussian latent (installs as ``dac_vae``).

Stands alone: it never imports ``speech``, so the codec can be used and trained by itself.

    from dac_vae import load_codec
    codec = load_codec("configs/dac_vae.yaml", "exp/dac_vae/step_000400000.pt")
    mu, logs, latent_len = codec.encode(audio, audio_len)     # [B, S] -> [B, D, ceil(S / hop)]
    wav = codec.decode(mu, latent_len, length=audio.shape[-1])
"""

from dac_vae.checkpoint import build_codec, load_codec
from dac_vae.model import DACVAE

__all__ = ["DACVAE", "build_codec", "load_codec"]
__version__ = "0.1.0"
