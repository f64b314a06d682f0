"""tools/fault_campaign.py: three SIGKILLs (at fault points inside saves and by timer) and restarts
with --checkpoint last end bit-identical to the uninterrupted run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "tools/fault_campaign.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "--kills" in result.stdout and "--engine" in result.stdout


def test_three_kills_end_identical(tmp_path):
    result = _run("--kills", "3", "--seed", "1", "--work_dir", str(tmp_path / "work"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "kills survived: 3/3" in out
    assert "final weights identical (bitwise): yes" in out
    assert "whole final checkpoint identical (weights, EMA, optimizer, schedulers, RNG, position): yes" in out
    assert "checkpoint folder like the uninterrupted run's: yes" in out
    assert sum(line.startswith("[") and "killed by" in line for line in out.splitlines()) == 3
    # each killed run really died mid-training (its log has no "done:" line); the last one finished
    logs = sorted((tmp_path / "work").glob("attempt_*.log"))
    assert len(logs) == 5 and all("done:" not in p.read_text() for p in logs[1:4])
    assert "done:" in logs[-1].read_text()
