"""recipes/lib.sh: the shell helpers every recipe sources (run_lanes here; parse_options and the stage
banners run in tests/test_demo_recipe.py)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bash(script: str, **kwargs) -> subprocess.CompletedProcess:
    """``script`` run as a recipe runs: strict mode, lib.sh sourced."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . recipes/lib.sh\n{script}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_run_lanes_runs_at_once_with_one_thread_each(tmp_path):
    # each lane waits (up to 5 s) for the other's file: run one after the other, the first would give up (7)
    out = bash(f"""
lane() {{ echo "$OMP_NUM_THREADS" > {tmp_path}/$1
  for _ in $(seq 100); do [ -e {tmp_path}/$2 ] && return 0; sleep 0.05; done; return 7; }}
a() {{ lane a b; }}
b() {{ lane b a; }}
export OMP_NUM_THREADS=2
run_lanes a b
echo "after $OMP_NUM_THREADS"
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "after 2"  # the caller's thread count is left alone
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == "1\n"


def test_run_lanes_fails_when_a_lane_fails_and_waits_for_the_others(tmp_path):
    # called as a plain command, as the recipes do (bash ignores set -e inside a tested `run_lanes || ...`)
    out = bash(f"""
slow() {{ sleep 0.5; touch {tmp_path}/slow_done; }}
bad() {{ false; touch {tmp_path}/after_failure; return 0; }}
run_lanes slow bad
echo unreachable
""")
    assert out.returncode == 1 and "unreachable" not in out.stdout  # its status stops the script
    assert (tmp_path / "slow_done").exists()  # the other lane ran to its end before run_lanes returned
    assert not (tmp_path / "after_failure").exists()  # a lane stops at its first failing command


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_lanes_stops_every_lane_and_its_children(tmp_path, sig):
    proc = subprocess.Popen(
        ["bash", "-c", f"set -euo pipefail; . recipes/lib.sh\n"
                       # the child process outlives its lane's subshell unless its whole process group is stopped
                       f"late() {{ touch {tmp_path}/started_$1; bash -c 'sleep 2; touch {tmp_path}/finished_$1'; }}\n"
                       "a() { late a; }; b() { late b; }\nrun_lanes a b"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while not all((tmp_path / f"started_{x}").exists() for x in "ab") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 130
    time.sleep(2.5)
    assert not list(tmp_path.glob("finished_*"))
