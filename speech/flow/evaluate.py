"""Check a trained Stage 2 model on held-out data: CV loss, and whether its samples look like real latents.

    python -m speech.flow.evaluate --config configs/tiny/flow.yaml --checkpoint exp/flow_tiny/step_2000.pt \
        --data data/dev.list --out_dir exp/flow_tiny/eval [--ema] [--n_steps 10 --cfg_w 0.7 --solver euler]

Without ``--config``, the config the trainer saved with the checkpoint is used (beside it, else
inside it). Either way it is built with the allow-list of :mod:`dac_vae.safe_config` (``--trust_config``
lifts it, for a config you trust); a refused config is one ``error:`` line, exit status 2.

Prints the flow loss (eval mode, fixed seed) and compares per-dimension mean and std of the sampled
latents with the real DAC-VAE latents of the same utterances. With ``--out_dir`` it also writes each
sample as ``<utt>_latent{r}x.pt`` in the codec's latent file format (``mu [D, T]``, ``logs`` = -inf,
``sample_rate``, ``hop``, ``n_samples``, ``checkpoint``), so ``python -m dac_vae.inference decode --inputs OUT_DIR`` turns them
into ``<utt>.wav`` for the eval toolkit (mel distance to the ground truth), and a ``summary.json``.
``--real_out DIR`` writes the real latents of the same utterances there in the same format: decoded,
they score the codec alone, the most the flow can reach (the demo reports both side by side).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from speech.flow.model import FlowModel

__all__ = ["MomentAccumulator", "evaluate_batches", "main"]

log = logging.getLogger(__name__)

TOKEN_RATE = 25  # FSQ tokens per second (S3Tokenizer v2 and ours)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MomentAccumulator:
    """Per-dimension mean and std of latents ``[B, D, T]`` over valid frames, accumulated batch by batch."""

    def __init__(self) -> None:
        self.count = 0.0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def update(self, latent: torch.Tensor, lengths: torch.Tensor) -> None:
        """Add the valid frames of a padded batch (float64 sums: long corpora stay exact)."""
        mask = (torch.arange(latent.shape[-1], device=latent.device)[None] < lengths[:, None]).to(torch.float64)
        x = latent.to(torch.float64) * mask[:, None, :]
        s, sq = x.sum(dim=(0, 2)).cpu(), (x * x).sum(dim=(0, 2)).cpu()
        self.total = s if self.total is None else self.total + s
        self.total_sq = sq if self.total_sq is None else self.total_sq + sq
        self.count += float(mask.sum())

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [D], std [D])`` of everything added so far."""
        if self.total is None or self.count == 0:
            raise ValueError("no frames accumulated")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().float()


