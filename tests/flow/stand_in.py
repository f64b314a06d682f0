"""Stand-ins used by the flow tests: a tiny module with the shared speaker extractor's interface, and
a loader for the flow configs that swaps it in (the real extractor lives in ``speech.llm.speaker``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from speech.config import resolve_config_text

REPO = Path(__file__).resolve().parents[2]


class TinySpeaker(nn.Module):
    """``(wav [B, S], wav_len [B]) -> [B, dim]`` L2-normalised: framed, projected, mean-pooled over valid frames.

    Accepts (and ignores) the real extractor's other constructor arguments, so configs can name it.
    """

    def __init__(self, dim: int = 192, frame: int = 240, **_: Any):
        super().__init__()
        self.dim, self.frame = dim, frame
        self.proj = nn.Linear(frame, dim)

    def forward(self, wav: torch.Tensor, wav_len: torch.Tensor) -> torch.Tensor:
        B, S = wav.shape
        n = S // self.frame
        frames = wav[:, : n * self.frame].reshape(B, n, self.frame)
        valid = (torch.arange(n, device=wav.device)[None, :] < (wav_len // self.frame)[:, None]).float()
        h = torch.tanh(self.proj(frames)) * valid[..., None]
        return F.normalize(h.sum(1) / valid.sum(1, keepdim=True).clamp_min(1.0), dim=-1)


def load_flow_config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``configs/<name>`` with the stand-in speaker and without the data/trainer sections."""
    over = {"data_pipeline": None, "cv_data_pipeline": None, "optim": None, "scheduler": None}
    over.update(overrides or {})
    text = resolve_config_text(REPO / "configs" / name, over)
    text = text.replace("speech.llm.speaker.SpeakerExtractor", "tests.flow.stand_in.TinySpeaker")
    return load_hyperpyyaml(io.StringIO(text))
