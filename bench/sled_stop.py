#!/usr/bin/env python3
"""Does a trained SLED LM stop where the speech ends? Generated vs reference length on indexed utterances.

    python bench/sled_stop.py --sled exp/demo/sled/final.pt --index exp/demo/index/dev/data.list [--n 8]

For each utterance (text, its latent file for the reference length, another utterance of the same
speaker as the voice): the latent frames the model generates (seeded, ``--max_len_ratio`` frames per
text token at most) next to the real utterance's (and the length head's expectation, for a model with
one), and, teacher-forced on the real latents, the stop probability at the true end and its largest
value before it. A stop head that fires teacher-forced
but never when generating keys on something only real latents have. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech.audio import load_audio  # noqa: E402
from speech.dataset.dataset import read_data_list, read_index  # noqa: E402
from speech.inference import load_model  # noqa: E402
from speech.llm.sampling import RowRandom  # noqa: E402


def teacher_forced_stop(model, ids, latent, ref) -> tuple[float, float]:
    """Stop probability at the end of the real latents, and its largest value before it (uni-stream)."""
    k = model.patch_size
    n = latent.shape[-1] // k * k
    batch = {"text_token": ids[None], "text_token_len": torch.tensor([ids.numel()]), "latent": latent[None, :, :n],
             "latent_len": torch.tensor([n]), "ref_audio": ref[None], "ref_audio_len": torch.tensor([ref.numel()])}
    seen = {}
    hook = model.stop_head.register_forward_hook(lambda m, i, o: seen.update(p=torch.sigmoid(o[0, :, 0].float())))
    model(batch, bistream=torch.tensor([False]))
    hook.remove()
    p = seen["p"][2 + ids.numel(): 3 + ids.numel() + n // k]  # task .. last step: predict step 0 .. eos
    return float(p[-1]), float(p[:-1].max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sled", required=True, help="SLED checkpoint (config.yaml beside it or inside)")
    parser.add_argument("--index", required=True, help="data.list or index .jsonl with latent_path")
    parser.add_argument("--n", type=int, default=8, help="utterances (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_len_ratio", type=float, default=30.0, help="most latent frames per text token")
    parser.add_argument("--stop_threshold", type=float, help="default: the model's")
    parser.add_argument("--cfg_w", type=float, help="default: the model's")
    parser.add_argument("--length_scale", type=float,
                        help="bound at this x the length head's length (0: the stop head alone; default: the model's)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, built = load_model(args.sled, "sled", None, {"latent_stats": None, "sled": {"latent_stats": None}})
    tokenizer = built["text_tokenizer"]
    index = Path(args.index)
    shards = read_data_list(index) if index.suffix == ".list" else [index]
    rows = [row for shard in shards for row in read_index(shard)]  # paths resolved against their shard
    out = []
    with torch.inference_mode():
        for row in rows[: args.n]:
            others = [o for o in rows if o["spk"] == row["spk"] and o["utt"] != row["utt"]]
            voice = others[0] if others else row
            ref, _ = load_audio(voice["wav"], model.speaker.sample_rate)
            latent = torch.load(row["latent_path"], weights_only=True)["mu"].float()
            ids = torch.tensor(tokenizer.encode(row["text"]), dtype=torch.long)
            p_end, p_before = teacher_forced_stop(model, ids, latent, ref)
            _, n = model.generate(ids[None], torch.tensor([ids.numel()]), ref[None], torch.tensor([ref.numel()]),
                                  max_len_ratio=args.max_len_ratio, stop_threshold=args.stop_threshold,
                                  cfg_w=args.cfg_w, length_scale=args.length_scale,
                                  generator=RowRandom(torch.tensor([args.seed])))
            max_frames = int(ids.numel() * args.max_len_ratio)
            bound = None
            if model.length_head is not None:
                spk = model.spk_proj(model.speaker(ref[None], torch.tensor([ref.numel()])))
                bound = float(model.predict_log_frames(ids[None], torch.tensor([ids.numel()]), spk).exp()[0])
            out.append({"utt": row["utt"], "ref_frames": latent.shape[-1], "gen_frames": int(n[0]),
                        "max_frames": max_frames, "length_head_frames": None if bound is None else round(bound, 1),
                        "tf_p_end": round(p_end, 3), "tf_p_max_before": round(p_before, 3)})
            r = out[-1]
            end = ", the maximum" if r["gen_frames"] >= max_frames else ""
            head = "" if bound is None else f", length head {bound:.0f}"
            print(f"{r['utt']:>14}: reference {r['ref_frames']:4d} frames, generated {r['gen_frames']:4d} "
                  f"({r['gen_frames'] / r['ref_frames']:.2f}x{end}{head}) | teacher-forced stop p at the end "
                  f"{p_end:.3f}, max before {p_before:.3f}", flush=True)
    ratios = [r["gen_frames"] / r["ref_frames"] for r in out]
    hit_max = sum(r["gen_frames"] >= r["max_frames"] for r in out)
    print(f"generated / reference length: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}; {hit_max}/{len(out)} ran to the maximum")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
