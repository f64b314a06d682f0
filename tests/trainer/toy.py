"""Tiny models, processors and corpora for the trainer tests (CPU, milliseconds per step).

The index lines hold random regression data (``x`` in R^dim, ``y`` = a fixed linear function of
``x`` plus noise); ``pad`` sets a line's byte length so a test controls how the byte-range split
shares lines between ranks. The pipeline uses the *global* ``random`` module on purpose: exact
resume must hold even for processors that do.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn


class ToyRegressor(nn.Module):
    """MLP regressor with dropout (so resume must restore the RNG) and an integer buffer."""

    def __init__(self, dim: int = 4, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.last_dtype: torch.dtype | None = None

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.net(batch["x"]).squeeze(-1)
        self.last_dtype = pred.dtype
        if self.training:
            self.calls += 1
        err = pred.float() - batch["y"]
        loss = (err ** 2).mean()
        if "scale" in batch:  # lets a test make the loss (and so the gradients) non-finite
            loss = loss * batch["scale"]
        return {"loss": loss, "mae": err.abs().mean(), "not_a_scalar": err.detach()}

    def media(self, batch: dict[str, Any]) -> dict[str, Any]:
        wav = torch.sin(torch.linspace(0, 100, 1600))
        img = (np.random.rand(8, 8, 3) * 255).astype(np.uint8)
        return {"audio/tone": (wav, 16000), "image/noise": img}


class _Recorder:
    """Wraps a draw of ``FlowMatching`` (its noise assignment or time sampler), keeping the last value."""

    def __init__(self, fn: Any):
        self.fn, self.last = fn, None

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.last = self.fn(*args, **kwargs)
        return self.last


class ToyFlow(nn.Module):
    """The project's flow-matching objective (``speech.flow.matching``: global-generator noise,
    time and CFG dropout, as in training) on the toy data: ``[x, y]`` is a one-frame latent,
    ``x`` its condition. Every training call appends its noise ``x0`` and time ``t`` to
    ``self.draws`` (a plain list, not state) so tests can compare the draws of ranks and runs."""

    def __init__(self, dim: int = 4, hidden: int = 16, cfg_dropout: float = 0.3):
        super().__init__()
        from speech.flow.matching import FlowMatching

        self.matching = FlowMatching(cfg_dropout=cfg_dropout)
        self.matching.assignment = self._noise = _Recorder(self.matching.assignment)
        self.matching.time_sampler = self._time = _Recorder(self.matching.time_sampler)
        self.net = nn.Sequential(nn.Linear(2 * dim + 2, hidden), nn.Tanh(), nn.Linear(hidden, dim + 1))
        self.draws: list[dict[str, torch.Tensor]] = []

    def estimator(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, t[:, None, None].expand(-1, 1, x.shape[-1]), mu], dim=1)  # [B, C, T]
        return self.net(h.transpose(1, 2)).transpose(1, 2)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x1 = torch.cat([batch["x"], batch["y"][:, None]], dim=-1)[:, :, None]  # [B, dim + 1, 1]
        mask = torch.ones(x1.shape[0], 1, dtype=torch.bool, device=x1.device)
        out = self.matching.loss(self.estimator, x1, mask, {"mu": batch["x"][:, :, None]})
        if self.training:
            self.draws.append({"noise": self._noise.last.detach().clone(), "t": self._time.last.detach().clone()})
        return out


class ToyGAN(nn.Module):
    """Generator/discriminator pair with the GAN contract: parameter_groups + forward(group=)."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.gen = nn.Linear(dim, dim)
        self.disc = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, 1))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.gen.parameters()), "discriminator": list(self.disc.parameters())}

    def forward(self, batch: dict[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        real = batch["x"]
        fake = self.gen(torch.roll(real, 1, dims=-1))
        if group == "generator":
            adv = ((self.disc(fake) - 1) ** 2).mean()
            rec = (fake - real).abs().mean()
            return {"loss": adv + rec, "adv": adv, "rec": rec}
        d_real, d_fake = self.disc(real), self.disc(fake.detach())
        loss = ((d_real - 1) ** 2).mean() + (d_fake ** 2).mean()
        return {"loss": loss}


# --- processors (the signature of speech.dataset processors: a generator over the previous stage)
def parse(items: Iterable[dict]) -> Iterator[dict]:
    """Index lines → items with tensors."""
    for item in items:
        yield {"utt": item["utt"], "x": torch.tensor(item["x"]), "y": torch.tensor(item["y"]),
               "frames": int(item["frames"])}


parse.bounds_length = True  # toy items are fixed-size vectors (the trainer refuses unbounded pipelines)


def shuffle(items: Iterable[dict], buffer: int = 4) -> Iterator[dict]:
    """Buffer shuffle with the global ``random`` module (as careless processors do)."""
    pool: list[dict] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            yield pool.pop(random.randrange(len(pool)))
    random.shuffle(pool)
    yield from pool


def batch(items: Iterable[dict], size: int = 2, poison: Iterable[str] = ()) -> Iterator[dict]:
    """Fixed-size batches (the last may be smaller) with an ``audio_len`` frame count; a batch
    holding an utterance named in ``poison`` gets an infinite loss scale (non-finite gradients)."""
    pending: list[dict] = []
    poison = set(poison or ())

    def make(group: list[dict]) -> dict:
        out = {"utt": [g["utt"] for g in group], "x": torch.stack([g["x"] for g in group]),
               "y": torch.stack([g["y"] for g in group]),
               "audio_len": torch.tensor([g["frames"] for g in group], dtype=torch.long),
               "skipped": {"too_long": 1}}
        if poison & set(out["utt"]):
            out["scale"] = torch.tensor(float("inf"))
        return out

    for item in items:
        pending.append(item)
        if len(pending) == size:
            yield make(pending)
            pending = []
    if pending:
        yield make(pending)


def write_corpus(folder: str | Path, sizes: list[int], dim: int = 4, seed: int = 0, name: str = "train",
                  constant: bool = False) -> Path:
    """One JSON-lines shard whose ``len(sizes)`` equal byte-parts hold ``sizes[i]`` lines each.

    With ``k`` ranks reading the shard, rank ``i`` gets exactly ``sizes[i]`` utterances (the
    byte-range split of ``speech.dataset``). ``constant``: every line holds the same ``x``, ``y``
    and frame count, so every batch of a given size is the same on every rank. Returns the
    ``data.list`` path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = np.linspace(-1, 1, dim)
    part_bytes = 4096 * max(1, max(sizes) // 16 + 1)
    lines = []
    n = 0
    for size in sizes:
        per_line = part_bytes // size
        for _ in range(size):
            if constant:
                rng = np.random.default_rng(seed)
            x = rng.normal(size=dim).round(4)
            y = float((x @ w + 0.05 * rng.normal()).round(4))
            entry = {"utt": f"u{n:04d}", "x": x.tolist(), "y": y, "frames": int(rng.integers(10, 50)), "pad": ""}
            text = json.dumps(entry)
            entry["pad"] = "p" * (per_line - 1 - len(text))
            text = json.dumps(entry)
            assert len(text) + 1 == per_line, "line too long for its byte budget"
            lines.append(text)
            n += 1
        tail = part_bytes - per_line * size  # fill the part exactly with spaces on the last line
        lines[-1] = lines[-1] + " " * tail
    shard = folder / f"{name}.jsonl"
    shard.write_text("".join(line + "\n" for line in lines))
    data_list = folder / f"{name}.list"
    data_list.write_text(shard.name + "\n")
    return data_list


class ToyCodec(nn.Module):
    """A one-layer 'codec' on raw audio batches of the real pipeline (``audio``, ``audio_len``)."""

    def __init__(self, kernel: int = 9, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from speech.utils.mask import lengths_to_mask, masked_mean

        audio = batch["audio"]
        recon = self.conv(self.drop(audio).unsqueeze(1)).squeeze(1)
        mask = lengths_to_mask(batch["audio_len"], audio.shape[-1])
        return {"loss": masked_mean((recon - audio) ** 2, mask), "l1": masked_mean((recon - audio).abs(), mask)}
