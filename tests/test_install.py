"""The installed packages import, and the codec stays independent of `speech`."""
from __future__ import annotations

import subprocess
import sys


def test_packages_import_from_anywhere(tmp_path):
    code = "import speech, dac_vae, flowae, speech.audio, speech.config, speech.dataset; print(dac_vae.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "dac_vae"


def test_dac_vae_does_not_import_speech(tmp_path):
    code = (
        "import sys, pkgutil, importlib, dac_vae\n"
        "for m in pkgutil.walk_packages(dac_vae.__path__, 'dac_vae.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert not any(k == 'speech' or k.startswith('speech.') for k in sys.modules), 'dac_vae imported speech'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_console_entry_point_is_declared_and_resolves():
    """``speech-tts`` and ``speech-serve`` (pyproject [project.scripts]) name the CLIs' mains."""
    import importlib
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"speech-tts", "speech-serve"} <= set(scripts)
    for target in scripts.values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target
