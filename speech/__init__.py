"""Two-stage zero-shot TTS: a Qwen2 LM turns text + speaker into FSQ tokens, a flow-matching
decoder turns tokens into DAC-VAE latents, and the DAC-VAE decoder renders 24 kHz audio."""

__version__ = "0.1.0"
