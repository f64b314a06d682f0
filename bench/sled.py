#!/usr/bin/env python3
"""Continuous AR (SLED) speed: training step time, throughput and FLOP utilisation; generation RTF for k = 1, 2, 4.

    python bench/sled.py                                  # tiny + ref-small, fp32 and bf16, generation
    python bench/sled.py --shapes ref-full --gen_steps 50 # the 0.5B backbone (slow on a CPU)

Shapes as in bench/llm.py (shared/BENCH.md): ``ref-full`` = the Qwen2.5-0.5B backbone of
configs/sled.yaml (head 1024 x 6 blocks), ``ref-small`` = 256-d x 4 layers with the 151936-id text
vocabulary (head 256 x 3), ``tiny`` = configs/tiny/sled.yaml. Training batch: B = 4 items of 30
text tokens + 150 latent *steps* (k = 2 frames each, 80-d latents) with a 3 s reference;
throughput in latent steps/s (B x 150 / step time), FLOPs counted as in bench/llm.py (attention
included). Generation: B = 1, exactly ``--gen_steps`` steps after the 30-token text, KV cache, CFG
on (two rows), for ``patch_size`` k = 1, 2, 4 on 50 Hz latents; RTF = wall time / seconds of latents
(the codec's decode is not included: bench/codec.py times it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import io

import torch
import yaml

from speech.config import resolve_config_text
from speech.llm.model import build_qwen2
from speech.llm.sampling import RowRandom
from speech.llm.speaker import SpeakerExtractor
from speech.sled.model import SledLM
from speech.utils.flops import count_flops

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("tiny", "ref-small", "ref-full")
LATENT_RATE = 50.0
REF_SMALL = {  # shared/BENCH.md ref-small (as in bench/llm.py)
    "vocab_size": 151936, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
}


def _plain_config(path: Path) -> dict:
    """A config file as plain data (tags ignored, references resolved): the dims, nothing built."""

    class Loose(yaml.SafeLoader):
        pass

    Loose.add_multi_constructor("!", lambda loader, suffix, node: (
        loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else None))
    return yaml.load(io.StringIO(resolve_config_text(path)), Loader=Loose)


def build(shape: str, patch_size: int) -> SledLM:
    """The model of a bench shape, from the repo's configs (backbone, head and speaker settings)."""
    cfg = _plain_config(REPO / ("configs/tiny/sled.yaml" if shape == "tiny" else "configs/sled.yaml"))
    qwen = REF_SMALL if shape == "ref-small" else cfg["qwen"]
    spk_kw = {k: v for k, v in cfg["sled"]["speaker"].items() if k != "dropout"}
    head = {"head_width": 256, "head_depth": 3} if shape == "ref-small" else {
        k: cfg["sled"][k] for k in ("head_width", "head_depth")}
    torch.manual_seed(0)
    return SledLM(build_qwen2(None, qwen), SpeakerExtractor(**spk_kw), latent_dim=80, latent_rate=LATENT_RATE,
                  patch_size=patch_size, noise_dim=cfg["sled"]["noise_dim"], **head)


def make_batch(model: SledLM, b: int, n_text: int, n_steps: int, ref_seconds: float) -> dict:
    g = torch.Generator().manual_seed(0)
    n_ref, n_lat = int(ref_seconds * model.speaker.sample_rate), n_steps * model.patch_size
    return {
        "text_token": torch.randint(0, model.backbone.config.vocab_size, (b, n_text), generator=g),
        "text_token_len": torch.full((b,), n_text),
        "latent": torch.randn(b, model.latent_dim, n_lat, generator=g),
        "latent_len": torch.full((b,), n_lat),
        "ref_audio": 0.1 * torch.randn(b, n_ref, generator=g),
        "ref_audio_len": torch.full((b,), n_ref),
    }


