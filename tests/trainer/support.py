"""Helpers of the trainer tests: paths, a subprocess runner, the toy train.py command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = REPO / "tests" / "trainer" / "toy.yaml"


def run_cmd(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run a command from the repo root with one thread per process (as on 2 shared cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **env}
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def train_args(data: Path, model_dir: Path, *extra: str) -> list[str]:
    """The base train.py command line on the toy config and corpus."""
    return ["--config", str(TOY_CONFIG), "--model", "toy", "--train_data", str(data / "train.list"),
            "--cv_data", str(data / "cv.list"), "--model_dir", str(model_dir), "--comet_disabled",
            "--trust_config", *extra]  # the toy classes live in tests/, outside the allow-list


PYTHON = sys.executable
