"""Encode wavs to latent files, decode latent files to 24 kHz wavs, or round-trip wavs; batched.

    python -m dac_vae.inference encode    --config C --checkpoint K --inputs a.wav wavs/ --output_dir lat/
    python -m dac_vae.inference decode    --config C --checkpoint K --inputs lat/ x_latent2x.pt --output_dir out/
    python -m dac_vae.inference roundtrip --config C --checkpoint K --inputs wavs/ --output_dir out/

``encode`` writes ``<stem>_latent{r}x.pt`` (format in :mod:`dac_vae.latents`); ``decode`` decodes
``mu`` (the posterior mean) back to exactly ``n_samples`` samples as ``<name>.wav``; ``roundtrip``
does both without files in between. Inputs are batched by length and each item is processed
exactly as it would be alone, so decoding an encoded file reproduces the round trip.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from dac_vae.audio import AudioLoadError, load_wav, save_wav
from dac_vae.checkpoint import CodecLoadError, checkpoint_id, load_codec
from dac_vae.extract_dac_latents import encode_padded
from dac_vae.latents import codec_tag, latent_suffix, length_batches, load_latent_file, save_latent_file
from dac_vae.model import DACVAE

log = logging.getLogger("dac_vae.inference")

__all__ = ["decode_latents", "roundtrip", "main"]


@torch.inference_mode()
def decode_latents(
    model: DACVAE, latents: list[torch.Tensor], n_samples: list[int], device: torch.device
) -> list[torch.Tensor]:
    """Decode ``[D, T_i]`` latents as one padded batch -> per item ``[n_samples_i]`` audio."""
    latent_len = torch.tensor([z.shape[1] for z in latents], dtype=torch.long)
    z = torch.nn.utils.rnn.pad_sequence([x.transpose(0, 1) for x in latents], batch_first=True).transpose(1, 2)
    audio = model.decode(z.to(device), latent_len.to(device)).float().cpu()
    return [audio[i, :n] for i, n in enumerate(n_samples)]


@torch.inference_mode()
def roundtrip(model: DACVAE, wavs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Encode then decode the posterior mean of a list of ``[N_i]`` waveforms (one batch)."""
    encoded = encode_padded(model, wavs, device)
    return decode_latents(model, [mu for mu, _ in encoded], [w.shape[0] for w in wavs], device)


def _expand(inputs: Sequence[str], pattern: str) -> list[Path]:
    paths: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            paths.extend(sorted(p.rglob(pattern)))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return paths


def _batches(lengths: list[int], args: argparse.Namespace, per_second: int) -> list[list[int]]:
    return length_batches(lengths, int(args.batch_seconds * per_second), args.max_batch)


def _load_wavs(paths: list[Path], sample_rate: int, problems: list[str]) -> list[tuple[Path, torch.Tensor]]:
    loaded = []
    for p in paths:
        try:
            loaded.append((p, load_wav(p, sample_rate)))
        except AudioLoadError as exc:
            problems.append(f"{p}: {exc.reason}")
    return loaded


def run(args: argparse.Namespace, loader: Callable[..., DACVAE] = load_codec) -> tuple[int, float, float, list[str]]:
    """Execute one sub-command; returns (items written, audio seconds, wall seconds, problems).

    ``loader(config, checkpoint, device, trust_config=)`` builds the codec (flowae passes its own)."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loader(args.config, args.checkpoint, device, trust_config=args.trust_config)
    out_dir = Path(args.output_dir)
    problems: list[str] = []
    sr = model.sample_rate
    written, seconds = 0, 0.0
    start = time.perf_counter()
    if args.command in ("encode", "roundtrip"):
        items = _load_wavs(_expand(args.inputs, "*.wav"), sr, problems)
        ckpt = checkpoint_id(args.checkpoint) if args.command == "encode" else ""
        batches = _batches([w.shape[0] for _, w in items], args, sr)
        for batch in tqdm(batches, desc=args.command, unit="batch", disable=args.quiet, file=sys.stderr):
            paths = [items[i][0] for i in batch]
            wavs = [items[i][1] for i in batch]
            if args.command == "encode":
                for p, w, (mu, logs) in zip(paths, wavs, encode_padded(model, wavs, device)):
                    save_latent_file(
                        out_dir / (p.stem + latent_suffix(codec_tag(model))),
                        mu,
                        logs,
                        sr,
                        model.hop,
                        w.shape[0],
                        ckpt,
                    )
            else:
                for p, y in zip(paths, roundtrip(model, wavs, device)):
                    save_wav(out_dir / (p.stem + ".wav"), y, sr)
            written += len(batch)
            seconds += sum(w.shape[0] for w in wavs) / sr
    else:  # decode
        records = []
        for p in _expand(args.inputs, "*_latent*.pt"):
            try:
                record = load_latent_file(p)
                if (
                    record["sample_rate"] != sr
                    or record["hop"] != model.hop
                    or record["mu"].shape[0] != model.latent_dim
                ):
                    raise ValueError(
                        f"made for sample_rate {record['sample_rate']}, hop {record['hop']}, "
                        f"dim {record['mu'].shape[0]}; this codec has {sr}, {model.hop}, {model.latent_dim}"
                    )
                records.append((p, record))
            except Exception as exc:
                problems.append(f"{p}: {exc}")
        batches = _batches([r["n_samples"] for _, r in records], args, sr)
        for batch in tqdm(batches, desc="decode", unit="batch", disable=args.quiet, file=sys.stderr):
            chosen = [records[i] for i in batch]
            audio = decode_latents(model, [r["mu"] for _, r in chosen], [r["n_samples"] for _, r in chosen], device)
            for (p, _), y in zip(chosen, audio):
                name = p.name[: p.name.rindex("_latent")] if "_latent" in p.name else p.stem
                save_wav(out_dir / f"{name}.wav", y, sr)
            written += len(batch)
            seconds += sum(r["n_samples"] for _, r in chosen) / sr
    return written, seconds, time.perf_counter() - start, problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DAC-VAE encode / decode / round trip (batched).")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "encode": "wavs -> <stem>_latent{r}x.pt (mu, logs)",
        "decode": "latent files -> <name>.wav decoded from mu",
        "roundtrip": "wavs -> reconstructed <stem>.wav",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--config", required=True, help="codec config (YAML with a dac_vae: section)")
        p.add_argument(
            "--checkpoint", required=True, help="trained weights: trainer checkpoint, state dict or .safetensors"
        )
        p.add_argument("--inputs", nargs="+", required=True, help="files and/or folders (searched recursively)")
        p.add_argument("--output_dir", required=True, help="where to write")
        p.add_argument("--batch_seconds", type=float, default=240.0, help="padded audio seconds per batch")
        p.add_argument("--max_batch", type=int, default=64, help="most items per batch")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument(
            "--trust_config", action="store_true",
            help="build the config even if it names code outside the allow-list (only for a config you trust)",
        )
    return parser


def main(argv: Sequence[str] | None = None, loader: Callable[..., DACVAE] = load_codec) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written, seconds, wall, problems = run(args, loader)
    except (CodecLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        log.warning("skipped %s", p)
    print(
        f"{args.command}: {written} written, {len(problems)} skipped; {seconds:.1f} s of audio in {wall:.1f} s "
        f"({seconds / max(wall, 1e-9):.1f}x real time) -> {args.output_dir}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
