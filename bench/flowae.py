#!/usr/bin/env python3
"""flowae vs the DAC-VAE: reconstruction quality after equal training steps, and render speed.

    python -m bench.flowae --steps 150 --threads 1          # from the repo root
    python -m bench.flowae --steps 150 --render_steps 1 2 4 8 16

Both codecs have the same latent (hop 480: 50 Hz × 80 dims) and train from scratch with their own
tiny config's optimizer, scheduler, batch size and crop length (configs/tiny/flowae.yaml vs
configs/tiny/dac_vae_frame.yaml, the DAC-VAE the CPU demo uses) for the same number of steps on random
crops of the corpus's train split, each in its own process. Then the dev split is round-tripped
(DAC-VAE: posterior mean; flowae: its configured ODE steps) and scored with ``speech.eval.codec``
(multi-scale mel distance, multi-resolution STFT distance, SI-SDR, PESQ-WB, STOI; mean over
utterances). Render speed: wall seconds of decoding per second of dev audio, for flowae at each
``--render_steps`` ODE step count (one estimator call per Euler step) and for the DAC-VAE decoder.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import time

import torch

from bench.codec import REPO, _corpus, _crops, _split_quality

RUNS = {"dac_vae": ("configs/tiny/dac_vae_frame.yaml", "dac_vae"), "flowae": ("configs/tiny/flowae.yaml", "flowae")}


def _batch_size(built: dict) -> int:
    for stage in built["data_pipeline"]:
        if getattr(stage, "keywords", {}).get("batch_size"):
            return int(stage.keywords["batch_size"])
    return 8


def train_and_measure(name: str, steps: int, split: str, threads: int, render_steps: list[int]) -> dict:
    """Train ``name`` for ``steps`` steps from scratch, then its split quality and render speed."""
    from speech.config import load_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config, key = RUNS[name]
    built = load_config(REPO / config)
    model = built[key].train()
    groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {None: list(model.parameters())}
    optim, sched = built["optim"], built.get("scheduler")
    pick = lambda spec, g: spec[g] if isinstance(spec, dict) else spec  # noqa: E731
    opts = {g: pick(optim, g)(p) for g, p in groups.items()}
    scheds = {g: pick(sched, g)(o) for g, o in opts.items()} if sched else {}
    batch_size = _batch_size(built)
    n = int(float(built.get("crop_seconds", 1.0)) * model.sample_rate)
    wavs = _corpus("train")
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = _crops(wavs, batch_size, n, gen)
        for group, opt in opts.items():
            out = model(batch, group=group, step=step) if group else model(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_clip = float(built["train_conf"].get("grad_clip", 0) or 0)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(groups[group], grad_clip)
            opt.step()
            if group in scheds:
                scheds[group].step()
    train_s = time.perf_counter() - start
    model.discriminator = None
    model.eval()
    quality = _split_quality(model, split)
    dev = _corpus(split)
    seconds = sum(w.shape[0] for w in dev) / model.sample_rate
    with torch.inference_mode():
        latents = [model.encode(w[None])[0] for w in dev]
        speed = {}
        for k in render_steps if name == "flowae" else [0]:
            t0 = time.perf_counter()
            for z in latents:
                model.decode(z, n_steps=k) if name == "flowae" else model.decode(z)
            speed[k] = (time.perf_counter() - t0) / seconds
    return {"name": name, "steps": steps, "train_s": train_s, "audio_s": steps * batch_size * n / model.sample_rate,
            **quality, "render_s_per_audio_s": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps of each codec")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per codec (both run at once)")
    parser.add_argument("--render_steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(len(RUNS), mp_context=ctx) as pool:
        futures = {name: pool.submit(train_and_measure, name, args.steps, args.split, args.threads,
                                     args.render_steps) for name in RUNS}
        rows = [futures[name].result() for name in RUNS]
    names = ("mel_distance", "stft_distance", "si_sdr", "pesq_wb", "stoi")
    print(f"\n{args.steps} training steps each; {args.split} split round trip (mean over utterances)\n")
    print("| codec | train s | mel dist ↓ | MR-STFT ↓ | SI-SDR dB ↑ | PESQ-WB ↑ | STOI ↑ |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['train_s']:.0f} | " + " | ".join(f"{r[k]:.3f}" for k in names) + " |")
    print("\n| renderer | ODE steps | render s per audio s |")
    print("|---|---|---|")
    for r in rows:
        for k, v in r["render_s_per_audio_s"].items():
            print(f"| {r['name']} | {k if r['name'] == 'flowae' else '- (one pass)'} | {v:.4f} |")


if __name__ == "__main__":
    main()
