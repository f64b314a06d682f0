#!/usr/bin/env python3
"""Stage 1 LM speed: training step time, throughput and FLOP utilisation; generation with and without KV cache.

    python bench/llm.py                                   # tiny + ref-small, fp32 and bf16, generation
    python bench/llm.py --shapes ref-full --gen_tokens 50 # the 0.5B CosyVoice 2 shape (slow on a CPU)

Shapes (shared/BENCH.md): ``ref-full`` = CosyVoice 2 0.5B backbone (configs/llm.yaml), ``ref-small``
= 256-d x 4 layers with the 151936-id Qwen text vocabulary, ``tiny`` = configs/tiny/llm.yaml; batch
B = 4 items of 30 text + 150 speech tokens with a 3 s speaker reference each. Training: median of
``--steps`` forward + backward + AdamW (fused, as in the configs) steps after ``--warmup``, in fp32
and under bf16 autocast;
throughput in speech tokens/s (B x 150 / step time). FLOPs are counted with
``torch.utils.flop_counter`` (attention included, also the CPU SDPA kernel, causal counted as
full); utilisation is against ``--peak_fp32`` / ``--peak_bf16`` (GFLOP/s, measure them with
``bench/machine.py`` or ``--measure_peak``). Each (shape, dtype) runs in its own process, so the
peak RSS is its own. Generation: B = 1, exactly ``--gen_tokens`` tokens (RAS sampling) after the
30-token text, tokens/s with the KV cache and with full recomputation per token.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from speech.config import resolve_config_text
from speech.llm.model import SpeechLM, build_qwen2
from speech.llm.speaker import SpeakerExtractor

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("tiny", "ref-small", "ref-full")
REF_SMALL = {
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
aten = torch.ops.aten


def _plain_config(path: Path) -> dict:
    """A config file as plain data (tags ignored) with references resolved: the dims, nothing built."""

    class Loose(yaml.SafeLoader):
        pass

    Loose.add_multi_constructor(
        "!",
        lambda loader, suffix, node: (
            loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else None
        ),
    )
    return yaml.load(io.StringIO(resolve_config_text(path)), Loader=Loose)


def build(shape: str) -> SpeechLM:
    """The model of a bench shape, built from the repo's configs (backbone dims and speaker settings)."""
    cfg = _plain_config(REPO / ("configs/tiny/llm.yaml" if shape == "tiny" else "configs/llm.yaml"))
    qwen = REF_SMALL if shape == "ref-small" else cfg["qwen"]
    spk_kw = {k: v for k, v in cfg["llm"]["speaker"].items() if k != "dropout"}
    llm_kw = {k: cfg["llm"][k] for k in ("speech_token_size", "bistream_prob", "mix_ratio", "label_smoothing")}
    llm_kw["fsq_levels"] = cfg["llm"].get("fsq_levels")  # optional key
    torch.manual_seed(0)
    return SpeechLM(build_qwen2(None, qwen), SpeakerExtractor(**spk_kw), **llm_kw)


def make_batch(model: SpeechLM, b: int, n_text: int, n_speech: int, ref_seconds: float) -> dict:
    g = torch.Generator().manual_seed(0)
    n_ref = int(ref_seconds * model.speaker.sample_rate)
    return {
        "text_token": torch.randint(0, model.backbone.config.vocab_size, (b, n_text), generator=g),
        "text_token_len": torch.full((b,), n_text),
        "speech_token": torch.randint(0, model.speech_token_size, (b, n_speech), generator=g),
        "speech_token_len": torch.full((b,), n_speech),
        "ref_audio": 0.1 * torch.randn(b, n_ref, generator=g),
        "ref_audio_len": torch.full((b,), n_ref),
    }


def _sdpa_cpu_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # Grouped-query attention passes fewer key/value heads; every query head still does the work.
    b, h, _sq, d = query
    return flop_counter.sdpa_flop_count(query, (b, h, key[2], d), (b, h, value[2], value[3]))


