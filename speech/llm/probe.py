"""Does the Stage 1 LM read its text? Next-id accuracy with the true history and with a random one.

    python -m speech.llm.probe --checkpoint exp/demo/llm/final.pt --data exp/demo/index/train/data.list \
        --out exp/demo/eval/llm_probe.json [--max_batches 8]

Teacher-forced next-id accuracy and loss of the speech targets (+ eos), first with the true previous
speech ids, then with every previous speech id replaced by a uniformly random one; the text and the
voice stay as they are, so the second pair is what the text alone gives. A small LM trained on
little data can learn to recite its training sequences from the previous ids: its teacher-forced
accuracy is high, yet with a random history it does no better than a unigram model, and free-running
decoding (whose history is its own imperfect ids) drifts away from the text. The layout is
unistream (text, then speech), or for an aligned-layout LM its own (fill targets not scored), so
both passes score the same targets at the same positions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from speech.llm.layout import aligned_allowed
from speech.llm.model import IGNORE_ID, SpeechLM

__all__ = ["history_probe", "probe_batches", "main"]


@torch.inference_mode()
def history_probe(model: SpeechLM, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, float]:
    """Sums over one batch: ``targets``, then ``correct`` and ``nll`` with the true previous speech ids and
    ``correct_random`` and ``nll_random`` with random ones (drawn from ``generator`` on the CPU)."""
    speech = batch["speech_token"]
    unistream = torch.zeros(speech.shape[0], dtype=torch.bool, device=speech.device)
    aligned = None  # an aligned-layout LM is probed in its own layout where the batch has durations
    if model.decode_layout == "aligned" and batch.get("text_token_dur") is not None:
        aligned = aligned_allowed(batch["text_token_len"], batch["speech_token_len"], batch["text_token_dur"])
    logits, targets = model.logits_and_targets(batch, unistream, aligned)
    random_ids = torch.randint(0, model.speech_token_size, speech.shape, generator=generator).to(speech.device)
    logits_random, _ = model.logits_and_targets({**batch, "speech_token": random_ids}, unistream, aligned)
    trained = (targets != IGNORE_ID) & (targets != model.fill_id)
    out = {"targets": float(trained.sum())}
    for suffix, scores in (("", logits), ("_random", logits_random)):
        flat = scores[trained].float()
        out["correct" + suffix] = float((flat.argmax(-1) == targets[trained]).sum())
        out["nll" + suffix] = float(F.cross_entropy(flat, targets[trained], reduction="sum"))
    return out


def probe_batches(
    model: SpeechLM, batches: Iterable[dict[str, Any]], seed: int = 0, max_batches: int | None = None
) -> dict[str, float]:
    """:func:`history_probe` over ``batches``: accuracies and mean losses per target, and the counts."""
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    utterances = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        for key, value in history_probe(model, batch, generator).items():
            totals[key] = totals.get(key, 0.0) + value
        utterances += int(batch["speech_token"].shape[0])
    if not totals.get("targets"):
        raise ValueError("no speech targets to probe")
    n = totals["targets"]
    return {
        "utterances": utterances,
        "targets": int(n),
        "acc": totals["correct"] / n,
        "loss": totals["nll"] / n,
        "acc_random_history": totals["correct_random"] / n,
        "loss_random_history": totals["nll_random"] / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Stage 1 LM checkpoint (config.yaml beside it)")
    parser.add_argument("--config", help="the LM's config (default: config.yaml beside --checkpoint)")
    parser.add_argument("--data", required=True, help="data.list with text and speech tokens (e.g. the training index)")
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--max_batches", type=int, default=8, help="batches of the config's data pipeline (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random histories")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust_config", action="store_true",
                        help="build the config even if it names code outside the allow-list (only one you trust)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from speech.dataset.dataset import Dataset
    from speech.inference import InferenceError, load_model
    from speech.trainer.data import to_device

    try:
        model, config = load_model(Path(args.checkpoint), "llm", args.config, {}, trust_config=args.trust_config)
    except (InferenceError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model.to(device).eval()
    pipeline = config.get("cv_data_pipeline") or config["data_pipeline"]
    batches = (to_device(b, device) for b in Dataset(args.data, pipeline, shuffle=False, partition=False))
    result = {**probe_batches(model, batches, args.seed, args.max_batches), "checkpoint": str(args.checkpoint)}
    print(
        f"{result['utterances']} utterances, {result['targets']} targets: next-id accuracy {result['acc']:.3f} "
        f"(loss {result['loss']:.3f}) with the true previous ids, {result['acc_random_history']:.3f} "
        f"(loss {result['loss_random_history']:.3f}) with random ones"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
