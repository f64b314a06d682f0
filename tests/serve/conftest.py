"""A real ``python -m speech.serve`` process on 127.0.0.1 over the tiny checkpoints of the inference tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.inference.conftest import tiny_system  # noqa: F401  (the session fixture, reused)

# Fast requests: the tiny LM stops after 4 tokens per text token at most, the flow takes 4 steps.
FAST = ["--max_len_ratio", "4", "--n_steps", "4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; ``url`` is http://127.0.0.1:PORT, its log in ``log``."""

    def __init__(self, system: dict[str, Path], log: Path, *flags: str, models: list[str] | None = None):
        """``models``: the model flags (default: the two-stage system's LM, flow, codec and FSQ tokenizer)."""
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        if models is None:
            models = ["--llm", str(system["llm"]), "--flow", str(system["flow"]), "--codec", str(system["codec"]),
                      "--speech_tokenizer", str(system["fsq"])]
        cmd = [sys.executable, "-m", "speech.serve", *models, "--device", "cpu",
               "--port", str(self.port), "--log_level", "warning", *FAST, *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /health in 120 s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server(tiny_system, tmp_path_factory):  # noqa: F811
    """Batches of up to 4 within 300 ms; a queue of 6; small limits so bad input is cheap to make."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    s = Server(tiny_system, log, "--max_batch", "4", "--batch_window_ms", "300", "--max_queue", "6",
               "--max_text_chars", "200", "--max_prompt_seconds", "10", "--max_body_mb", "2")
    yield s
    s.stop()
