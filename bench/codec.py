#!/usr/bin/env python3
"""DAC-VAE benchmark: GAN training throughput, extraction and decoding speed, parameters, FLOPs.

    python bench/codec.py                              # tiny 2x and 3x, full size; fp32
    python bench/codec.py --runs tiny full --dtypes fp32 bf16 --steps 5
    python bench/codec.py --measure_peak               # measure the matmul peak instead of --peak_*
    python bench/codec.py --quality configs/tiny/dac_vae.yaml exp/tiny/step_000000100.pt   # dev-split quality
    python bench/codec.py --budget 300 --runs tiny tiny-frame tiny-harmonic   # quality after 300 s of training each

Per run (a config, batch size and dtype; each in a fresh process so peak RSS is its own):
- training: median wall time of ``--steps`` iterations (discriminator step + generator step with
  AdamW, adversarial terms on) after ``--warmup`` warm-ups, on ``B`` random 0.38 s crops of the
  corpus; throughput in audio seconds per wall second; counted FLOPs of one iteration
  (``FlopCounterMode``: convolutions and matmuls; STFTs are not counted) and utilisation against
  the matmul peak;
- inference (eval mode, weight norm folded, as ``extract_dac_latents.py`` runs it): encoding the
  dev split in length-bucketed batches (x real time, FLOPs per audio second), decoding it back;
- parameter counts of encoder + posterior, decoder, discriminator; peak RSS.

``--budget SECONDS`` trains each run's config from scratch for that many wall seconds (``--threads``
threads, the config's optimizers, schedulers, loss weights and crop length, its batch size from
RUNS) and then reports the dev-split quality below: how far each decoder kind gets on a fixed CPU
budget, the figure that decides which one the CPU demo uses.

``--quality CONFIG CHECKPOINT`` instead round-trips the dev split through a trained codec (posterior
mean) and prints the mean over utterances of the evaluation toolkit's codec metrics
(``speech.eval.codec``): multi-scale mel distance, multi-resolution STFT distance, SI-SDR, PESQ-WB, STOI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from dac_vae.audio import load_wav
from dac_vae.checkpoint import build_codec, load_codec
from dac_vae.extract_dac_latents import encode_padded
from dac_vae.inference import decode_latents
from dac_vae.latents import length_batches
from speech.utils.flops import count_flops, matmul_peak_gflops

REPO = Path(__file__).resolve().parents[1]
RUNS = {  # name: (config, batch size)
    "tiny": ("configs/tiny/dac_vae.yaml", 8),
    "tiny-3x": ("configs/tiny/dac_vae_3x.yaml", 8),
    "tiny-frame": ("configs/tiny/dac_vae_frame.yaml", 16),
    "tiny-harmonic": ("configs/tiny/dac_vae_harmonic.yaml", 16),
    "full": ("configs/dac_vae.yaml", 2),
}
CROP_SECONDS = 0.38


def _corpus(split: str, limit: int | None = None) -> list[torch.Tensor]:
    ids = (REPO / "data" / "splits" / f"{split}.txt").read_text().split()[:limit]
    wavs = {p.stem: p for p in (REPO / "data" / "wavs").glob("*/*.wav")}
    return [load_wav(wavs[i], 24000) for i in ids]


def _crops(wavs: list[torch.Tensor], batch: int, n: int, gen: torch.Generator) -> dict:
    out = []
    for _ in range(batch):
        w = wavs[int(torch.randint(len(wavs), (1,), generator=gen))]
        start = int(torch.randint(max(1, w.shape[0] - n), (1,), generator=gen))
        crop = w[start : start + n]
        out.append(torch.nn.functional.pad(crop, (0, n - crop.shape[0])))
    return {"audio": torch.stack(out), "audio_len": torch.full((batch,), n, dtype=torch.long)}


def run_one(name: str, dtype_name: str, args: argparse.Namespace) -> dict:
    """One config and dtype: training iteration time, FLOPs, inference speed (in its own process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config, batch_size = RUNS[name]
    codec = build_codec(REPO / config).train()
    codec.disc_start_step = 0  # time the full GAN iteration
    groups = codec.parameter_groups()
    opts = {g: torch.optim.AdamW(p, lr=1e-4, betas=(0.8, 0.99)) for g, p in groups.items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype_name == "bf16" else nullcontext()
    train_wavs = _corpus("train")
    gen = torch.Generator().manual_seed(0)
    n = int(CROP_SECONDS * codec.sample_rate)

    def iteration(step: int) -> None:
        batch = _crops(train_wavs, batch_size, n, gen)
        for group, opt in opts.items():
            with autocast:
                loss = codec(batch, group=group, step=step)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for step in range(args.warmup):
        iteration(step)
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        iteration(step)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    train_flops = count_flops(lambda: iteration(0))

    counts = {
        "encoder": sum(p.numel() for p in [*codec.encoder.parameters(), *codec.posterior.parameters()]),
        "decoder": sum(p.numel() for p in codec.decoder.parameters()),
        "discriminator": sum(p.numel() for p in groups.get("discriminator", [])),
    }

    codec.discriminator = None
    codec.remove_weight_norm().eval()
    dev = _corpus("dev")
    seconds = sum(w.shape[0] for w in dev) / codec.sample_rate
    batches = length_batches([w.shape[0] for w in dev], int(args.batch_seconds * codec.sample_rate), 64)
    device = torch.device("cpu")

    def encode_all() -> list:
        with autocast:
            return [encode_padded(codec, [dev[i] for i in b], device) for b in batches]

    encode_all()  # warm-up
    start = time.perf_counter()
    encoded = encode_all()
    encode_time = time.perf_counter() - start
    encode_flops = count_flops(encode_all)
    latents = [mu for chunk in encoded for mu, _ in chunk]
    lengths = [dev[i].shape[0] for b in batches for i in b]

    def decode_all() -> None:
        with autocast:
            offset = 0
            for b in batches:
                decode_latents(codec, latents[offset : offset + len(b)], lengths[offset : offset + len(b)], device)
                offset += len(b)

    decode_all()
    start = time.perf_counter()
    decode_all()
    decode_time = time.perf_counter() - start
    decode_flops = count_flops(decode_all)
    return {
        "name": name,
        "dtype": dtype_name,
        "batch": batch_size,
        "params": counts,
        "step_s": step_time,
        "train_audio_per_s": batch_size * CROP_SECONDS / step_time,
        "train_gflop": train_flops / 1e9,
        "train_gflops": train_flops / 1e9 / step_time,
        "dev_seconds": seconds,
        "encode_xrt": seconds / encode_time,
        "encode_gflops": encode_flops / 1e9 / encode_time,
        "encode_gflop_per_audio_s": encode_flops / 1e9 / seconds,
        "decode_xrt": seconds / decode_time,
        "decode_gflops": decode_flops / 1e9 / decode_time,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _split_quality(codec, split: str) -> dict[str, float]:
    """Mean codec metrics (``speech.eval.codec``) of the split's round trips (posterior mean)."""
    import math

    from dac_vae.inference import roundtrip
    from speech.eval.codec import CodecMetrics

    metrics = CodecMetrics(codec.sample_rate)
    with torch.no_grad():
        rows = [metrics(wav, roundtrip(codec, [wav], torch.device("cpu"))[0]) for wav in _corpus(split)]
    return {k: statistics.fmean(r[k] for r in rows if not math.isnan(r[k])) for k in CodecMetrics.names}


def quality(config: str, checkpoint: str, split: str, threads: int) -> None:
    """Print the split's mean codec metrics (``speech.eval.codec``) for a trained codec's round trip."""
    torch.set_num_threads(threads)
    codec = load_codec(config, checkpoint)
    mean = _split_quality(codec, split)
    n = len(_corpus(split))
    print(f"{checkpoint} on {split} ({n} utterances): " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))


def budget_run(name: str, seconds: float, split: str, threads: int) -> dict:
    """Train ``name``'s config from scratch for ``seconds`` of wall time, then measure quality."""
    from speech.config import load_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config, batch_size = RUNS[name]
    built = load_config(REPO / config)  # our own config: its optimizers and schedulers too
    codec = built["dac_vae"].train()
    groups = codec.parameter_groups()
    optim, sched = built["optim"], built.get("scheduler")
    opts = {g: (optim[g] if isinstance(optim, dict) else optim)(p) for g, p in groups.items()}
    scheds = {g: (sched[g] if isinstance(sched, dict) else sched)(o) for g, o in opts.items()} if sched else {}
    train_wavs = _corpus("train")
    gen = torch.Generator().manual_seed(0)
    n = int(float(built.get("crop_seconds", CROP_SECONDS)) * codec.sample_rate)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = _crops(train_wavs, batch_size, n, gen)
        for group, opt in opts.items():
            loss = codec(batch, group=group, step=step)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if group in scheds:
                scheds[group].step()
        step += 1
    elapsed = time.perf_counter() - start
    codec.discriminator = None
    codec.eval()
    decoder_kind = type(codec.decoder).__name__
    return {"name": name, "decoder": decoder_kind, "steps": step, "seconds": elapsed,
            "audio_s": step * batch_size * n / codec.sample_rate, **_split_quality(codec, split)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5, help="timed training iterations (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (BENCH.md: 2)")
    parser.add_argument("--batch_seconds", type=float, default=60.0, help="padded seconds per inference batch")
    parser.add_argument("--peak_fp32", type=float, default=179.0, help="matmul peak GFLOP/s (bench/machine.py)")
    parser.add_argument("--peak_bf16", type=float, default=419.0, help="matmul peak GFLOP/s (bench/machine.py)")
    parser.add_argument("--measure_peak", action="store_true", help="measure the peaks here instead")
    parser.add_argument(
        "--quality", nargs=2, metavar=("CONFIG", "CHECKPOINT"), help="dev-split quality of a trained codec"
    )
    parser.add_argument("--split", default="dev", help="corpus split for --quality and --budget")
    parser.add_argument("--budget", type=float, help="train each of --runs for this many wall seconds, then "
                        "report its quality (instead of the speed table)")
    args = parser.parse_args()
    if args.quality:
        quality(*args.quality, args.split, args.threads)
        return
    if args.budget:
        print(f"{'run':<11}{'decoder':<14}{'steps':>6}{'train s':>8}{'audio s':>8}{'mel':>7}{'STFT':>7}"
              f"{'SI-SDR':>8}{'PESQ':>6}{'STOI':>6}   ({args.split} split, {args.threads} threads)")
        ctx = mp.get_context("spawn")
        for name in args.runs:
            with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                r = pool.submit(budget_run, name, args.budget, args.split, args.threads).result()
            print(f"{name:<11}{r['decoder']:<14}{r['steps']:>6}{r['seconds']:>8.0f}{r['audio_s']:>8.0f}"
                  f"{r['mel_distance']:>7.3f}{r['stft_distance']:>7.3f}{r['si_sdr']:>8.2f}{r['pesq_wb']:>6.2f}"
                  f"{r['stoi']:>6.3f}", flush=True)
        return
    torch.set_num_threads(args.threads)
    peaks = {"fp32": args.peak_fp32, "bf16": args.peak_bf16}
    if args.measure_peak:
        peaks = {
            "fp32": max(matmul_peak_gflops(torch.float32).values()),
            "bf16": max(matmul_peak_gflops(torch.bfloat16).values()),
        }
    print(
        f"torch {torch.__version__}, {args.threads} threads; "
        f"peak fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    header = (
        f"{'run':<9}{'dtype':<6}{'B':>3}{'enc M':>8}{'dec M':>8}{'disc M':>8}{'step s':>8}{'audio s/s':>10}"
        f"{'GFLOP/it':>10}{'util':>7}{'enc xRT':>9}{'enc util':>9}{'dec xRT':>9}{'dec util':>9}{'RSS MB':>8}"
    )
    print(header)
    ctx = mp.get_context("spawn")
    for name in args.runs:
        for dtype_name in args.dtypes:
            with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                r = pool.submit(run_one, name, dtype_name, args).result()
            peak = peaks[dtype_name]
            p = r["params"]
            print(
                f"{name:<9}{dtype_name:<6}{r['batch']:>3}{p['encoder'] / 1e6:>8.2f}{p['decoder'] / 1e6:>8.2f}"
                f"{p['discriminator'] / 1e6:>8.2f}{r['step_s']:>8.2f}{r['train_audio_per_s']:>10.2f}"
                f"{r['train_gflop']:>10.1f}{r['train_gflops'] / peak:>7.1%}{r['encode_xrt']:>9.1f}"
                f"{r['encode_gflops'] / peak:>9.1%}{r['decode_xrt']:>9.1f}{r['decode_gflops'] / peak:>9.1%}"
                f"{r['peak_rss_mb']:>8.0f}",
                flush=True,
            )
    print(
        "audio s/s: training audio seconds per wall second (discriminator + generator step); xRT: "
        "dev-split seconds per wall second; util: counted FLOP/s over the matmul peak"
    )


if __name__ == "__main__":
    main()
