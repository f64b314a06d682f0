"""The project's own FSQ tokenizer behind the speech-tokenizer interface (drop-in for S3Tokenizer).

``OwnFSQTokenizer.from_checkpoint(ckpt)`` rebuilds :class:`FSQTokenizerModel` from the config of a
``train.py --model fsq`` run (the one stored inside the checkpoint, ``config.yaml`` beside it, or
one given explicitly) and loads its weights. Only the model's part of the config is built (the
data pipeline, optimizer and scheduler are left out), so extraction needs none of them.
The config is data that came with the weights: it is built with the allow-list of
:mod:`dac_vae.safe_config` (checked before anything is imported) unless ``trust_config=True``.
``tokenize`` turns 1-D waveforms at :attr:`sample_rate` into 1-D int64 tensors of ids
``0 .. codebook_size - 1`` at 25 Hz, like the S3Tokenizer backend, so ``name_fsq.pt`` files from
either are interchangeable.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from dac_vae.safe_config import UntrustedConfigError, build_config, resolve_config

from speech.tokenizer.align import char_durations, ctc_forced_align, frames_per_target
from speech.tokenizer.base import SpeechTokenizer, SpeechTokenizerError
from speech.tokenizer.chars import ENGLISH, CharTokenizer
from speech.tokenizer.model import FSQTokenizerModel

__all__ = ["OwnFSQTokenizer", "load_checkpoint", "model_config_text"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """``(weights, config text or None)`` from a trainer checkpoint (file, or DeepSpeed folder with
    ``model.pt``), a plain ``.pt`` state dict or a ``.safetensors`` export."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise SpeechTokenizerError(f"FSQ tokenizer checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise SpeechTokenizerError(f"cannot read FSQ tokenizer checkpoint {path}: {exc}") from None
    config = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        # The unresolved text (references kept) when the trainer stored one, else the resolved one.
        texts = [obj.get("config_unresolved"), obj.get("config")]
        config = next((t for t in texts if isinstance(t, str)), None)
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpeechTokenizerError(f"{path} holds neither a trainer checkpoint nor a state dict")
    state = dict(obj)
    # Weights saved from a DDP / compiled wrapper carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, config


