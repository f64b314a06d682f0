"""Fixtures for the flowae tests: the tiny config at both hops, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowae.model import FlowAE
from speech.config import load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/tiny/flowae.yaml"
HOPS = {  # hop: overrides of the tiny config (hop 480 is the file as is)
    480: {},
    320: {"strides": [8, 5, 8], "frame_hop": 320, "latent_dim": 64},  # = configs/tiny/flowae_3x.yaml
}


def build(hop: int = 480, **model_overrides) -> FlowAE:
    """The tiny flowae at ``hop``; ``model_overrides`` set arguments of its ``flowae:`` section."""
    torch.manual_seed(0)
    return load_config(TINY, {**HOPS[hop], **({"flowae": model_overrides} if model_overrides else {})})["flowae"]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
