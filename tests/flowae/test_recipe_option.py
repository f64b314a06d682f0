"""The demo recipe's ``--codec`` option (the full run with --codec flowae is too slow for the suite:
it was run by hand, stages 0-10 on the tiny slice of tests/test_demo_recipe.py, to wavs)."""

from __future__ import annotations

import subprocess

from .conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "recipes/demo/run.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_codec_option_picks_the_codec_folder_and_rejects_unknown_kinds(tmp_path):
    bad = _run("--codec", "wavenet")
    assert bad.returncode == 1 and "--codec must be dac_vae or flowae" in bad.stderr
    missing = _run("--codec", "flowae", "--stage", "5", "--exp", str(tmp_path / "exp"))
    assert missing.returncode == 1 and str(tmp_path / "exp" / "flowae" / "final.pt") in missing.stderr
