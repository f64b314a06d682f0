"""``speech-serve`` / ``python -m speech.serve``: load the models once and serve the HTTP API and the demo page."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from typing import Sequence

from speech.inference import (
    InferenceError,
    SynthesisOptions,
    add_model_arguments,
    add_sampling_arguments,
    check_model_args,
    load_synthesizer,
    resolve_device,
)

__all__ = ["build_parser", "main", "MODEL_FLAGS"]

# The "models" group of inference.py, same names, loaded the same way (speech.inference.load_synthesizer):
# two-stage (--llm, --flow) or continuous AR (--sled), with a codec.
MODEL_FLAGS = ("llm", "flow", "sled", "sled_config", "codec", "llm_config", "flow_config", "codec_config", "flow_ema",
               "text_tokenizer", "speech_tokenizer", "speech_tokenizer_type", "trust_config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speech-serve",
        description="HTTP API (POST /v1/tts, /v1/voices; GET /health, /docs) and a demo page (/) over trained checkpoints.",
        epilog=(
            "example:\n"
            "  speech-serve --llm exp/demo/llm/final.pt --flow exp/demo/flow/final.pt --codec exp/demo/dac_vae/final.pt\n"
            "  speech-serve --sled exp/demo/sled/final.pt --codec exp/demo/dac_vae/final.pt   # the continuous AR path\n"
            "  # then open http://127.0.0.1:8000/ , or:\n"
            "  curl -F text='Hello there.' -F reference=@ref.wav http://127.0.0.1:8000/v1/tts -o hello.wav"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = parser.add_argument_group("models (as inference.py)")
    add_model_arguments(m)
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default: 8000")
    s.add_argument("--max_batch", type=int, default=8,
                   help="most concurrent requests in one forward pass; 1 turns dynamic batching off (default: 8)")
    s.add_argument("--batch_window_ms", type=float, default=20.0,
                   help="how long a request waits for others to batch with (default: 20)")
    s.add_argument("--max_queue", type=int, default=32, help="requests waiting beyond this get 503 (default: 32)")
    s.add_argument("--max_text_chars", type=int, default=500, help="longer texts get 422 (default: 500)")
    s.add_argument("--min_prompt_seconds", type=float, default=0.5, help="shorter clips get 422 (default: 0.5)")
    s.add_argument("--max_prompt_seconds", type=float, default=15.0, help="longer clips get 422 (default: 15)")
    s.add_argument("--max_body_mb", type=float, default=20.0, help="larger request bodies get 413 (default: 20)")
    s.add_argument("--max_voices", type=int, default=100, help="registered voices kept in memory (default: 100)")
    s.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    d = parser.add_argument_group("request defaults (each request may override them)")
    add_sampling_arguments(d)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.max_queue < 1 or args.batch_window_ms < 0:
        parser.error("--max_batch and --max_queue must be >= 1, --batch_window_ms >= 0")
    if args.max_text_chars < 1 or args.max_body_mb <= 0 or args.max_voices < 1:
        parser.error("--max_text_chars, --max_body_mb and --max_voices must be positive")
    check_model_args(parser, args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from speech.serve.app import ServeConfig, create_app
    from speech.serve.batcher import DynamicBatcher

    try:
        synth = load_synthesizer(args, resolve_device(args.device))
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # per-request: the seed; not a server setting: the streamed-equivalent offline flow (--flow_streaming)
    defaults = SynthesisOptions(**{f.name: getattr(args, f.name) for f in fields(SynthesisOptions)
                                   if f.name not in ("seed", "flow_streaming")})
    batcher = DynamicBatcher(synth, args.max_batch, args.batch_window_ms / 1000, args.max_queue)
    config = ServeConfig(args.max_text_chars, int(args.max_body_mb * 2**20), args.max_voices, defaults)
    app = create_app(synth, batcher, config)
    print(f"speech-serve: http://{args.host}:{args.port}/ (API docs at /docs), max_batch {args.max_batch}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        batcher.close()
    return 0
