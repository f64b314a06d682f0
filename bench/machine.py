#!/usr/bin/env python3
"""This machine's matmul peak (fp32 and bf16): the denominator of every FLOP-utilisation figure.

    python bench/machine.py [--threads 2] [--sizes 512 1024 2048] [--json out.json]

Prints the best sustained GFLOP/s per size and dtype, and the peak over sizes. Other benchmarks
take the peak with ``--peak_fp32`` / ``--peak_bf16`` or measure it themselves through the same code
(``speech.utils.flops.matmul_peak_gflops``).
"""
from __future__ import annotations

import argparse
import json
import platform

import torch

from speech.utils.flops import matmul_peak_gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as in BENCH.md)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per size and dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}")
    report = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        per_size = matmul_peak_gflops(dtype, tuple(args.sizes), args.seconds, args.device)
        for n, gflops in per_size.items():
            print(f"  {name} matmul {n:>5} x {n:<5} {gflops:8.1f} GFLOP/s")
        report[name] = {"per_size": per_size, "peak": max(per_size.values())}
    print(f"peak: fp32 {report['fp32']['peak']:.1f} GFLOP/s, bf16 {report['bf16']['peak']:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
