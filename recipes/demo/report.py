#!/usr/bin/env python3
"""Write the demo's report.md: per-model losses, codec metrics, WER/SIM and RTF of the synthesized
held-out sentences, and a mel-spectrogram figure of a reference next to its synthesis.

    python recipes/demo/report.py --exp exp/demo --out exp/demo/report.md

Reads only what the recipe's stages wrote (missing parts are reported as missing, not invented).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from speech.audio import load_audio, log_mel  # noqa: E402

MODELS = [("fsq", "FSQ speech tokenizer"), ("dac_vae", "DAC-VAE codec"), ("llm", "Stage 1 LM"), ("flow", "Stage 2 flow")]


def _metrics_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("step_*.yaml"))


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def losses_section(exp: Path) -> list[str]:
    lines = ["## Training (CV metrics at the first and the last checkpoint)", ""]
    for name, title in MODELS:
        files = _metrics_files(exp / name)
        if not files:
            lines += [f"- {title}: no checkpoint metrics in `{exp / name}`", ""]
            continue
        first = _flat(yaml.safe_load(files[0].read_text()) or {})
        last = _flat(yaml.safe_load(files[-1].read_text()) or {})
        keys = [k for k in last if k.startswith("cv")] or list(last)
        lines += [f"**{title}** (`{exp / name}`, {files[0].stem} → {files[-1].stem})", ""]
        lines += ["| metric | first | last |", "|---|---:|---:|"]
        lines += [f"| {k} | {first.get(k, float('nan')):.4g} | {last[k]:.4g} |" for k in keys]
        lines.append("")
    return lines


def results_section(title: str, results_md: Path) -> list[str]:
    if not results_md.is_file():
        return [f"## {title}", "", f"(missing: `{results_md}`)", ""]
    return [f"## {title}", "", results_md.read_text(encoding="utf-8").strip(), ""]


def rtf_section(synth: Path) -> list[str]:
    path = synth / "rtf.json"
    if not path.is_file():
        return ["## Real-time factor", "", f"(missing: `{path}`)", ""]
    rtf = json.loads(path.read_text())
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rtf.items()]
    return ["## Real-time factor (synthesis on this machine)", "", "| | |", "|---|---|", *rows, ""]


def mel_figure(synth: Path, out_png: Path) -> str | None:
    """Reference vs synthesis log-mels of the first synthesized utterance; returns the utt or None."""
    lst = synth / "list.jsonl"
    if not lst.is_file():
        return None
    for line in lst.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        hyp = synth / f"{item['utt']}.wav"
        if not hyp.is_file():
            continue
        fig, axes = plt.subplots(2, 1, figsize=(10, 5), constrained_layout=True)
        for ax, (label, path) in zip(axes, [("reference", item["wav"]), ("synthesis", hyp)]):
            wav, sr = load_audio(path, 24000)
            ax.imshow(log_mel(wav).numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{label}: {Path(path).name} ({wav.numel() / sr:.2f} s)")
            ax.set_ylabel("mel bin")
        axes[-1].set_xlabel("frame (hop 256 at 24 kHz)")
        fig.savefig(out_png, dpi=80)
        plt.close(fig)
        return item["utt"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, default=Path("exp/demo"))
    parser.add_argument("--out", type=Path, default=None, help="default: EXP/report.md")
    args = parser.parse_args()
    out = args.out or args.exp / "report.md"
    lines = [
        "# Demo report",
        "",
        "Every model here is a **tiny CPU model trained for minutes on ~6 minutes of synthetic speech**: the",
        "speech it makes is of low quality, and the figures below show that the pipeline works end to end,",
        "not what the system can do. For real quality run `recipes/libritts/run.sh` with the full-size",
        "configs (`configs/*.yaml`) on GPUs.",
        "",
    ]
    lines += losses_section(args.exp)
    lines += results_section("Codec round trip, corpus test split", args.exp / "eval" / "codec" / "results.md")
    lines += results_section("Synthesis of the held-out speakers (zero-shot)", args.exp / "eval" / "tts" / "results.md")
    lines += rtf_section(args.exp / "synth")
    utt = mel_figure(args.exp / "synth", out.parent / "mel.png")
    lines += ["## Reference vs synthesis", ""]
    lines += [f"![log-mel of {utt}: reference above, synthesis below](mel.png)", ""] if utt else ["(no synthesis found)", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
