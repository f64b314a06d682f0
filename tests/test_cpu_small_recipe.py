"""recipes/cpu_small: its options, and the demo's test-split synthesis list it turns on (--synth_test 1).

The recipe itself is the demo recipe (tests/test_demo_recipe.py runs that end to end) on a corpus
from ``make_demo_corpus.py --hours`` (tests/tools/test_sentences.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes" / "demo"))

from make_synth_list import synth_list  # noqa: E402


def test_help_and_unknown_option():
    run = subprocess.run(["bash", "recipes/cpu_small/run.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and "--hours" in run.stdout and "stage" in run.stdout
    run = subprocess.run(["bash", "recipes/cpu_small/run.sh", "--nope", "1"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "unknown option --nope" in run.stderr


def test_test_split_prompts_come_from_training_clips():
    test = [{"utt": "a_1", "spk": "a", "text": "One.", "wav": "/t/a_1.wav"},
            {"utt": "b_1", "spk": "b", "text": "Two.", "wav": "/t/b_1.wav"}]
    train = [{"utt": f"{s}_{i}", "spk": s, "text": "x", "wav": f"/tr/{s}_{i}.wav"} for s in "ab" for i in range(2)]
    rows = synth_list(test, prompts=train)
    assert [(r["utt"], r["prompt_wav"]) for r in rows] == [("a_1", "/tr/a_0.wav"), ("b_1", "/tr/b_0.wav")]
    assert json.dumps(rows)  # a speaker with one test utterance is fine when prompts come from elsewhere
