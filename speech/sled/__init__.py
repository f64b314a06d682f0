"""Continuous AR path (SLED-style): a Qwen2 LM that writes DAC-VAE latents with an energy-distance head."""

from speech.sled.head import GenerativeHead
from speech.sled.loss import energy_distance
from speech.sled.model import SledLM
from speech.sled.patch import patchify, unpatchify

__all__ = ["GenerativeHead", "SledLM", "energy_distance", "patchify", "unpatchify"]