@torch.inference_mode()
def evaluate_batches(
    model: FlowModel,
    batches: Iterable[dict[str, Any]],
    n_steps: int | None = None,
    cfg_w: float | None = None,
    solver: str | None = None,
    seed: int = 0,
    max_batches: int | None = None,
    decode: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    with_loss: bool = True,
    sample_rate: int = 24000,
    real_latents: list[tuple[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, torch.Tensor]]]:
    """CV loss, sample-vs-real latent moments and distances, flow-stage speed over ``batches``.

    Also returns the ``(utt, sample [D, T])`` pairs. The distances compare each sample with the real
    latent of the same utterance on its valid frames: ``latent_mse`` in raw DAC-VAE ``mu`` space and
    ``latent_mse_norm`` in the flow's standardised space. With ``decode`` (latents ``[D, T_i]`` ->
    waveforms), ``mel_distance`` is the multi-scale log-mel L1 between the decoded sample and the
    decoded real latent (the codec's own error cancels). ``flow_rtf`` is seconds of flow stage
    (token encoder + solve) per second of audio; ``nfe`` the network evaluations (of batch B) per solve.
    A ``real_latents`` list receives the ``(utt, real [D, T])`` pairs over the frames each sample is compared on.
    """
    model.eval()
    real, fake = MomentAccumulator(), MomentAccumulator()
    losses, weights, samples = [], [], []
    sq_err = sq_err_norm = flow_s = mel_sum = 0.0
    mel_n = 0
    mel_distance = None
    if decode is not None:
        from speech.eval.codec import MelDistance

        mel_distance = MelDistance(sample_rate)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        frames = float(batch["latent_len"].sum())
        if with_loss:
            losses.append(float(model(batch)["loss"]) * frames)
        weights.append(frames)
        extra = (
            {"ref_audio": batch["ref_audio"], "ref_audio_len": batch["ref_audio_len"]}
            if model.speaker is not None
            else {}
        )
        _sync(batch["latent"].device)
        start = time.perf_counter()
        latent, lengths = model.sample(
            batch["speech_token"],
            batch["speech_token_len"],
            n_steps=n_steps,
            cfg_w=cfg_w,
            solver=solver,
            seed=seed,
            **extra,
        )
        _sync(latent.device)
        flow_s += time.perf_counter() - start
        target_len = torch.minimum(batch["latent_len"], lengths)
        real.update(batch["latent"], target_len)
        T = min(latent.shape[-1], batch["latent"].shape[-1])
        fake.update(latent[..., :T], target_len)
        valid = (torch.arange(T, device=latent.device)[None] < target_len[:, None])[:, None, :]
        diff = (latent[..., :T].float() - batch["latent"][..., :T].float()) * valid
        sq_err += float(diff.square().sum())
        sq_err_norm += float((diff / model.latent_std[:, None]).square().sum())
        if decode is not None:
            lens = [int(n) for n in target_len]
            wav_fake = decode([latent[b, :, :n].float() for b, n in enumerate(lens)])
            wav_real = decode([batch["latent"][b, :, :n].float() for b, n in enumerate(lens)])
            for a, b in zip(wav_real, wav_fake, strict=True):
                mel_sum += float(mel_distance(a.cpu(), b.cpu()))
                mel_n += 1
        for b, utt in enumerate(batch.get("utt", [str(len(samples) + b) for b in range(latent.shape[0])])):
            samples.append((utt, latent[b, :, : int(lengths[b])].cpu()))
            if real_latents is not None:
                real_latents.append((utt, batch["latent"][b, :, : int(target_len[b])].float().cpu()))
    if not weights:
        raise ValueError("no batches to evaluate")
    (rm, rs), (fm, fs) = real.moments(), fake.moments()
    summary = {
        "utterances": len(samples),
        "frames": int(real.count),
        "cv_loss": sum(losses) / sum(weights) if losses else float("nan"),
        "n_steps": n_steps if n_steps is not None else model.matching.n_steps,
        "nfe": model.matching.nfe(n_steps, cfg_w, solver),
        "flow_seconds": flow_s,
        "flow_rtf": flow_s / (real.count / (TOKEN_RATE * model.ratio)),
        "latent_mse": sq_err / (real.count * model.latent_dim),
        "latent_mse_norm": sq_err_norm / (real.count * model.latent_dim),
        "mel_distance": mel_sum / mel_n if mel_n else None,
        "real_mean_avg": rm.mean().item(),
        "sample_mean_avg": fm.mean().item(),
        "real_std_avg": rs.mean().item(),
        "sample_std_avg": fs.mean().item(),
        "mean_abs_diff": (fm - rm).abs().mean().item(),
        "std_abs_diff": (fs - rs).abs().mean().item(),
        "std_ratio": (fs / rs.clamp_min(1e-8)).mean().item(),
        "mean_corr": torch.corrcoef(torch.stack([rm, fm]))[0, 1].item() if rm.numel() > 1 else float("nan"),
        "std_corr": torch.corrcoef(torch.stack([rs, fs]))[0, 1].item() if rs.numel() > 1 else float("nan"),
    }
    return summary, samples


