"""Speaker encoders for speaker similarity (SIM), behind one small interface.

``SpeakerEncoder.embed(wav)`` takes a 1-D float waveform at ``encoder.sample_rate`` (16 kHz here) and
returns an L2-normalised ``[D]`` embedding; :func:`cosine_similarity` of two embeddings is the SIM
that papers report (synthesised vs. reference / prompt audio).

Backends (``build_speaker_encoder("name[:path]")`` or YAML ``!new:``):

- ``resemblyzer``: offline default; the GE2E d-vector model's weights ship inside the PyPI package.
- ``wavlm-xvector:<dir>``: a Hugging Face audio x-vector folder (e.g. WavLM-base-plus-sv) through
  ``transformers``, loaded with ``local_files_only``.
- ``torchscript:<file>``: any TorchScript speaker model (ECAPA-TDNN, WavLM+ECAPA as seed-tts-eval
  uses...) exported as ``f(wav [1, N] at 16 kHz) -> [1, D]``.
- ``ecapa:<dir>``: a SpeechBrain ECAPA-TDNN folder (``pip install speechbrain``).
"""

from __future__ import annotations

import abc
import logging

import numpy as np
import torch
import torch.nn.functional as F

from speech.eval.deps import require, require_path

__all__ = [
    "SpeakerEncoder",
    "ResemblyzerEncoder",
    "XVectorEncoder",
    "TorchScriptEncoder",
    "SpeechBrainECAPAEncoder",
    "SPEAKER_BACKENDS",
    "build_speaker_encoder",
    "cosine_similarity",
]

log = logging.getLogger(__name__)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two ``[D]`` embeddings (1 = same direction)."""
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


class SpeakerEncoder(abc.ABC):
    """``embed(wav [N] float32 at self.sample_rate) -> [D]`` unit-norm speaker embedding."""

    sample_rate: int = 16000

    @abc.abstractmethod
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding of one utterance."""

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """SIM of two waveforms."""
        return cosine_similarity(self.embed(a), self.embed(b))


class ResemblyzerEncoder(SpeakerEncoder):
    """Resemblyzer's GE2E LSTM d-vector (256-d); voice-activity trimming as the package does it."""

    # Below this much speech left after VAD trimming, embed the untrimmed signal instead.
    min_trimmed_s = 0.5

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        resemblyzer = require("resemblyzer", "Resemblyzer==0.1.4", "the resemblyzer speaker encoder")
        path = str(require_path(weights, "resemblyzer weights", "file")) if weights else None
        self._preprocess = resemblyzer.preprocess_wav
        self.model = resemblyzer.VoiceEncoder(device=device, verbose=False, weights_fpath=path)
        self.model.eval()

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        raw = wav.detach().float().cpu().clamp(-1.0, 1.0).numpy()
        trimmed = self._preprocess(raw, source_sr=self.sample_rate)
        if len(trimmed) < self.min_trimmed_s * self.sample_rate:
            trimmed = raw
        emb = torch.from_numpy(np.asarray(self.model.embed_utterance(trimmed), dtype=np.float32))
        return F.normalize(emb, dim=0)


class XVectorEncoder(SpeakerEncoder):
    """A ``transformers`` audio x-vector model (WavLM/UniSpeech-SAT ``...ForXVector``) from a local folder."""

    def __init__(self, model_dir: str | None = None, device: str = "cpu"):
        transformers = require("transformers", "transformers", "the wavlm-xvector speaker encoder")
        path = require_path(model_dir, "wavlm-xvector speaker encoder", "directory")
        self.device = torch.device(device)
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.AutoModelForAudioXVector.from_pretrained(str(path), local_files_only=True)
        self.model.to(self.device).eval()
        self.sample_rate = int(self.extractor.sampling_rate)

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        inputs = self.extractor(wav.detach().float().cpu().numpy(), sampling_rate=self.sample_rate, return_tensors="pt")
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return F.normalize(out.embeddings[0].float().cpu(), dim=0)


class TorchScriptEncoder(SpeakerEncoder):
    """A TorchScript speaker model file: ``model(wav [1, N]) -> [1, D]`` at ``sample_rate``."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", sample_rate: int = 16000):
        path = require_path(model_path, "torchscript speaker encoder", "file")
        self.device = torch.device(device)
        self.sample_rate = sample_rate
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        out = self.model(wav.detach().float().to(self.device).unsqueeze(0))
        return F.normalize(out.reshape(-1).float().cpu(), dim=0)


class SpeechBrainECAPAEncoder(SpeakerEncoder):
    """SpeechBrain's ECAPA-TDNN (``hyperparams.yaml`` + checkpoint files) from a local folder."""

    def __init__(self, model_dir: str | None = None, device: str = "cpu"):
        inference = require("speechbrain.inference.speaker", "speechbrain", "the ecapa speaker encoder")
        path = require_path(model_dir, "ecapa speaker encoder (SpeechBrain folder)", "directory")
        self.model = inference.EncoderClassifier.from_hparams(
            source=str(path), savedir=str(path), run_opts={"device": device}
        )

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        out = self.model.encode_batch(wav.detach().float().unsqueeze(0))
        return F.normalize(out.reshape(-1).float().cpu(), dim=0)


# The first argument of each class is the model path given after the colon in a spec.
SPEAKER_BACKENDS: dict[str, type[SpeakerEncoder]] = {
    "resemblyzer": ResemblyzerEncoder,
    "wavlm-xvector": XVectorEncoder,
    "torchscript": TorchScriptEncoder,
    "ecapa": SpeechBrainECAPAEncoder,
}


def build_speaker_encoder(spec: str, **kwargs) -> SpeakerEncoder:
    """``"resemblyzer"`` / ``"wavlm-xvector:/models/wavlm-base-plus-sv"`` ... -> a ready encoder."""
    name, _, path = spec.partition(":")
    if name not in SPEAKER_BACKENDS:
        raise ValueError(f"unknown speaker encoder {name!r}: choose one of {', '.join(SPEAKER_BACKENDS)}")
    cls = SPEAKER_BACKENDS[name]
    return cls(path, **kwargs) if path else cls(**kwargs)
