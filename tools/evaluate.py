#!/usr/bin/env python3
"""Score synthesised or reconstructed audio against references: codec metrics, WER, SIM, DNSMOS, RTF.

    # a TTS / codec output folder (<utt>.wav) against a reference list
    python tools/evaluate.py --ref_list refs.tsv --hyp_dir exp/tts/wavs --out_dir exp/eval
    # the corpus test split against itself and degraded copies (metric calibration)
    python tools/evaluate.py --corpus data --split test --degrade clean,lowpass8k,noise20db --out_dir exp/eval_cal
    # a TTS output beside the real recordings and the same recordings through its codec (the codec's ceiling)
    python tools/evaluate.py --ref_list refs.jsonl --hyp_dir exp/tts/wavs --with_reference \
        --codec_round_trip exp/dac_vae/final.pt --out_dir exp/eval
    # time a synthesis command (RTF), then score what it wrote
    python tools/evaluate.py --ref_list refs.tsv --hyp_dir out --synth_cmd "python inference.py ..." --out_dir ev

Reference list (see speech/eval/reflist.py): ``utt<TAB>wav<TAB>text[<TAB>prompt_wav]`` lines, or JSON
lines with utt, wav, text (optional prompt_wav), e.g. our dataset index. Test audio: <hyp_dir>/<utt>.wav.
Writes results.md, results.json and plots/<metric>.png under --out_dir.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from speech.audio import save_audio
from speech.eval.asr import ASR_BACKENDS, build_asr, resolve_asr_spec
from speech.eval.degrade import parse_degradation
from speech.eval.deps import MissingDependency
from speech.eval.evaluator import (
    METRIC_GROUPS,
    Evaluator,
    codec_source,
    degraded_source,
    hyp_dir_source,
    reference_source,
)
from speech.eval.mos import DNSMOS
from speech.eval.reflist import corpus_items, read_ref_list
from speech.eval.report import markdown_table, plot_distributions, write_json
from speech.eval.rtf import time_command
from speech.eval.speaker import SPEAKER_BACKENDS, build_speaker_encoder
from speech.eval.whisper_assets import CorruptAsset
from speech.inference import InferenceError, load_codec_checkpoint

log = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ref_list", help="reference list (TSV utt/wav/text[/prompt_wav] or JSON lines)")
    src.add_argument("--corpus", help="corpus folder in the seed layout (wavs/<spk>/<utt>.wav+.txt, utt2spk, splits/)")
    p.add_argument("--split", default="test", help="with --corpus: split name in splits/ ('all' for every utterance)")
    p.add_argument("--hyp_dir", nargs="*", default=[], help="folder(s) of <utt>.wav to score, one system each")
    p.add_argument("--names", nargs="*", default=None, help="system names for --hyp_dir (default: folder names)")
    p.add_argument(
        "--degrade",
        default="",
        help="comma list of degraded copies of the references to score: "
        "clean, lowpass8k, noise20db, mulaw8k, whitenoise, noise<N>db, lowpass<N>k",
    )
    p.add_argument("--with_reference", action="store_true", help="also score the references themselves (ceiling row)")
    p.add_argument(
        "--codec_round_trip",
        metavar="CHECKPOINT",
        help="also score the references encoded and decoded by this codec (DAC-VAE or flowae; the system "
        "'codec_round_trip'): the most a system that renders through it can reach on these recordings",
    )
    p.add_argument(
        "--codec_config", help="the --codec_round_trip codec's config (default: beside the checkpoint, else inside it)"
    )
    p.add_argument("--metrics", default="codec,wer,sim", help=f"comma list from {','.join(METRIC_GROUPS)}")
    p.add_argument(
        "--asr",
        default="pocketsphinx",
        help=f"ASR backend[:local model path]; backends: {', '.join(ASR_BACKENDS)}; 'auto' = faster-whisper "
        "(Whisper base from its PyPI packages) when installed, else pocketsphinx",
    )
    p.add_argument(
        "--spk",
        default="resemblyzer",
        help=f"speaker encoder[:local model path]; backends: {', '.join(SPEAKER_BACKENDS)}",
    )
    p.add_argument("--lang", default="en", help="language of the texts (normalisation, ASR)")
    p.add_argument("--device", default="cpu", help="device for neural backends")
    p.add_argument("--sample_rate", type=int, default=24000, help="rate the intrusive metrics compare at")
    p.add_argument("--synth_cmd", default=None, help="command that writes the (single) --hyp_dir: timed for RTF first")
    p.add_argument("--save_degraded", action="store_true", help="write the degraded copies to out_dir/degraded/<name>/")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the per-utterance models are small: 1 is fastest and immune to a busy machine; "
        "0 = torch's default)",
    )
    p.add_argument("--limit", type=int, default=0, help="score only the first N utterances (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise degradations")
    p.add_argument("--out_dir", required=True, help="where results.md, results.json and plots/ go")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--no_plots", action="store_true", help="skip the per-utterance distribution plots")
    return p.parse_args(argv)


def _saving(source, out_dir: Path, sample_rate: int):
    def wrapped(item, ref):
        wav = source(item, ref)
        save_audio(out_dir / f"{item.utt}.wav", wav, sample_rate)
        return wav

    return wrapped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # leave the caller's process as it was


def run(args: argparse.Namespace) -> int:
    """Score every requested system and write the table, the JSON and the plots."""
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    degradations = [d.strip() for d in args.degrade.split(",") if d.strip()]
    if not (args.hyp_dir or degradations or args.with_reference or args.codec_round_trip):
        sys.exit("evaluate: nothing to score: give --hyp_dir, --degrade, --with_reference or --codec_round_trip")
    if args.names is not None and len(args.names) != len(args.hyp_dir):
        sys.exit(f"evaluate: {len(args.names)} --names for {len(args.hyp_dir)} --hyp_dir")
    if args.synth_cmd and len(args.hyp_dir) != 1:
        sys.exit("evaluate: --synth_cmd needs exactly one --hyp_dir (the folder it writes)")
    try:
        funcs = {d: parse_degradation(d) for d in degradations}
        if args.ref_list:
            items = read_ref_list(args.ref_list)
        else:
            items = corpus_items(args.corpus, None if args.split == "all" else args.split)
        if args.limit:
            items = items[: args.limit]
        asr_spec = resolve_asr_spec(args.asr) if "wer" in metrics else None
        asr = build_asr(asr_spec, language=args.lang, device=args.device) if asr_spec else None
        spk = build_speaker_encoder(args.spk, device=args.device) if "sim" in metrics else None
        mos = DNSMOS() if "dnsmos" in metrics else None
        evaluator = Evaluator(metrics, args.sample_rate, asr=asr, speaker=spk, mos=mos, lang=args.lang)
        codec = None
        if args.codec_round_trip:
            codec = load_codec_checkpoint(args.codec_round_trip, args.codec_config).to(args.device).eval()
    except (ValueError, FileNotFoundError, MissingDependency, CorruptAsset, InferenceError) as exc:
        sys.exit(f"evaluate: {exc}")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rtf = None
    if args.synth_cmd:
        rtf = time_command(args.synth_cmd, args.hyp_dir[0])
        log.info(
            "synthesis: %.1f s wall for %.1f s of audio in %d files: RTF %.3f",
            rtf.wall_s,
            rtf.audio_s,
            rtf.n_files,
            rtf.rtf,
        )

    systems = []
    if args.with_reference:
        systems.append(("reference", reference_source))
    if codec is not None:
        systems.append(("codec_round_trip", codec_source(codec, args.sample_rate)))
    for name in degradations:
        source = degraded_source(funcs[name], args.sample_rate, args.seed)
        if args.save_degraded:
            source = _saving(source, out_dir / "degraded" / name, args.sample_rate)
        systems.append((name, source))
    names = args.names or [Path(d).name or str(d) for d in args.hyp_dir]
    for name, hyp_dir in zip(names, args.hyp_dir):
        systems.append((name, hyp_dir_source(hyp_dir, args.sample_rate)))

    results = []
    for name, source in systems:
        result = evaluator.evaluate(items, source, name, progress=not args.no_progress)
        if rtf is not None and name == names[0] and args.hyp_dir:
            result.summary.update(rtf=rtf.rtf, synth_wall_s=rtf.wall_s, synth_audio_s=rtf.audio_s)
        for reason, count in sorted(result.skipped.items()):
            log.warning("%s: %d x %s", name, count, reason)
        results.append(result)

    table = markdown_table(results)
    source_desc = args.ref_list or f"{args.corpus} (split {args.split})"
    asr_note = f" WER/CER by ASR `{asr_spec}`." if asr else ""
    (out_dir / "results.md").write_text(
        f"Evaluation of {source_desc}, {len(items)} utterances.{asr_note}\n\n{table}\n", encoding="utf-8"
    )
    meta = {
        "source": source_desc,
        "n_items": len(items),
        "metrics": metrics,
        "asr": asr_spec if asr else None,
        "speaker_encoder": args.spk if spk else None,
        "sample_rate": args.sample_rate,
        "lang": args.lang,
    }
    write_json(out_dir / "results.json", results, meta)
    plots = [] if args.no_plots else plot_distributions(results, out_dir / "plots")
    print(table)
    skipped = sum(sum(r.skipped.values()) for r in results)
    print(
        f"evaluate: {len(results)} system(s) x {len(items)} utterances in {time.perf_counter() - start:.0f} s, "
        f"{skipped} skipped metric/utterance(s); wrote {out_dir / 'results.md'}, {out_dir / 'results.json'} "
        f"and {len(plots)} plot(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
