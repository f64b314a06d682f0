"""Evaluation outputs: a markdown table, a JSON file and per-utterance distribution plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from speech.eval.evaluator import SystemResult

__all__ = ["COLUMNS", "markdown_table", "write_json", "plot_distributions"]

# (summary key, column header, scale, decimals): only columns some system has are shown.
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("n", "n", 1.0, 0),
    ("pesq_wb", "PESQ-WB ↑", 1.0, 3),
    ("stoi", "STOI ↑", 1.0, 3),
    ("si_sdr", "SI-SDR dB ↑", 1.0, 2),
    ("mel_distance", "mel dist ↓", 1.0, 3),
    ("stft_distance", "STFT dist ↓", 1.0, 3),
    ("wer", "WER % ↓", 100.0, 2),
    ("wer_corpus", "WER corpus % ↓", 100.0, 2),
    ("cer", "CER % ↓", 100.0, 2),
    ("sim", "SIM ↑", 1.0, 3),
    ("dnsmos_ovrl", "DNSMOS OVRL ↑", 1.0, 3),
    ("dnsmos_sig", "DNSMOS SIG ↑", 1.0, 3),
    ("dnsmos_bak", "DNSMOS BAK ↑", 1.0, 3),
    ("rtf", "RTF ↓", 1.0, 3),
)

# Per-utterance metrics worth a distribution plot: (row key, axis label).
PLOTTED: tuple[tuple[str, str], ...] = (
    ("pesq_wb", "PESQ-WB"),
    ("stoi", "STOI"),
    ("si_sdr", "SI-SDR (dB)"),
    ("mel_distance", "multi-scale mel distance"),
    ("stft_distance", "multi-resolution STFT distance"),
    ("wer", "WER"),
    ("sim", "speaker similarity"),
    ("dnsmos_ovrl", "DNSMOS OVRL"),
)


def _fmt(value: float | int | None, scale: float, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * scale:.{decimals}f}"


def markdown_table(results: Sequence[SystemResult]) -> str:
    """One row per system, one column per metric any system has (WER/CER in percent)."""
    cols = [c for c in COLUMNS if any(c[0] in r.summary for r in results)]
    lines = [
        "| system | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "|".join("---:" for _ in cols) + "|",
    ]
    for r in results:
        lines.append(f"| {r.name} | " + " | ".join(_fmt(r.summary.get(k), s, d) for k, _, s, d in cols) + " |")
    return "\n".join(lines)


def _clean(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, results: Sequence[SystemResult], meta: dict | None = None) -> None:
    """All summaries and per-utterance rows, written atomically (temp file + rename)."""
    path = Path(path)
    payload = {"meta": meta or {}, "systems": [r.as_dict() for r in results]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def plot_distributions(results: Sequence[SystemResult], out_dir: str | Path) -> list[Path]:
    """One PNG per metric: a box per system with every utterance drawn as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rng = np.random.default_rng(0)
    for key, label in PLOTTED:
        series = [
            [v for v in (row.get(key) for row in r.rows) if isinstance(v, (int, float)) and math.isfinite(v)]
            for r in results
        ]
        if not any(series):
            continue
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(results), 3.6))
        positions = [i + 1 for i, s in enumerate(series) if s]
        ax.boxplot([s for s in series if s], positions=positions, widths=0.5, showfliers=False)
        for pos, values in zip(positions, [s for s in series if s]):
            ax.scatter(pos + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6)
        ax.set_xticks(range(1, len(results) + 1), [r.name for r in results], rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per utterance")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
