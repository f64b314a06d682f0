"""Fixtures of the trainer tests: toy corpora."""
from __future__ import annotations

from pathlib import Path

import pytest

from .toy import write_corpus


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """A 12-utterance training shard and a 6-utterance CV shard (one process reads all)."""
    folder = tmp_path_factory.mktemp("toy_data")
    write_corpus(folder, [12])
    write_corpus(folder, [6], name="cv", seed=1)
    return folder
