"""DNSMOS (Reddy et al., ICASSP 2022): a non-intrusive MOS proxy, optional.

The ONNX models ship inside the ``speechmos`` package, not a default dependency, and run with
``onnxruntime`` (installed by requirements.txt for faster-whisper): ``pip install speechmos==0.0.1.1
onnxruntime``. Scores are on the 1..5 MOS scale:
``dnsmos_ovrl`` (overall), ``dnsmos_sig`` (speech), ``dnsmos_bak`` (background), ``dnsmos_p808``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speech.eval.deps import require

__all__ = ["DNSMOS"]

_INSTALL = "speechmos==0.0.1.1 onnxruntime"


class DNSMOS:
    """``DNSMOS()(wav [N] at 16 kHz) -> {dnsmos_ovrl, dnsmos_sig, dnsmos_bak, dnsmos_p808}``."""

    sample_rate = 16000
    names = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")

    def __init__(self, personalized: bool = False):
        require("onnxruntime", _INSTALL, "DNSMOS")
        dnsmos = require("speechmos.dnsmos", _INSTALL, "DNSMOS")
        root = Path(dnsmos.__file__).resolve().parent
        primary = root / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        self.personalized = personalized
        # Our own instance (speechmos.dnsmos.run keeps a module-level global).
        self.model = dnsmos.DNSMOS(str(primary), str(root / "dnsmos_models" / "model_v8.onnx"))

    def __call__(self, wav: torch.Tensor) -> dict[str, float]:
        audio = wav.detach().float().cpu().clamp(-1.0, 1.0).numpy()
        out = self.model(audio, self.sample_rate, self.personalized)
        return {
            "dnsmos_ovrl": float(out["ovrl_mos"]),
            "dnsmos_sig": float(out["sig_mos"]),
            "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_p808": float(out["p808_mos"]),
        }
