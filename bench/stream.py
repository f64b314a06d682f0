#!/usr/bin/env python3
"""Streaming synthesis speed: first-chunk latency, per-chunk time and RTF, streamed vs offline.

    OMP_NUM_THREADS=1 python bench/stream.py                       # tiny and ref-small, 100 tokens (4 s)
    python bench/stream.py --shapes tiny --tokens 250 --threads 2 --text_pieces 5

Untrained models of the bench shapes (shared/BENCH.md): ``tiny`` = the tiny LM config and
configs/tiny/flow_stream.yaml; ``ref-small`` = the 256-d x 4-layer Qwen2 LM and the ``ref-small``
flow (256-d encoder 2 + 2 blocks, U-Net [128] with 4 + 2 blocks), causal with 25-token chunks.
Both use the demo's codec (configs/tiny/dac_vae_harmonic.yaml; ``--codec dac`` for configs/dac_vae.yaml).
The LM is forced to emit exactly ``--tokens`` speech tokens (eos banned before, stop at it), so
runs compare. Per shape, through :meth:`speech.inference.Synthesizer.stream` and ``synthesize``:

- streamed: time to the first audio chunk, time between chunks (median, max), total wall time, RTF;
- offline (``synthesize``, the flow's chunk attention): wall time, RTF, per-stage seconds;
- the flow alone on the same tokens: streamed with earlier chunks cached (what ``stream`` does for a
  one-level causal U-Net), streamed with them recomputed, and one offline solve.

Prints a table (and ``--json``); never asserts timings. Median of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dac_vae.checkpoint import build_codec
from speech.config import load_config
from speech.flow.encoder import TokenEncoder
from speech.flow.estimator import UNet1D
from speech.flow.matching import FlowMatching
from speech.flow.model import FlowModel
from speech.flow.streaming import stream_latents
from speech.inference import Synthesizer, SynthesisOptions
from speech.llm.model import SpeechLM, build_qwen2
from speech.llm.speaker import SpeakerExtractor

REPO = Path(__file__).resolve().parents[1]
PROMPT = REPO / "data/wavs/slt/slt_000.wav"
QWEN = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True),
    "ref-small": dict(vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                      tie_word_embeddings=False),
}
LM_SPEAKER = {
    "tiny": dict(n_mels=80, channels=64, conv_layers=1, attention_layers=1, heads=2, ffn_dim=128, dim=192),
    "ref-small": dict(n_mels=80, channels=256, conv_layers=2, attention_layers=2, heads=4, ffn_dim=1024, dim=192),
}


class FixedText:
    """A stand-in text tokenizer: any text is ``n`` fixed ids (the bench needs lengths, not words)."""

    def __init__(self, n: int, vocab: int):
        self.ids, self.vocab_size = [(7 * i + 3) % vocab for i in range(n)], vocab

    def encode(self, text: str) -> list[int]:
        return list(self.ids)


def build(shape: str, codec_kind: str) -> tuple[SpeechLM, FlowModel, torch.nn.Module]:
    torch.manual_seed(0)
    lm = SpeechLM(build_qwen2(None, QWEN[shape]), SpeakerExtractor(**LM_SPEAKER[shape])).eval()
    if shape == "tiny":
        flow = load_config(REPO / "configs/tiny/flow_stream.yaml")["flow"]
    else:
        enc = TokenEncoder(80, 2, dim=256, token_blocks=2, latent_blocks=2, heads=4, ffn_dim=1024, dropout=0.0)
        est = UNet1D(80, spk_channels=80, channels=[128], n_blocks=4, num_mid_blocks=2, heads=4, head_dim=32,
                     chunk_size=50, causal=True)
        spk = SpeakerExtractor(n_mels=64, channels=64, conv_layers=1, attention_layers=1, heads=2, ffn_dim=128)
        flow = FlowModel(enc, est, FlowMatching(), 80, speaker=spk)
    codec = build_codec(REPO / ("configs/tiny/dac_vae_harmonic.yaml" if codec_kind == "frame" else "configs/dac_vae.yaml"))
    return lm, flow.eval(), codec.eval()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_shape(shape: str, args: argparse.Namespace) -> dict:
    lm, flow, codec = build(shape, args.codec)
    synth = Synthesizer(lm, flow, codec, FixedText(args.text_tokens, QWEN[shape]["vocab_size"]))
    ratio = (args.tokens + 0.5) / args.text_tokens
    opt = SynthesisOptions(seed=1, min_len_ratio=ratio, max_len_ratio=ratio, n_steps=args.n_steps)
    seconds = args.tokens / 25
    text = "x"

    def streamed() -> dict:
        pieces = None
        if args.text_pieces:
            ids = synth.text_tokenizer.encode(text)
            pieces = (ids[i : i + args.text_pieces] for i in range(0, len(ids), args.text_pieces))
        start = time.perf_counter()
        stamps, n = [], 0
        for chunk in synth.stream(pieces if pieces is not None else text, PROMPT, options=opt):
            stamps.append(time.perf_counter() - start)
            n += chunk.numel()
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return {"first": stamps[0], "wall": stamps[-1], "chunks": len(stamps), "gap_median": _median(gaps),
                "gap_max": max(gaps) if gaps else float("nan"), "samples": n}

    def offline() -> dict:
        synth.timer.seconds.clear()
        utt = synth.prepare("b", text, PROMPT)
        start = time.perf_counter()
        synth.synthesize([utt], SynthesisOptions(**{**opt.__dict__, "flow_streaming": True}))
        return {"wall": time.perf_counter() - start, **{k: v for k, v in synth.timer.seconds.items()}}

    tokens = torch.randint(0, 6561, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    ref = synth._prompt("b", PROMPT, None)[0][None]
    kw = dict(ref_audio=ref, ref_audio_len=torch.tensor([ref.shape[-1]]), n_steps=args.n_steps, seed=1)

    def flow_stream(cache: bool) -> float:
        start = time.perf_counter()
        for _ in stream_latents(flow, tokens[0].tolist(), cache=cache, **kw):
            pass
        return time.perf_counter() - start

    def flow_once() -> float:
        start = time.perf_counter()
        flow.sample(tokens, torch.tensor([args.tokens]), streaming=True, **kw)
        return time.perf_counter() - start

    results: dict = {"shape": shape, "tokens": args.tokens, "audio_seconds": seconds}
    for name, fn in (("stream", streamed), ("offline", offline)):
        fn()  # warm-up
        runs = [fn() for _ in range(args.repeats)]
        results[name] = {k: _median([r[k] for r in runs]) for k in runs[0]}
    for name, fn in (("flow_cached", lambda: flow_stream(True)), ("flow_recompute", lambda: flow_stream(False)),
                     ("flow_once", flow_once)):
        fn()
        results[name] = _median([fn() for _ in range(args.repeats)])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "ref-small"], choices=sorted(QWEN))
    parser.add_argument("--tokens", type=int, default=100, help="speech tokens per utterance (25 per second)")
    parser.add_argument("--text_tokens", type=int, default=20)
    parser.add_argument("--text_pieces", type=int, default=0, help="stream the text N ids at a time (bi-stream)")
    parser.add_argument("--n_steps", type=int, default=10, help="flow ODE steps")
    parser.add_argument("--codec", choices=["frame", "dac"], default="frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as started)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_shape(s, args) for s in args.shapes]
    print(f"{torch.get_num_threads()} thread(s), {args.tokens} tokens = {args.tokens / 25:g} s, "
          f"{args.n_steps} flow steps, codec {args.codec}, text {'in pieces of %d' % args.text_pieces if args.text_pieces else 'whole'}")
    head = ("shape", "1st chunk s", "chunks", "gap med s", "gap max s", "stream s", "stream RTF", "offline s",
            "offline RTF", "flow cached s", "flow recompute s", "flow once s")
    print(" | ".join(head))
    for r in rows:
        s, o, sec = r["stream"], r["offline"], r["audio_seconds"]
        print(" | ".join([r["shape"], f"{s['first']:.3f}", f"{s['chunks']:.0f}", f"{s['gap_median']:.3f}",
                          f"{s['gap_max']:.3f}", f"{s['wall']:.3f}", f"{s['wall'] / sec:.3f}", f"{o['wall']:.3f}",
                          f"{o['wall'] / sec:.3f}", f"{r['flow_cached']:.3f}", f"{r['flow_recompute']:.3f}", f"{r['flow_once']:.3f}"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
