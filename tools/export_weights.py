#!/usr/bin/env python3
"""Export a checkpoint's weights (or its EMA weights) as safetensors, with the config beside it.

    python tools/export_weights.py exp/flow/step_000200000.pt --ema --out exp/flow/flow.safetensors

Writes ``flow.safetensors`` and ``flow.yaml`` (the resolved training config, enough to rebuild
the model); the file loads with ``safetensors.torch.load_file`` or ``--pretrained_model``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speech.trainer.checkpoint import atomic_write_text, load_weights, read_config_text, read_metrics, save_safetensors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="step_S.pt, a DeepSpeed step_S/ folder or an averaged .pt")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    args = p.parse_args(argv)
    if args.out.suffix != ".safetensors":
        sys.stderr.write("export_weights.py: error: --out must end in .safetensors\n")
        return 2
    try:
        state = load_weights(args.checkpoint, ema=args.ema)
        config = read_config_text(args.checkpoint)
        unresolved = read_config_text(args.checkpoint, unresolved=True)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"export_weights.py: error: {exc}\n")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    step = read_metrics(args.checkpoint).get("step")
    save_safetensors(state, args.out, {"source": str(args.checkpoint), "ema": str(args.ema), "step": str(step)})
    if config:
        atomic_write_text(args.out.with_suffix(".yaml"), config)
    if unresolved and unresolved != config:
        atomic_write_text(args.out.with_suffix(".unresolved.yaml"), unresolved)
    n = sum(t.numel() for t in state.values())
    print(f"exported {len(state)} tensors ({n / 1e6:.2f}M values{', EMA' if args.ema else ''}) "
          f"from {args.checkpoint} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
