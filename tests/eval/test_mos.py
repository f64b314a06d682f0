"""DNSMOS (optional dependency): clean speech scores above noisy speech; clear message when missing."""

from __future__ import annotations

import builtins

import pytest
import torch

from speech.eval.degrade import add_white_noise
from speech.eval.deps import MissingDependency
from speech.eval.mos import DNSMOS


def test_missing_dependency_names_the_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependency, match="pip install speechmos==0.0.1.1 onnxruntime"):
        DNSMOS()


@pytest.mark.slow
def test_dnsmos_prefers_clean_speech(test_items, load) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos")
    mos = DNSMOS()
    wav = load(test_items[4], mos.sample_rate)
    clean = mos(wav)
    noisy = mos(add_white_noise(wav, 0.0, torch.Generator().manual_seed(0)))
    assert set(clean) == set(DNSMOS.names)
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["dnsmos_ovrl"] > noisy["dnsmos_ovrl"] + 0.3
    assert clean["dnsmos_bak"] > noisy["dnsmos_bak"]
