"""Fixtures shared by the evaluation tests: corpus utterances and the (slow to build) default backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speech.audio import load_audio
from speech.eval.reflist import RefItem, corpus_items


@pytest.fixture(autouse=True)
def _one_thread():
    """The per-utterance models are tiny: one thread is fastest and does not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def test_items(corpus_dir: Path) -> list[RefItem]:
    """The corpus test split (18 utterances of 6 seen speakers)."""
    return corpus_items(corpus_dir, "test")


@pytest.fixture(scope="session")
def load():
    """``load(item, sample_rate) -> wav [N]`` for corpus items."""

    def _load(item: RefItem, sample_rate: int = 24000) -> torch.Tensor:
        return load_audio(item.wav, sample_rate)[0]

    return _load


@pytest.fixture(scope="session")
def pocketsphinx_asr():
    from speech.eval.asr import PocketSphinxASR

    return PocketSphinxASR()


@pytest.fixture(scope="session")
def resemblyzer_encoder():
    from speech.eval.speaker import ResemblyzerEncoder

    return ResemblyzerEncoder()
