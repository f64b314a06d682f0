#!/usr/bin/env python3
"""speech-serve under load: N concurrent clients on 127.0.0.1, a fixed number of requests, with and
without dynamic batching.

    python bench/serve.py                          # tiny random-weight checkpoints, 4 clients, 24 requests
    python bench/serve.py --llm exp/demo/llm/final.pt --flow exp/demo/flow/final.pt --codec exp/demo/dac_vae/final.pt

For each setting (``--max_batch 1``: batching off; ``--max_batch B``) a fresh server process is
started (``python -m speech.serve``), two voices are registered, 2 warm-up requests are sent, then
``--clients`` threads send ``--requests`` requests in all (texts of the demo corpus, in turn; the
voices alternate; one seed, so requests can share a batch). Bounded in count and time: no request
is sent after ``--max_seconds``. Prints requests/s, p50/p95 latency, the mean batch size the server
achieved (its /health counters) and the 503s. Without checkpoints, tiny random-weight ones are built
from configs/tiny (the LM then stops at ``--max_len_ratio`` tokens per text token: output lengths
are fixed by the text, which is what a throughput figure needs). Never asserts timings.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from speech.config import load_model_config, resolve_config_text

REPO = Path(__file__).resolve().parents[1]


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    """configs/tiny LM, flow and codec with fixed random weights, saved as the trainer saves them."""
    from speech.text.bpe import train_bpe

    texts = [p.read_text(encoding="utf-8").strip() for p in sorted((REPO / "data/wavs").glob("*/*.txt"))]
    bpe = root / "tokenizer.json"
    train_bpe(texts, vocab_size=512).save(str(bpe))
    stats = root / "latent_stats.json"
    stats.write_text(json.dumps({"mean": [0.0] * 80, "std": [1.0] * 80}))
    out = {}
    for key, name, cfg, over in [("llm", "llm", "llm.yaml", {"text_tokenizer_path": str(bpe)}),
                                 ("flow", "flow", "flow.yaml", {"latent_stats": str(stats)}),
                                 ("codec", "dac_vae", "dac_vae.yaml", {})]:
        folder = root / key
        folder.mkdir()
        text = resolve_config_text(REPO / "configs/tiny" / cfg, over)
        (folder / "config.yaml").write_text(text, encoding="utf-8")
        torch.manual_seed(0)
        model = load_model_config(folder / "config.yaml")[name]  # as the server will: allow-listed
        torch.save({"model": model.state_dict(), "config": text, "step": 1}, folder / "final.pt")
        out[key] = folder / "final.pt"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: dict[str, Path], args: argparse.Namespace, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "speech.serve", "--llm", str(ckpt["llm"]), "--flow", str(ckpt["flow"]),
           "--codec", str(ckpt["codec"]), "--device", "cpu", "--port", str(port), "--log_level", "warning",
           "--max_batch", str(max_batch), "--batch_window_ms", str(args.window_ms), "--max_queue", str(args.max_queue),
           "--max_len_ratio", str(args.max_len_ratio), "--n_steps", str(args.n_steps)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited ({proc.returncode}): {log.read_text()[-1000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("error: the server did not start in 180 s")


def run_setting(ckpt: dict[str, Path], args: argparse.Namespace, max_batch: int, texts: list[str], log: Path) -> dict:
    proc, url = start_server(ckpt, args, max_batch, log)
    try:
        voices = []
        for wav in args.voices:
            r = httpx.post(url + "/v1/voices", files={"reference": (Path(wav).name, Path(wav).read_bytes())}, timeout=60)
            r.raise_for_status()
            voices.append(r.json()["id"])
        for i in range(2):  # warm-up
            httpx.post(url + "/v1/tts", data={"text": texts[i], "voice_id": voices[0]}, timeout=120).raise_for_status()
        before = httpx.get(url + "/health").json()
        latencies, statuses, lock, counter = [], [], threading.Lock(), iter(range(args.requests))
        stop_at = time.monotonic() + args.max_seconds

        def client() -> None:
            with httpx.Client(timeout=args.max_seconds + 60) as http:
                while time.monotonic() < stop_at:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    data = {"text": texts[i % len(texts)], "voice_id": voices[i % len(voices)], "seed": "0"}
                    t0 = time.monotonic()
                    r = http.post(url + "/v1/tts", data=data)
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            latencies.append(time.monotonic() - t0)

        start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        after = httpx.get(url + "/health").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    batches = after["batches"] - before["batches"]
    ok = len(latencies)
    q = statistics.quantiles(latencies, n=20) if ok >= 2 else [float("nan")] * 19
    return {"max_batch": max_batch, "clients": args.clients, "sent": len(statuses), "ok": ok,
            "rejected_503": statuses.count(503), "other_errors": len(statuses) - ok - statuses.count(503),
            "wall_s": round(wall, 2), "requests_per_s": round(ok / wall, 3),
            "p50_s": round(statistics.median(latencies), 3) if ok else None, "p95_s": round(q[18], 3),
            "mean_batch_size": round((after["requests"] - before["requests"]) / batches, 2) if batches else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm"), parser.add_argument("--flow"), parser.add_argument("--codec")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument("--requests", type=int, default=24, help="requests per setting (default: 24)")
    parser.add_argument("--max_seconds", type=float, default=240, help="no request starts after this (default: 240)")
    parser.add_argument("--max_batch", type=int, default=4, help="the batching setting (default: 4; 1 is always run)")
    parser.add_argument("--window_ms", type=float, default=20, help="--batch_window_ms of the server (default: 20)")
    parser.add_argument("--max_queue", type=int, default=32)
    parser.add_argument("--max_len_ratio", type=float, default=4, help="most speech tokens per text token (default: 4)")
    parser.add_argument("--n_steps", type=int, default=4, help="flow ODE steps (default: 4)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (default: 1)")
    parser.add_argument("--voices", nargs="+", default=[str(REPO / "data/wavs/slt/slt_000.wav"),
                                                         str(REPO / "data/wavs/rms/rms_001.wav")])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.max_batch < 1:
        parser.error("--clients, --requests and --max_batch must be >= 1")
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted((REPO / "data/wavs").glob("*/*.txt"))][:16]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        given = [args.llm, args.flow, args.codec]
        if any(given) and not all(given):
            parser.error("give all of --llm, --flow and --codec, or none (tiny random-weight checkpoints)")
        ckpt = {k: Path(v) for k, v in zip(("llm", "flow", "codec"), given)} if all(given) else tiny_checkpoints(root)
        rows = [run_setting(ckpt, args, mb, texts, root / f"server_{mb}.log") for mb in sorted({1, args.max_batch})]
    print(f"speech-serve, {args.clients} clients, {args.requests} requests, server threads {args.threads}, "
          f"max_len_ratio {args.max_len_ratio}, n_steps {args.n_steps}, window {args.window_ms} ms, "
          f"{'given' if all(given) else 'tiny random-weight'} checkpoints, {os.cpu_count()} CPUs")
    print(f"{'max_batch':>9} {'ok':>4} {'503':>4} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'mean batch':>10}")
    for r in rows:
        print(f"{r['max_batch']:>9} {r['ok']:>4} {r['rejected_503']:>4} {r['requests_per_s']:>7.3f} "
              f"{r['p50_s']:>7.3f} {r['p95_s']:>7.3f} {str(r['mean_batch_size']):>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