def _sdpa_cpu_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    b, h, _sq, d = query
    return flop_counter.sdpa_backward_flop_count(grad_out, query, (b, h, key[2], d), (b, h, value[2], value[3]))


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention including the CPU SDPA kernel, GQA-aware)."""
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_bwd,
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def worker_train(shape: str, dtype: str, args) -> dict:
    model = build(shape).train()
    batch = make_batch(model, args.batch, args.text_tokens, args.speech_tokens, args.ref_seconds)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=args.adamw == "fused", foreach=args.adamw == "foreach")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(with_optimizer: bool = True) -> None:
        with autocast:
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if with_optimizer:
            opt.step()

    def speaker_only() -> None:
        with autocast:
            v = model.speaker(batch["ref_audio"], batch["ref_audio_len"])
        v.sum().backward()

    flops = count_flops(lambda: step(with_optimizer=False))
    spk_flops = count_flops(speaker_only)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    peak = args.peak_bf16 if dtype == "bf16" else args.peak_fp32
    return {
        "kind": "train",
        "shape": shape,
        "dtype": dtype,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": t,
        "tokens_per_s": args.batch * args.speech_tokens / t,
        "gflop": flops / 1e9,
        "spk_gflop": spk_flops / 1e9,
        "gflops": flops / t / 1e9,
        "util": flops / t / 1e9 / peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker_generate(shape: str, args) -> dict:
    model = build(shape).eval()
    batch = make_batch(model, 1, args.text_tokens, 1, args.ref_seconds)
    ratio = args.gen_tokens / args.text_tokens  # min = max: exactly gen_tokens tokens

    def run(use_cache: bool) -> float:
        start = time.perf_counter()
        _tokens, lengths = model.generate(
            batch["text_token"],
            batch["text_token_len"],
            batch["ref_audio"],
            batch["ref_audio_len"],
            min_len_ratio=ratio,
            max_len_ratio=ratio,
            generator=torch.Generator().manual_seed(0),
            use_cache=use_cache,
        )
        elapsed = time.perf_counter() - start
        assert int(lengths[0]) == args.gen_tokens
        return elapsed

    run(True)  # warm-up
    cached = statistics.median(run(True) for _ in range(3))
    full = run(False)
    return {
        "kind": "generate",
        "shape": shape,
        "tokens": args.gen_tokens,
        "cached_tok_s": args.gen_tokens / cached,
        "full_tok_s": args.gen_tokens / full,
        "speedup": full / cached,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def spawn(argv: list[str], job: list[str]) -> dict | None:
    """Run one measurement in a fresh process (its own peak RSS); ``None`` if it failed."""
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--_job", *job], check=False, capture_output=True, text=True
    )
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
    parser.add_argument(
        "--adamw",
        choices=("fused", "foreach"),
        default="fused",
        help="AdamW implementation (the configs use fused; foreach is torch's default)",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text_tokens", type=int, default=30)
    parser.add_argument("--speech_tokens", type=int, default=150)
    parser.add_argument("--ref_seconds", type=float, default=3.0)
    parser.add_argument("--gen_tokens", type=int, default=150, help="tokens generated per generation run (0: skip)")
    parser.add_argument("--peak_fp32", type=float, default=179.0, help="GFLOP/s (bench/machine.py)")
    parser.add_argument("--peak_bf16", type=float, default=419.0, help="GFLOP/s (bench/machine.py)")
    parser.add_argument("--measure_peak", action="store_true", help="measure both peaks here first")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--_job", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args._job:
        kind, shape, *rest = args._job
        result = worker_train(shape, rest[0], args) if kind == "train" else worker_generate(shape, args)
        print(json.dumps(result))
        return

    if args.measure_peak:
        from speech.utils.flops import matmul_peak_gflops

        args.peak_fp32 = max(matmul_peak_gflops(torch.float32, (1024, 2048)).values())
        args.peak_bf16 = max(matmul_peak_gflops(torch.bfloat16, (1024, 2048)).values())
    passthrough = [a for a in sys.argv[1:] if a != "--measure_peak"]
    passthrough += ["--peak_fp32", str(args.peak_fp32), "--peak_bf16", str(args.peak_bf16)]
    print(
        f"torch {torch.__version__}, {args.threads} threads; peak fp32 {args.peak_fp32:.0f} / bf16 "
        f"{args.peak_bf16:.0f} GFLOP/s; B={args.batch}, {args.text_tokens} text + {args.speech_tokens} speech tokens, "
        f"{args.ref_seconds:g} s reference, {args.adamw} AdamW"
    )
    results = []
    jobs = [["train", s, d] for s in args.shapes for d in args.dtypes]
    jobs += [["generate", s] for s in args.shapes] if args.gen_tokens > 0 else []
    try:
        from tqdm import tqdm

        jobs_iter = tqdm(jobs, desc="bench", leave=False, file=sys.stderr)
    except ImportError:  # pragma: no cover
        jobs_iter = jobs
    for job in jobs_iter:
        out = spawn(passthrough, job)
        if out is not None:
            results.append(out)

    print(
        f"\n{'shape':10} {'dtype':5} {'params M':>9} {'step ms':>9} {'tok/s':>8} {'GFLOP':>8} {'(spk)':>7} "
        f"{'GFLOP/s':>8} {'util':>6} {'RSS MB':>8}"
    )
    for r in (r for r in results if r["kind"] == "train"):
        print(
            f"{r['shape']:10} {r['dtype']:5} {r['params_M']:9.1f} {r['step_s'] * 1e3:9.1f} {r['tokens_per_s']:8.0f} "
            f"{r['gflop']:8.1f} {r['spk_gflop']:7.2f} {r['gflops']:8.1f} {r['util']:6.1%} {r['peak_rss_mb']:8.0f}"
        )
    gen = [r for r in results if r["kind"] == "generate"]
    if gen:
        print(
            f"\n{'shape':10} {'tokens':>6} {'KV cache tok/s':>15} {'no cache tok/s':>15} {'speed-up':>9} {'RSS MB':>8}"
        )
        for r in gen:
            print(
                f"{r['shape']:10} {r['tokens']:6d} {r['cached_tok_s']:15.1f} {r['full_tok_s']:15.1f} "
                f"{r['speedup']:8.1f}x {r['peak_rss_mb']:8.0f}"
            )
    print(f"\n{len(results)}/{len(jobs)} measurements done")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
