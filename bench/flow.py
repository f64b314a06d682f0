#!/usr/bin/env python3
"""Stage 2 flow benchmark: training throughput, FLOP utilisation, peak memory, inference per NFE.

    python bench/flow.py                                  # every config, fp32 and bf16
    python bench/flow.py --configs ref-small tiny --dtypes fp32 --steps 5
    python bench/flow.py --measure_peak                   # measure the matmul peak instead of --peak_*

Shapes follow /BENCH.md: latent dim 80, token_latent_ratio 2, speaker vector 192, B = 8 items of
100 tokens -> 200 latent frames. Per config and dtype (fp32, or bf16 autocast), in a fresh process
(so peak RSS is that run's own): median step time of ``--steps`` forward + backward + AdamW steps
after ``--warmup`` warm-ups, latent frames/s, counted training FLOPs per step (SDPA included, also on
CPU), utilisation against the matmul peak, peak RSS; then inference: encoder time, time per NFE
(one guided estimator call = a batch of 2B), and a 10-step Euler solve with its real-time factor.
The speaker extractor is not part of the benchmarked shapes: the batch carries a fixed 192-d vector.

    python bench/flow.py --configs ref-small tiny --objectives cfm meanflow --dtypes fp32   # MeanFlow training step too
    python bench/flow.py --sampling --configs ref-small tiny                              # CFM vs MeanFlow sampling

``--sampling`` times, in one process per config and back to back, the whole flow stage (token
encoder + solve, ``FlowModel.sample``) of CFM with 10 Euler steps and CFG (20 estimator evaluations
of batch B) against MeanFlow with 1, 2 and 4 steps (guidance trained in: 1 evaluation per step) on
the same shapes: seconds per second of audio, NFE and the speed ratio to CFM. Speed does not depend
on the weights, so the models are untrained; quality figures come from ``speech.flow.evaluate``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speech.flow.encoder import TokenEncoder
from speech.flow.estimator import DiT, UNet1D
from speech.flow.matching import FlowMatching
from speech.flow.meanflow import MeanFlow
from speech.flow.model import FlowModel
from speech.utils.flops import count_flops, matmul_peak_gflops

LATENT_DIM, RATIO, SPK_DIM, FRAME_RATE = 80, 2, 192, 50.0

ENCODERS = {
    "full": dict(dim=512, token_blocks=6, latent_blocks=4, heads=8, ffn_dim=2048),
    "small": dict(dim=256, token_blocks=2, latent_blocks=2, heads=4, ffn_dim=1024),
    "tiny": dict(dim=64, token_blocks=1, latent_blocks=1, heads=2, ffn_dim=128),
}
# name: (encoder, estimator class, estimator kwargs). DiT sizes chosen to match the U-Nets' parameters.
CONFIGS: dict[str, tuple[str, type, dict[str, Any]]] = {
    "ref-full": ("full", UNet1D, dict(channels=[256], n_blocks=4, num_mid_blocks=12, heads=8, head_dim=64)),
    "ref-small": ("small", UNet1D, dict(channels=[128], n_blocks=4, num_mid_blocks=2, heads=4, head_dim=32)),
    "dit-full": ("full", DiT, dict(dim=512, depth=15, heads=8, head_dim=64)),
    "dit-small": ("small", DiT, dict(dim=192, depth=6, heads=4, head_dim=48)),
    "tiny": ("tiny", UNet1D, dict(channels=[64], n_blocks=1, num_mid_blocks=2, heads=2, head_dim=32)),
    "tiny-dit": ("tiny", DiT, dict(dim=64, depth=3, heads=2, head_dim=32)),
}


class GivenSpeaker(nn.Module):
    """Bench stand-in for the speaker extractor: the first 192 'samples' of ref_audio are the vector."""

    dim = SPK_DIM

    def forward(self, wav: torch.Tensor, wav_len: torch.Tensor) -> torch.Tensor:
        return F.normalize(wav[:, : self.dim], dim=-1)


def build(name: str, objective: str = "cfm") -> FlowModel:
    """The benchmarked model of ``name`` (dropout 0, so steps are comparable) with the CFM or MeanFlow objective."""
    enc_name, cls, est_kw = CONFIGS[name]
    encoder = TokenEncoder(LATENT_DIM, RATIO, dropout=0.0, **ENCODERS[enc_name])
    mean_flow = objective == "meanflow"
    estimator = cls(LATENT_DIM, spk_channels=LATENT_DIM, interval_time=mean_flow, **est_kw)
    matching = MeanFlow() if mean_flow else FlowMatching()
    return FlowModel(encoder, estimator, matching, LATENT_DIM, speaker=GivenSpeaker())


def make_batch(batch: int, tokens: int) -> dict[str, torch.Tensor]:
    frames = tokens * RATIO
    return dict(
        speech_token=torch.randint(0, 6561, (batch, tokens)),
        speech_token_len=torch.full((batch,), tokens),
        latent=torch.randn(batch, LATENT_DIM, frames),
        latent_len=torch.full((batch,), frames),
        ref_audio=torch.randn(batch, SPK_DIM),
        ref_audio_len=torch.full((batch,), SPK_DIM),
    )


def _median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_sampling(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Flow-stage time of CFM (10 Euler steps, CFG) and MeanFlow (1, 2, 4 steps), one process, back to back."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch(args.batch, args.tokens)
    tok, tok_len, spk = batch["speech_token"], batch["speech_token_len"], batch["ref_audio"]
    audio_s = args.batch * args.tokens * RATIO / FRAME_RATE
    models = {"cfm": build(name, "cfm").eval(), "meanflow": build(name, "meanflow").eval()}
    settings = [("cfm", 10, 0.7)] + [("meanflow", n, None) for n in args.mf_steps]
    rows = []
    with torch.inference_mode():
        for objective, n_steps, cfg_w in settings:
            model = models[objective]
            seconds = _median_time(
                lambda: model.sample(tok, tok_len, spk=spk, n_steps=n_steps, cfg_w=cfg_w), args.repeats, 1
            )
            rows.append(
                dict(objective=objective, n_steps=n_steps, nfe=model.matching.nfe(n_steps, cfg_w), seconds=seconds,
                     per_audio_s=seconds / audio_s, load=os.getloadavg()[0])
            )
    return rows


def run_one(name: str, dtype: str, args: argparse.Namespace, objective: str = "cfm") -> dict[str, Any]:
    """Benchmark one config in one dtype (runs in its own process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(name, objective).train()
    batch = make_batch(args.batch, args.tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def fwd_bwd() -> None:
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        opt.step()

    step_s = _median_time(step, args.steps, args.warmup)
    opt.zero_grad(set_to_none=True)
    flops = count_flops(fwd_bwd)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Inference: encoder once, then the guided estimator call per NFE, then a whole solve.
    model.eval()
    frames = args.tokens * RATIO
    tok, tok_len = batch["speech_token"], batch["speech_token_len"]
    spk = batch["ref_audio"]
    with torch.inference_mode(), autocast:
        enc_s = _median_time(lambda: model.encoder(tok, tok_len), 3, 1)
        mu, mask = model.encoder(tok, tok_len)
        conds = {"mu": mu, "spk": model.speaker_condition(spk), "cond": torch.zeros_like(mu)}
        x, t = torch.randn_like(mu), torch.full((mu.shape[0],), 0.5)
        if objective == "meanflow":  # one evaluation with the second time; a "solve" is the 1-step sample
            r = torch.ones_like(t)
            nfe_s = _median_time(lambda: model.estimator(x, mask, t=t, r=r, **conds), 3, 1)
            solve_s = _median_time(lambda: model.sample(tok, tok_len, spk=spk, n_steps=1), 1, 1)
        else:
            nfe_s = _median_time(
                lambda: model.matching.guided_velocity(model.estimator, x, mask, t, conds, 0.7), 3, 1
            )
            solve_s = _median_time(lambda: model.sample(tok, tok_len, spk=spk, n_steps=10, cfg_w=0.7), 1, 1)
    audio_s = args.batch * frames / FRAME_RATE
    return dict(
        name=name if objective == "cfm" else f"{name}/mf",
        dtype=dtype,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        est_params_m=sum(p.numel() for p in model.estimator.parameters()) / 1e6,
        step_s=step_s,
        frames_per_s=args.batch * frames / step_s,
        gflop=flops / 1e9,
        gflops=flops / step_s / 1e9,
        rss_mb=max(train_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        load=os.getloadavg()[0],
        enc_ms=enc_s * 1e3,
        nfe_ms=nfe_s * 1e3,
        solve_s=solve_s,
        rtf=solve_s / audio_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per item (latent frames = 2x)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak_fp32", type=float, default=179.0, help="matmul peak GFLOP/s (BENCH.md, this machine)")
    parser.add_argument("--peak_bf16", type=float, default=419.0)
    parser.add_argument("--measure_peak", action="store_true", help="measure the peak with speech.utils.flops first")
    parser.add_argument("--objectives", nargs="+", default=["cfm"], choices=["cfm", "meanflow"],
                        help="training objectives to bench (meanflow: JVP target, 1-step sampling)")
    parser.add_argument("--sampling", action="store_true", help="only the CFM vs MeanFlow sampling comparison")
    parser.add_argument("--mf_steps", type=int, nargs="+", default=[1, 2, 4], help="MeanFlow steps for --sampling")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per setting for --sampling (median)")
    args = parser.parse_args()
    if args.sampling:
        sampling_table(args)
        return
    peaks = {"fp32": args.peak_fp32, "bf16": args.peak_bf16}
    if args.measure_peak:
        torch.set_num_threads(args.threads)
        peaks = {
            "fp32": max(matmul_peak_gflops(torch.float32).values()),
            "bf16": max(matmul_peak_gflops(torch.bfloat16).values()),
        }
    print(
        f"flow bench: B={args.batch} x {args.tokens} tokens ({args.tokens * RATIO} latent frames), "
        f"latent {LATENT_DIM}, {args.threads} threads, torch {torch.__version__}; "
        f"peak fp32 {peaks['fp32']:.0f} / bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    header = (
        f"{'config':<12} {'dtype':<5} {'params':>7} {'est':>6} {'step s':>7} {'frames/s':>9} {'GFLOP':>7} "
        f"{'GFLOP/s':>8} {'util':>6} {'RSS MB':>7} {'enc ms':>7} {'NFE ms':>7} {'10-step s':>9} {'RTF':>6} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    ctx = mp.get_context("spawn")
    for name, objective in [(n, o) for n in args.configs for o in args.objectives]:
        for dtype in args.dtypes:
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:  # fresh process: own peak RSS
                r = pool.submit(run_one, name, dtype, args, objective).result()
            util = r["gflops"] / peaks[dtype]
            print(
                f"{r['name']:<12} {dtype:<5} {r['params_m']:6.1f}M {r['est_params_m']:5.1f}M {r['step_s']:7.3f} "
                f"{r['frames_per_s']:9.0f} {r['gflop']:7.1f} {r['gflops']:8.1f} {util:6.1%} {r['rss_mb']:7.0f} "
                f"{r['enc_ms']:7.1f} {r['nfe_ms']:7.1f} {r['solve_s']:9.2f} {r['rtf']:6.3f} {r['load']:5.1f}",
                flush=True,
            )
    print(
        "step = forward + backward + AdamW (median); NFE = one guided estimator call (batch 2B); "
        "RTF = 10-step solve / audio seconds; load = 1-min load average after the run (other jobs make figures noisy); "
        "/mf = MeanFlow objective (NFE = one call of batch B with both times; RTF = 1-step sample)"
    )


def sampling_table(args: argparse.Namespace) -> None:
    """Print the CFM (10 Euler steps, CFG) vs MeanFlow (1/2/4 steps) flow-stage comparison."""
    print(
        f"flow sampling bench: B={args.batch} x {args.tokens} tokens ({args.tokens * RATIO} latent frames), fp32, "
        f"{args.threads} threads, median of {args.repeats}; untrained weights (speed only)"
    )
    header = f"{'config':<10} {'objective':<9} {'steps':>5} {'NFE':>4} {'flow s':>8} {'s/audio s':>10} {'speedup':>8} {'load':>5}"
    print(header)
    print("-" * len(header))
    ctx = mp.get_context("spawn")
    for name in args.configs:
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            rows = pool.submit(run_sampling, name, args).result()
        base = rows[0]["seconds"]
        for r in rows:
            print(
                f"{name:<10} {r['objective']:<9} {r['n_steps']:5d} {r['nfe']:4d} {r['seconds']:8.4f} "
                f"{r['per_audio_s']:10.5f} {base / r['seconds']:7.1f}x {r['load']:5.1f}",
                flush=True,
            )
    print("flow s = token encoder + solve (FlowModel.sample); NFE = estimator evaluations of batch B (CFG = 2 per step); "
          "speedup = CFM 10-step time / this time, measured in the same process")


if __name__ == "__main__":
    main()