def worker_train(shape: str, dtype: str, args) -> dict:
    model = build(shape, 2).train()
    batch = make_batch(model, args.batch, args.text_tokens, args.latent_steps, args.ref_seconds)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(with_optimizer: bool = True) -> None:
        with autocast:
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if with_optimizer:
            opt.step()

    flops = count_flops(lambda: step(with_optimizer=False))
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    peak = args.peak_bf16 if dtype == "bf16" else args.peak_fp32
    return {"kind": "train", "shape": shape, "dtype": dtype,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "step_s": t,
            "steps_per_s": args.batch * args.latent_steps / t, "gflop": flops / 1e9, "gflops": flops / t / 1e9,
            "util": flops / t / 1e9 / peak, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_generate(shape: str, k: int, args) -> dict:
    model = build(shape, k).eval()
    batch = make_batch(model, 1, args.text_tokens, 1, args.ref_seconds)
    ratio = (args.gen_steps * k + 0.5) / args.text_tokens  # min = max: exactly gen_steps steps

    def run() -> float:
        start = time.perf_counter()
        _lat, lengths = model.generate(batch["text_token"], batch["text_token_len"], batch["ref_audio"],
                                       batch["ref_audio_len"], min_len_ratio=ratio, max_len_ratio=ratio, cfg_w=1.0,
                                       generator=RowRandom(torch.zeros(1, dtype=torch.long)))
        elapsed = time.perf_counter() - start
        assert int(lengths[0]) == args.gen_steps * k, lengths
        return elapsed

    run()  # warm-up
    t = statistics.median(run() for _ in range(3))
    seconds = args.gen_steps * k / LATENT_RATE
    return {"kind": "generate", "shape": shape, "k": k, "steps": args.gen_steps, "ar_hz": LATENT_RATE / k,
            "audio_s": seconds, "wall_s": t, "steps_per_s": args.gen_steps / t, "rtf": t / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(argv: list[str], job: list[str]) -> dict | None:
    """Run one measurement in a fresh process (its own peak RSS); ``None`` if it failed."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--_job", *job], check=False, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {' '.join(job)}: failed ({tail})", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["tiny", "ref-small"])
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2, as in BENCH.md)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text_tokens", type=int, default=30)
    parser.add_argument("--latent_steps", type=int, default=150)
    parser.add_argument("--ref_seconds", type=float, default=3.0)
    parser.add_argument("--gen_steps", type=int, default=100, help="AR steps per generation run (0: skip)")
    parser.add_argument("--patch_sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--peak_fp32", type=float, default=179.0, help="GFLOP/s (bench/machine.py)")
    parser.add_argument("--peak_bf16", type=float, default=419.0, help="GFLOP/s (bench/machine.py)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--_job", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args._job:
        kind, shape, rest = args._job[0], args._job[1], args._job[2]
        out = worker_train(shape, rest, args) if kind == "train" else worker_generate(shape, int(rest), args)
        print(json.dumps(out))
        return

    print(f"torch {torch.__version__}, {args.threads} threads; peak fp32 {args.peak_fp32:.0f} / bf16 "
          f"{args.peak_bf16:.0f} GFLOP/s; B={args.batch}, {args.text_tokens} text + {args.latent_steps} latent steps "
          f"(k = 2, 80-d), {args.ref_seconds:g} s reference")
    jobs = [["train", s, d] for s in args.shapes for d in args.dtypes]
    jobs += [["generate", s, str(k)] for s in args.shapes for k in args.patch_sizes] if args.gen_steps > 0 else []
    results = [r for r in (spawn(sys.argv[1:], job) for job in jobs) if r is not None]
    print(f"\n{'shape':10} {'dtype':5} {'params M':>9} {'step ms':>9} {'steps/s':>8} {'GFLOP':>8} {'GFLOP/s':>8} "
          f"{'util':>6} {'RSS MB':>8}")
    for r in (r for r in results if r["kind"] == "train"):
        print(f"{r['shape']:10} {r['dtype']:5} {r['params_M']:9.1f} {r['step_s'] * 1e3:9.1f} {r['steps_per_s']:8.0f} "
              f"{r['gflop']:8.1f} {r['gflops']:8.1f} {r['util']:6.1%} {r['peak_rss_mb']:8.0f}")
    gen = [r for r in results if r["kind"] == "generate"]
    if gen:
        print(f"\n{'shape':10} {'k':>2} {'AR Hz':>6} {'steps':>6} {'audio s':>8} {'wall s':>8} {'steps/s':>8} "
              f"{'RTF':>7}")
        for r in gen:
            print(f"{r['shape']:10} {r['k']:2d} {r['ar_hz']:6.1f} {r['steps']:6d} {r['audio_s']:8.2f} "
                  f"{r['wall_s']:8.2f} {r['steps_per_s']:8.1f} {r['rtf']:7.3f}")
    print(f"\n{len(results)}/{len(jobs)} measurements done")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