def _subtree_ids(node: yaml.Node, seen: set[int]) -> set[int]:
    """Ids of every node under ``node`` (aliases are the same node objects, so they are followed)."""
    if id(node) in seen:
        return seen
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _subtree_ids(key, seen)
            _subtree_ids(value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            _subtree_ids(value, seen)
    return seen


def model_config_text(text: str, model_key: str = "fsq") -> str:
    """A resolved config reduced to ``model_key`` and the top-level entries it refers to."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    entries = dict((k.value, v) for k, v in root.value) if isinstance(root, yaml.MappingNode) else {}
    if model_key not in entries:
        raise SpeechTokenizerError(f"the config has no {model_key!r} entry (top-level keys: {', '.join(entries)})")
    # Each node belongs to the top-level entry where it first appears (where its anchor is
    # defined); later appearances are aliases. Keep the entries that own a node the model uses.
    owner: dict[int, str] = {}
    for key, value in root.value:
        for node_id in _subtree_ids(value, set()):
            owner.setdefault(node_id, key.value)
    keep = {owner[node_id] for node_id in _subtree_ids(entries[model_key], set())}
    root.value = [(k, v) for k, v in root.value if k.value in keep]
    return yaml.serialize(root)


def _read_config(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise SpeechTokenizerError(f"config file not found: {path}")
    return path.read_text(encoding="utf-8")


def _build_model(
    config_text: str, model_key: str, trust_config: bool = False, source: str = "config"
) -> tuple[FSQTokenizerModel, CharTokenizer | None]:
    """The model under ``model_key`` and, when the config has one, its CTC alphabet (``text_tokenizer``)."""
    try:
        # The whole text is checked (nothing imported) before any of it is resolved or built.
        resolved = resolve_config(config_text, trust=trust_config, source=source)
        model = build_config(model_config_text(resolved, model_key), trust=trust_config, source=source)[model_key]
    except (SpeechTokenizerError, UntrustedConfigError):
        raise
    except Exception as exc:
        message = f"cannot build the FSQ tokenizer from its config: {type(exc).__name__}: {exc}"
        raise SpeechTokenizerError(message) from None
    if not isinstance(model, FSQTokenizerModel):
        raise SpeechTokenizerError(f"config key {model_key!r} builds a {type(model).__name__}, not FSQTokenizerModel")
    try:  # optional: only align() needs it, so a missing or unbuildable entry is no error here
        chars = build_config(model_config_text(resolved, "text_tokenizer"), trust=trust_config, source=source)
        chars = chars["text_tokenizer"]
    except Exception:  # noqa: BLE001
        chars = None
    return model, chars if isinstance(chars, CharTokenizer) else None


class OwnFSQTokenizer(SpeechTokenizer):
    """Speech tokenizer backed by a trained :class:`FSQTokenizerModel` (25 Hz, 6561 ids by default)."""

    sample_rate = 24000
    token_rate = 25
    codebook_size = 6561

    def __init__(
        self, model: FSQTokenizerModel, device: str | torch.device = "cpu", chars: CharTokenizer | None = None
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # the CTC head's alphabet (for align); the default English one when the config names none
        if chars is None and model.vocab_size == len(ENGLISH):
            chars = CharTokenizer()
        self.chars = chars if chars is not None and chars.vocab_size == model.vocab_size else None
        # Instance values from the model (class values above are only the defaults' description).
        self.sample_rate = model.sample_rate
        self.token_rate = model.token_rate
        self.codebook_size = model.codebook_size

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        model_key: str = "fsq",
        trust_config: bool = False,
    ) -> "OwnFSQTokenizer":
        """Rebuild the model and load ``checkpoint``'s weights.

        ``config``: the training YAML (model under ``model_key``), a mapping of
        :class:`FSQTokenizerModel` arguments, or None for the config stored in the checkpoint
        (else ``config.unresolved.yaml`` / ``config.yaml`` beside it, as ``train.py`` writes).
        Built with the allow-list of :mod:`dac_vae.safe_config` unless ``trust_config``: a refused
        config raises :class:`~dac_vae.safe_config.UntrustedConfigError` (a ``ValueError``).
        """
        checkpoint = Path(checkpoint)
        state, stored = load_checkpoint(checkpoint)
        chars = None
        if isinstance(config, Mapping):
            try:
                model = FSQTokenizerModel(**config)
            except (TypeError, ValueError) as exc:
                raise SpeechTokenizerError(f"bad FSQ tokenizer arguments: {exc}") from None
        else:
            if config is not None:
                text, source = _read_config(config), str(config)
            elif stored is not None:
                text, source = stored, f"config stored in {checkpoint}"
            else:
                from speech.trainer.checkpoint import config_beside

                folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
                beside = config_beside(folder)
                if beside is None:
                    raise SpeechTokenizerError(
                        f"{checkpoint} stores no config and there is no {folder / 'config.yaml'}; pass --config"
                    )
                text, source = _read_config(beside), str(beside)
            model, chars = _build_model(text, model_key, trust_config, source)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches: keep the first line of PyTorch's report
            detail = str(exc).strip().splitlines()
            raise SpeechTokenizerError(f"{checkpoint} does not match its config: {detail[-1].strip()}") from None
        # The mel-reconstruction head (and its voice vector) is a training loss only: tokens never depend on
        # it, so its weights may be absent (trained without it) or left over (a config without mel_weight).
        loss_only = ("mel_head.", "mel_voice.")
        missing, unexpected = ([k for k in keys if not k.startswith(loss_only)] for keys in (missing, unexpected))
        if missing or unexpected:
            # Strict in substance, with one clear line instead of a page of key names.
            raise SpeechTokenizerError(
                f"{checkpoint} does not match its config: {len(missing)} missing key(s) (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        log.info("loaded FSQ tokenizer %s (%d codes, %d Hz input)", checkpoint, model.codebook_size, model.sample_rate)
        return cls(model, device, chars)

    def _padded(self, wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D waveforms -> padded float audio ``[B, S]`` and lengths ``[B]`` on the device."""
        for i, wav in enumerate(wavs):
            if wav.dim() != 1:
                raise ValueError(f"tokenize expects 1-D waveforms, item {i} has shape {tuple(wav.shape)}")
        lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
        audio = torch.nn.utils.rnn.pad_sequence([w.float() for w in wavs], batch_first=True)
        return audio.to(self.device), lengths.to(self.device)

    @staticmethod
    def _unpadded(ids: torch.Tensor, token_len: torch.Tensor) -> list[torch.Tensor]:
        """Padded ids ``[B, N]`` and lengths ``[B]`` -> one 1-D int64 CPU tensor per item."""
        return [row[:n].clone() for row, n in zip(ids.cpu(), token_len.cpu().tolist())]

    @torch.inference_mode()
    def tokenize(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """1-D float waveforms at :attr:`sample_rate` -> 1-D int64 CPU tensors of ids, one batched pass."""
        if not wavs:
            return []
        return self._unpadded(*self.model.tokenize(*self._padded(wavs)))

    @torch.inference_mode()
    def align(self, wavs: Sequence[torch.Tensor], texts: Sequence[str]) -> list[torch.Tensor | None]:
        """Speech tokens per character of each transcript (int32 ``[len(text)]``, summing to the
        utterance's :meth:`tokenize` length; see :mod:`speech.tokenizer.align`), from a forced alignment
        of the CTC head; ``None`` for an item whose text spells to nothing or does not fit its frames."""
        return self.tokenize_and_align(wavs, texts)[1]

    @torch.inference_mode()
    def tokenize_and_align(
        self, wavs: Sequence[torch.Tensor], texts: Sequence[str]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """:meth:`tokenize` and :meth:`align` from one encoder pass (the CTC pass yields the ids too)."""
        if self.chars is None:
            raise SpeechTokenizerError("this FSQ tokenizer's CTC alphabet is unknown: its config has no CharTokenizer")
        if len(wavs) != len(texts):
            raise ValueError(f"align needs one text per waveform, got {len(wavs)} and {len(texts)}")
        if not wavs:
            return [], []
        out = self.model.ctc_log_probs(*self._padded(wavs))
        log_probs, ctc_len = out["log_probs"].cpu(), out["ctc_len"].cpu().tolist()
        ids_out = self._unpadded(out["ids"], out["token_len"])
        result: list[torch.Tensor | None] = []
        for lp, n, text in zip(log_probs, ctc_len, texts):
            try:
                ids, sources = self.chars.spell(text)
            except ValueError:
                ids, sources = [], []
            path = ctc_forced_align(lp[:n], ids, self.model.blank) if ids else None
            if path is None:
                result.append(None)
                continue
            frames = frames_per_target(path, len(ids), group=self.model.ctc_upsample)
            result.append(char_durations(text, sources, frames))
        return ids_out, result