def _saved_config(checkpoint: Path, folder: Path) -> Path:
    """The config the trainer saved with ``checkpoint``: beside it (unresolved text preferred), else
    the text stored inside it, written into ``folder``."""
    from speech.config import ConfigError
    from speech.trainer.checkpoint import config_beside, read_config_text

    beside = config_beside(checkpoint.parent)
    if beside is not None:
        return beside
    text = read_config_text(checkpoint, unresolved=True) if checkpoint.is_file() else None
    if not text:
        raise ConfigError(f"{checkpoint} has no config.yaml beside it and none stored inside: give --config")
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: build the model from its config, load trained weights, evaluate on a data list."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the flow config the model was trained with (default: the one saved with it)")
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint, averaged .pt or .safetensors")
    parser.add_argument("--data", required=True, help="data.list of the held-out set (tokens + latents)")
    parser.add_argument("--out_dir", help="write <utt>_latent{r}x.pt samples and summary.json here")
    parser.add_argument("--real_out", help="also write the real latents of the same utterances here (same file "
                        "format); decoded, they are the flow's ceiling: the codec alone on the true latents")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    parser.add_argument("--n_steps", type=int, nargs="+",
                        help="sampling steps; several values evaluate each in turn (samples are written for the first)")
    parser.add_argument("--cfg_w", type=float)
    parser.add_argument("--solver", choices=["euler", "midpoint"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", help="DAC-VAE checkpoint: decode samples and real latents, report their mel distance")
    parser.add_argument("--codec_config", help="the codec's config (default: config.yaml beside --codec)")
    parser.add_argument("--max_batches", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_config", action="store_true",
                        help="build the config even if it names code outside the allow-list (only one you trust)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from dac_vae.safe_config import UntrustedConfigError

    from speech.config import ConfigError, load_model_config

    # Statistics and speaker weights come from the checkpoint, so their source files are not needed.
    # A config saved with resolved references (config.yaml, older checkpoints) does not pass a top-level
    # override on to the flow's own arguments: those are overridden too.
    unused = ["latent_stats=null", "speaker_checkpoint=null", "flow.latent_stats=null", "flow.speaker_checkpoint=null"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(args.config) if args.config else _saved_config(Path(args.checkpoint), Path(tmp))
            config = load_model_config(path, list(args.overrides) + unused, trust_config=args.trust_config)
    except (UntrustedConfigError, ConfigError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return _evaluate(args, config)


def _evaluate(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dac_vae.latents import latent_suffix, save_latent_file
    from tqdm import tqdm

    from speech.dataset.dataset import Dataset
    from speech.trainer.checkpoint import load_weights
    from speech.trainer.data import to_device

    model: FlowModel = config["flow"]
    model.load_state_dict(load_weights(args.checkpoint, ema=args.ema), strict=True)
    model.to(args.device).eval()
    pipeline = config.get("cv_data_pipeline") or config["data_pipeline"]
    batches = (
        to_device(b, torch.device(args.device))
        for b in tqdm(Dataset(args.data, pipeline, shuffle=False, partition=False), desc="evaluate", unit="batch")
    )
    decode = None
    if args.codec:
        from dac_vae.checkpoint import load_codec
        from dac_vae.inference import decode_latents

        codec = load_codec(args.codec_config or Path(args.codec).parent / "config.yaml", args.codec, args.device)

        def decode(latents: list[torch.Tensor]) -> list[torch.Tensor]:
            lengths = [z.shape[-1] * codec.hop for z in latents]
            return decode_latents(codec, latents, lengths, torch.device(args.device))

    settings = args.n_steps or [None]
    if len(settings) > 1:
        batches = list(batches)
    runs, reals = [], []
    for k, n_steps in enumerate(settings):
        summary, found = evaluate_batches(
            model, batches, n_steps, args.cfg_w, args.solver, args.seed, args.max_batches,
            decode=decode, with_loss=k == 0, sample_rate=int(config.get("sample_rate", 24000)),
            real_latents=reals if k == 0 else None,
        )
        if k == 0:
            first, samples = summary, found
        runs.append(summary)
        print(
            f"{type(model.matching).__name__} {summary['n_steps']} steps, {summary['nfe']} NFE: "
            f"flow {summary['flow_rtf']:.4f} s per audio s, latent MSE {summary['latent_mse']:.4f} "
            f"(standardised {summary['latent_mse_norm']:.4f})"
            + (f", mel distance {summary['mel_distance']:.4f}" if summary["mel_distance"] is not None else "")
        )
    summary = dict(first, sweep=runs) if len(runs) > 1 else first
    summary["checkpoint"] = str(args.checkpoint)
    sample_rate = int(config.get("sample_rate", 24000))
    hop = sample_rate // (TOKEN_RATE * model.ratio)

    def write(folder: str, latents: list[tuple[str, torch.Tensor]], source: str) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for utt, latent in latents:
            # A point, not a posterior: logs = -inf (std 0) in the codec's latent format.
            save_latent_file(
                out / f"{utt}{latent_suffix(model.ratio)}",
                latent.float(),
                torch.full_like(latent, float("-inf")),
                sample_rate,
                hop,
                latent.shape[-1] * hop,
                source,
            )
        return out

    if args.real_out:
        write(args.real_out, reals, str(args.data))
    if args.out_dir:
        out = write(args.out_dir, samples, str(args.checkpoint))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['utterances']} utterances, {summary['frames']} frames: cv loss {summary['cv_loss']:.4f}; "
        f"per-dim mean real {summary['real_mean_avg']:+.3f} / sampled {summary['sample_mean_avg']:+.3f} "
        f"(|diff| {summary['mean_abs_diff']:.3f}, corr {summary['mean_corr']:.3f}); "
        f"std real {summary['real_std_avg']:.3f} / sampled {summary['sample_std_avg']:.3f} "
        f"(|diff| {summary['std_abs_diff']:.3f}, ratio {summary['std_ratio']:.3f}, corr {summary['std_corr']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
