"""The processors of the data pipeline: small generators ``f(items, **kw)`` composed in YAML order.

A typical chain (each stage only if the model needs it)::

    tokenize_text → filter_items → load_speech_token → [load_text_alignment] → load_latent → align_lengths
    → load_audio → random_crop → speaker_reference → shuffle → sort → batch → padding

Items are dicts from the index (``utt, spk, wav, text, duration, token_path, n_tokens,
latent_path, n_latent_frames`` plus ``shard`` and ``offset``); processors add tensors:
``text_token [L]``, ``text_token_dur [L]``, ``speech_token [T]``, ``latent [D, T_lat]``, ``audio [S]``,
``ref_audio [S]`` (and ``audio_len`` when a crop is zero-padded). ``batch`` turns items into lists, ``padding`` turns
lists into the batch dicts of docs/contracts.md.

Bad items are never fatal: they are dropped with a short reason on ``ctx.skips`` (counted, the
first of each reason logged with its path). Config mistakes (an unknown key, an impossible bound)
raise ``ValueError`` at once. Seeded processors (``shuffle``, ``random_crop``, ``speaker_reference``)
draw from ``ctx.rng(...)``, fixed by (seed, epoch, reader); the Dataset passes ``ctx``, and a
processor called by hand without one gets a default context (epoch 0, seed 0).
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections import OrderedDict, deque
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from speech.audio import AudioError, resample
from speech.audio import load_audio as _read_audio

from .context import PipelineContext
from .paths import ALIGN_SUFFIX, TOKEN_SUFFIX

__all__ = [
    "filter_items",
    "tokenize_text",
    "load_speech_token",
    "load_text_alignment",
    "load_latent",
    "load_audio",
    "random_crop",
    "align_lengths",
    "speaker_reference",
    "shuffle",
    "sort",
    "batch",
    "padding",
    "item_length",
    "bounds_length",
    "check_length_bound",
    "PAD_KEYS",
]

Item = dict[str, Any]

# Batch tensors and how they pad: 1-D ones as [B, T]; ``latent`` [D, T] as [B, D, T].
PAD_KEYS = ("text_token", "text_token_dur", "speech_token", "latent", "ref_audio", "audio")
SPEECH_VOCAB = 6561


def _context(ctx: PipelineContext | None) -> PipelineContext:
    return ctx if ctx is not None else PipelineContext()


def _where(item: Item, key: str = "wav") -> str:
    """The best path to name in a skip message for ``item``."""
    return str(item.get(key) or item.get("wav") or f"{item.get('shard')}@{item.get('offset')} ({item.get('utt')})")


def _entry(item: Item) -> str:
    """Where an index entry came from: ``shard@offset (utt)``."""
    return f"{item.get('shard')}@{item.get('offset')} ({item.get('utt')})"


def _path(item: Item, key: str, skips) -> str | None:
    """``item[key]`` as a file path, or None after counting why not (absent, empty, not a string)."""
    value = item.get(key)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        return value
    if value is None or value == "":
        skips.skip(f"no {key} in the index entry", _entry(item))
    else:
        skips.skip(f"{key} in the index entry is not a path", _entry(item), f"{key}={value!r}")
    return None


def item_length(item: Item, key: str) -> float:
    """Length of ``item[key]`` along time: a tensor's last axis, a sequence's length, or a number."""
    value = item.get(key)
    if value is None:
        raise ValueError(f"length key {key!r} is not in the item (keys: {sorted(item)}); fix the config")
    if isinstance(value, torch.Tensor):
        length = item.get(f"{key}_len")  # a zero-padded crop keeps its true length here
        return int(length) if length is not None else int(value.shape[-1])
    if isinstance(value, (int, float)):
        return value
    return len(value)


def _lengths(item: Item, keys: Sequence[str]) -> list[int]:
    return [
        int(item[k].shape[-1]) if isinstance(item.get(k), torch.Tensor) else int(item_length(item, k)) for k in keys
    ]


# ---------------------------------------------------------------------------------------------
# Per-item stages
# ---------------------------------------------------------------------------------------------


def filter_items(
    items: Iterable[Item],
    min_duration: float = 0.1,
    max_duration: float = 60.0,
    min_text_tokens: int = 1,
    max_text_tokens: int = 1000,
    min_speech_tokens: int = 1,
    max_speech_tokens: int = 1500,
    min_latent_frames: int = 1,
    max_latent_frames: int = 4500,
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Drop items outside the length bounds (seconds, text tokens, speech tokens, latent frames).

    Each bound applies to what the item has: loaded tensors (``text_token``, ``speech_token``,
    ``latent``) or else the index counts (``n_tokens``, ``n_latent_frames``), so the filter can run
    before the features are loaded and again after. A missing or non-finite duration is skipped.
    """
    if min_duration > max_duration:
        raise ValueError(f"filter_items: min_duration {min_duration} > max_duration {max_duration}")
    skips = _context(ctx).skips
    for item in items:
        duration = item.get("duration")
        if (
            not isinstance(duration, (int, float))
            or isinstance(duration, bool)
            or not math.isfinite(duration)
            or duration <= 0
        ):
            skips.skip("missing or invalid duration", _where(item), f"duration={duration!r}")
            continue
        if not min_duration <= duration <= max_duration:
            skips.skip(f"duration outside [{min_duration}, {max_duration}] s", _where(item), f"{duration:.2f} s")
            continue
        checks = (
            ("text tokens", "text_token", None, min_text_tokens, max_text_tokens),
            ("speech tokens", "speech_token", "n_tokens", min_speech_tokens, max_speech_tokens),
            ("latent frames", "latent", "n_latent_frames", min_latent_frames, max_latent_frames),
        )
        ok = True
        for name, key, count_key, low, high in checks:
            if isinstance(item.get(key), torch.Tensor):
                n = int(item[key].shape[-1])
            elif count_key is not None and isinstance(item.get(count_key), int):
                n = item[count_key]
            else:
                continue
            if not low <= n <= high:
                skips.skip(f"{name} outside [{low}, {high}]", _where(item), f"{n} {name}")
                ok = False
                break
        if ok:
            yield item


def tokenize_text(
    items: Iterable[Item], tokenizer: Any, key: str = "text", ctx: PipelineContext | None = None
) -> Iterator[Item]:
    """Add ``text_token`` ``[L]`` int64 from ``item[key]``; empty or non-UTF-8 text is skipped."""
    skips = _context(ctx).skips
    for item in items:
        text = item.get(key)
        if not isinstance(text, str):
            skips.skip("missing text", _where(item))
            continue
        try:
            text.encode("utf-8")  # JSON admits lone surrogates, which no UTF-8 text contains
        except UnicodeEncodeError as exc:
            skips.skip("non-UTF-8 text", _where(item), str(exc))
            continue
        if not text.strip():
            skips.skip("empty text", _where(item))
            continue
        ids = tokenizer.encode(text)
        if not ids:
            skips.skip("text gives no tokens", _where(item), repr(text))
            continue
        item["text_token"] = torch.tensor(ids, dtype=torch.long)
        yield item


_UNUSABLE = object()  # what _load_pt returns for a file it has counted as skipped (a file may hold None)


def _load_pt(item: Item, path_key: str, what: str, skips) -> Any:
    """``torch.load`` of ``item[path_key]`` (weights only), or ``_UNUSABLE`` after counting why not."""
    path = _path(item, path_key, skips)
    if path is None:
        return _UNUSABLE
    if not os.path.isfile(path):
        skips.skip(f"missing {what} file", path)
        return _UNUSABLE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, 0-byte file...
        skips.skip(f"corrupt {what} file", path, f"{type(exc).__name__}: {exc}")
        return _UNUSABLE


def _is_int_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and not (
        x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool
    )


def load_speech_token(
    items: Iterable[Item],
    vocab_size: int = SPEECH_VOCAB,
    path_key: str = "token_path",
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Add ``speech_token`` ``[T]`` int64 from ``name_fsq.pt``; checks shape, dtype and id range."""
    skips = _context(ctx).skips
    for item in items:
        tokens = _load_pt(item, path_key, "token", skips)
        if tokens is _UNUSABLE:
            continue
        path = item[path_key]
        if not _is_int_tensor(tokens) or tokens.dim() != 1:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            skips.skip("token file is not a 1-D integer tensor", path, f"found {shape} {getattr(tokens, 'dtype', '')}")
            continue
        if tokens.numel() == 0:
            skips.skip("empty token sequence", path)
            continue
        ids = tokens.long()  # first: min/max are not implemented for uint16/32/64 (uint64 beyond 2^63 wraps < 0)
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            skips.skip(f"token id outside 0..{vocab_size - 1}", path, f"ids span {low}..{high}")
            continue
        item["speech_token"] = ids
        yield item


def load_text_alignment(
    items: Iterable[Item],
    tokenizer: Any,
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Add ``text_token_dur`` ``[L]``: speech tokens per text token, from the ``<utt>_align.pt`` beside the
    item's token file (speech tokens per character, :mod:`speech.tokenizer.align`), summed over each text
    token's characters. An item without a usable one is kept with -1 durations (counted in ``ctx.events``):
    it trains in the other layouts. Needs ``text_token`` and ``speech_token``."""
    from speech.tokenizer.align import token_durations

    ctx = _context(ctx)
    for item in items:
        text, ids, speech = item.get("text"), item.get("text_token"), item.get("speech_token")
        if ids is None or speech is None:
            raise ValueError("load_text_alignment needs tokenize_text and load_speech_token before it")
        dur, why = None, None
        token_path = item.get("token_path")
        path = None
        if isinstance(token_path, str) and token_path.endswith(TOKEN_SUFFIX):
            path = token_path[: -len(TOKEN_SUFFIX)] + ALIGN_SUFFIX
        if path is None or not os.path.isfile(path):
            why = "no alignment file"
        else:
            try:
                chars = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - any unreadable file is one counted reason
                chars = None
            if not _is_int_tensor(chars) or chars.dim() != 1 or chars.numel() != len(text):
                why = "alignment does not match the text"
            elif int(chars.long().sum()) != speech.numel() or int(chars.min()) < 0:
                why = "alignment does not match the speech tokens"
            else:
                dur = token_durations(chars, tokenizer.char_starts(text, ids.tolist()))
        if dur is None:
            ctx.events[f"unaligned ({why})"] += 1
            dur = torch.full((ids.numel(),), -1, dtype=torch.long)
        item["text_token_dur"] = dur
        yield item


def load_latent(
    items: Iterable[Item],
    key: str = "mu",
    dim: int | None = None,
    path_key: str = "latent_path",
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Add ``latent`` ``[D, T]`` float32 (``key`` of a ``name_latent*.pt`` dict); checks shape and finiteness."""
    skips = _context(ctx).skips
    for item in items:
        data = _load_pt(item, path_key, "latent", skips)
        if data is _UNUSABLE:
            continue
        path = item[path_key]
        if not isinstance(data, dict) or not isinstance(data.get(key), torch.Tensor):
            skips.skip(f"latent file has no {key!r} tensor", path, f"found {type(data).__name__}")
            continue
        latent = data[key]
        if (
            latent.dim() != 2
            or not latent.dtype.is_floating_point
            or (dim is not None and latent.shape[0] != dim)
            or latent.shape[1] == 0
        ):
            want = f"[{dim if dim is not None else 'D'}, T>0] float"
            skips.skip("latent has the wrong shape", path, f"found {tuple(latent.shape)} {latent.dtype}, want {want}")
            continue
        latent = latent.float()
        if not bool(torch.isfinite(latent).all()):
            skips.skip("non-finite latent values", path)
            continue
        item["latent"] = latent
        yield item


def load_audio(
    items: Iterable[Item],
    sample_rate: int = 24000,
    duration_tolerance: float | None = 0.1,
    path_key: str = "wav",
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Add ``audio`` ``[S]`` float32 at ``sample_rate``; unreadable files and ones whose length
    disagrees with the index ``duration`` by more than ``duration_tolerance`` s (truncated) are skipped."""
    skips = _context(ctx).skips
    for item in items:
        path = _path(item, path_key, skips)
        if path is None:
            continue
        try:
            wav, _ = _read_audio(path, sample_rate)
        except AudioError as exc:
            skips.skip(f"unreadable audio ({exc.reason.split(':')[0]})", path, exc.reason)
            continue
        duration = item.get("duration")
        if duration_tolerance is not None and isinstance(duration, (int, float)):
            actual = wav.shape[0] / sample_rate
            if abs(actual - duration) > duration_tolerance:
                skips.skip(
                    "audio length disagrees with the index (truncated?)",
                    path,
                    f"{actual:.2f} s read, index says {duration:.2f} s",
                )
                continue
        item["audio"] = wav.clamp_(-1.0, 1.0)  # resampling a clipped signal overshoots full scale
        item["sample_rate"] = sample_rate
        yield item


def random_crop(
    items: Iterable[Item],
    seconds: float = 1.0,
    sample_rate: int = 24000,
    key: str = "audio",
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Crop ``item[key]`` to exactly ``seconds`` (codec training); shorter clips are zero-padded
    and ``{key}_len`` keeps their true length so losses can mask the padding."""
    ctx = _context(ctx)
    crop = int(round(seconds * sample_rate))
    if crop <= 0:
        raise ValueError(f"random_crop: seconds={seconds} gives no samples at {sample_rate} Hz")
    rng = ctx.rng("random_crop")
    for item in items:
        wav = item.get(key)
        if not isinstance(wav, torch.Tensor):
            raise ValueError(f"random_crop: item has no {key!r} tensor; put load_audio before it")
        n = wav.shape[-1]
        if n >= crop:
            item[key] = _crop(wav, crop, rng)  # a copy: the full clip is freed before the shuffle buffer
            item[f"{key}_len"] = crop
        else:
            item[key] = F.pad(wav, (0, crop - n))
            item[f"{key}_len"] = n
        yield item


def align_lengths(
    items: Iterable[Item],
    token_latent_ratio: int = 2,
    tolerance: int = 4,
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Trim tokens and latents to ``n = min(T_lat // ratio, n_tok)`` tokens and ``n · ratio`` frames.

    Afterwards ``len(speech_token) * ratio == latent.shape[-1]`` exactly. Items whose lengths
    differ by more than ``tolerance`` tokens were extracted from different audio and are skipped.
    """
    if not isinstance(token_latent_ratio, int) or token_latent_ratio < 1:
        raise ValueError(f"align_lengths: token_latent_ratio must be a positive integer, got {token_latent_ratio!r}")
    skips = _context(ctx).skips
    for item in items:
        tokens, latent = item.get("speech_token"), item.get("latent")
        if not isinstance(tokens, torch.Tensor) or not isinstance(latent, torch.Tensor):
            raise ValueError(
                "align_lengths: items need speech_token and latent; put load_speech_token and load_latent before it"
            )
        n_tok, n_lat = tokens.shape[-1], latent.shape[-1]
        if abs(n_lat // token_latent_ratio - n_tok) > tolerance:
            skips.skip(
                "token/latent lengths disagree",
                _where(item, "latent_path"),
                f"{n_tok} tokens vs {n_lat} frames at ratio {token_latent_ratio}",
            )
            continue
        n = min(n_lat // token_latent_ratio, n_tok)
        if n == 0:
            skips.skip("no frames left after length alignment", _where(item, "latent_path"))
            continue
        item["speech_token"] = tokens[..., :n]
        item["latent"] = latent[..., : n * token_latent_ratio]
        yield item


def _crop(wav: torch.Tensor, samples: int, rng: random.Random) -> torch.Tensor:
    """A random window of ``samples`` (the whole clip when shorter), copied so the clip can be freed."""
    if wav.shape[-1] <= samples:
        return wav
    start = rng.randint(0, wav.shape[-1] - samples)
    return wav[..., start : start + samples].clone()


def _read_crop(path: str, seconds: float, sample_rate: int, rng: random.Random) -> torch.Tensor:
    """Read only a random ``seconds`` window of a file (all of it when shorter): mono float32 at
    ``sample_rate``. Raises :class:`AudioError` like :func:`speech.audio.load_audio`."""
    if not path or not os.path.isfile(path):
        raise AudioError(path, "file not found")
    try:
        with sf.SoundFile(path) as f:
            want = int(seconds * f.samplerate)
            if f.frames > want:
                f.seek(rng.randint(0, f.frames - want))
            data = f.read(min(want, f.frames), dtype="float32", always_2d=True)
            native = f.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(path, f"cannot decode: {exc}") from None
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite samples")
    wav = resample(torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), native, sample_rate)
    return wav.clamp_(-1.0, 1.0)  # resampling a clipped signal overshoots full scale


def speaker_reference(
    items: Iterable[Item],
    sample_rate: int = 24000,
    min_seconds: float = 2.0,
    max_seconds: float = 6.0,
    lookahead: int = 32,
    per_speaker: int = 8,
    max_speakers: int = 4096,
    ctx: PipelineContext | None = None,
) -> Iterator[Item]:
    """Add ``ref_audio`` ``[S]``: a crop of *another* utterance of the same speaker when one is known,
    else a crop of the item itself (which leaks its content; counted in the log as a fallback).
    ``ref_self_crop`` (bool) says which: :func:`padding` turns it into a batch key, so the share of
    self-cropped references reaches the trainer's log even from dataloader workers.

    The per-speaker view lives in the stream: a window of ``lookahead`` items ahead plus, per
    speaker, up to ``per_speaker`` utterances already seen (least recently seen speakers beyond
    ``max_speakers`` are forgotten). Memory is bounded and no reader touches more of the index than
    its own byte ranges; it works because the index lists each speaker's utterances together
    (``tools/prepare_data.py`` sorts by speaker), so a reader holds neighbours of the same voice.
    Put it before ``shuffle``. Crops are ``U(min_seconds, max_seconds)`` long (the whole clip when
    shorter); only the crop is read from disk.
    """
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"speaker_reference: need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    ctx = _context(ctx)
    rng = ctx.rng("speaker_reference")
    seen: OrderedDict[str, deque] = OrderedDict()  # spk -> recent (utt, wav path), LRU over speakers
    window: deque[Item] = deque()
    bad: set[str] = set()

    def remember(item: Item) -> None:
        spk, wav = item.get("spk"), item.get("wav")
        if not isinstance(spk, str) or not isinstance(wav, str) or not wav:
            return
        pool = seen.pop(spk, None) or deque(maxlen=per_speaker)
        pool.append((item["utt"], item["wav"]))
        seen[spk] = pool
        if len(seen) > max_speakers:
            seen.popitem(last=False)

    def emit(item: Item) -> Item | None:
        spk = item.get("spk")
        candidates = {}
        if spk is not None:  # an item without a speaker can only reference itself
            candidates = {utt: wav for utt, wav in seen.get(spk, ())}
            ahead = {o["utt"]: o["wav"] for o in window if o.get("spk") == spk and isinstance(o.get("wav"), str)}
            candidates.update(ahead)
            candidates.pop(item["utt"], None)
        options = sorted(wav for wav in candidates.values() if wav not in bad)
        rng.shuffle(options)
        seconds = rng.uniform(min_seconds, max_seconds)
        for wav_path in options:
            try:
                item["ref_audio"] = _read_crop(wav_path, seconds, sample_rate, rng)
            except AudioError:
                bad.add(wav_path)
                continue
            ctx.events["reference from another utterance"] += 1
            item["ref_self_crop"] = False
            return item
        loaded = item.get("audio")
        if isinstance(loaded, torch.Tensor) and item.get("sample_rate") == sample_rate and "audio_len" not in item:
            item["ref_audio"] = _crop(loaded, int(seconds * sample_rate), rng)
        else:
            path = _path(item, "wav", ctx.skips)
            if path is None:
                return None
            try:
                item["ref_audio"] = _read_crop(path, seconds, sample_rate, rng)
            except AudioError as exc:
                ctx.skips.skip(f"unreadable audio ({exc.reason.split(':')[0]})", _where(item), exc.reason)
                return None
        ctx.events["reference cut from the item itself"] += 1
        item["ref_self_crop"] = True
        return item

    for item in items:
        spk = item.get("spk")
        if spk is not None and not isinstance(spk, str):
            ctx.skips.skip("speaker id is not a string", _entry(item), f"spk={spk!r}")
            continue
        remember(item)
        window.append(item)
        if len(window) > lookahead:
            out = emit(window.popleft())
            if out is not None:
                yield out
    while window:
        out = emit(window.popleft())
        if out is not None:
            yield out


# What caps an item's length. A processor may carry ``bounds_length``: True, or a predicate over the
# keyword arguments it is configured with. The trainer refuses a pipeline without one (a single
# 10-minute file in a list would otherwise run attention over all of its frames).
filter_items.bounds_length = lambda kw: (  # type: ignore[attr-defined]
    isinstance(kw.get("max_duration", 60.0), (int, float)) and math.isfinite(kw.get("max_duration", 60.0))
)
random_crop.bounds_length = True  # type: ignore[attr-defined]


def bounds_length(processor: Any) -> bool:
    """Whether a pipeline stage (a function or a ``functools.partial`` of one, as ``!name:`` builds)
    caps the length of the items that pass it (its ``bounds_length`` marker, see above)."""
    func, kwargs = processor, {}
    while isinstance(func, functools.partial):
        kwargs = {**func.keywords, **kwargs}
        func = func.func
    marker = getattr(func, "bounds_length", False)
    return bool(marker(kwargs) if callable(marker) else marker)


def check_length_bound(pipeline: Iterable[Any], name: str = "pipeline") -> None:
    """Raise ``ValueError`` (one line) when no stage of ``pipeline`` bounds item length."""
    if not any(bounds_length(p) for p in pipeline):
        raise ValueError(
            f"{name} has no length bound: add speech.dataset.processors.filter_items (a finite max_duration) "
            "or random_crop, or mark a custom processor with bounds_length = True"
        )


# ---------------------------------------------------------------------------------------------
# Stream stages
# ---------------------------------------------------------------------------------------------


def shuffle(items: Iterable[Item], buffer_size: int = 1000, ctx: PipelineContext | None = None) -> Iterator[Item]:
    """Shuffle through a buffer: each output is a uniform draw from the next ``buffer_size`` items.

    The buffer holds the items with whatever they carry (reference crops, latents): size it for
    memory, per dataloader worker.
    """
    rng = _context(ctx).rng("shuffle")
    buffer: list[Item] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def sort(
    items: Iterable[Item], buffer_size: int = 500, key: str = "speech_token", reverse: bool = False
) -> Iterator[Item]:
    """Sort each run of ``buffer_size`` items by the length of ``key``, so batches pad little."""
    buffer: list[Item] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            buffer.sort(key=lambda x: item_length(x, key), reverse=reverse)
            yield from buffer
            buffer = []
    buffer.sort(key=lambda x: item_length(x, key), reverse=reverse)
    yield from buffer


def batch(
    items: Iterable[Item],
    batch_type: str = "dynamic",
    max_frames_in_batch: int = 12000,
    batch_size: int = 16,
    frame_key: str | Sequence[str] = "speech_token",
    max_batch_size: int | None = None,
    ctx: PipelineContext | None = None,
) -> Iterator[list[Item]]:
    """Group items into lists: ``static`` by count, ``dynamic`` by a budget of *padded* frames.

    Dynamic: a batch of B items costs ``B · Σ_k max_len(k)`` frames over the ``frame_key`` key(s)
    (what the padded tensors hold), kept ``<= max_frames_in_batch``; an item alone over the budget
    is skipped. ``max_batch_size`` optionally caps the item count too.
    """
    if batch_type == "static":
        if batch_size < 1:
            raise ValueError(f"batch: batch_size must be >= 1, got {batch_size}")
        buf: list[Item] = []
        for item in items:
            buf.append(item)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf:
            yield buf
        return
    if batch_type != "dynamic":
        raise ValueError(f"batch: batch_type must be 'dynamic' or 'static', got {batch_type!r}")
    keys = [frame_key] if isinstance(frame_key, str) else list(frame_key)
    skips = _context(ctx).skips
    buf, longest = [], [0] * len(keys)
    for item in items:
        lengths = _lengths(item, keys)
        if sum(lengths) > max_frames_in_batch:
            skips.skip(
                "longer than max_frames_in_batch", _where(item), f"{sum(lengths)} > {max_frames_in_batch} frames"
            )
            continue
        grown = [max(a, b) for a, b in zip(longest, lengths, strict=False)]
        full = max_batch_size is not None and len(buf) >= max_batch_size
        if buf and (full or (len(buf) + 1) * sum(grown) > max_frames_in_batch):
            yield buf
            buf, grown = [], lengths
        buf.append(item)
        longest = grown
    if buf:
        yield buf


def _pad_1d(tensors: list[torch.Tensor]) -> torch.Tensor:
    return pad_sequence(tensors, batch_first=True)


def padding(batches: Iterable[list[Item]]) -> Iterator[dict[str, Any]]:
    """Lists of items → batch dicts: ``utt``/``spk`` lists and, for each key of :data:`PAD_KEYS` the
    items carry, the zero-padded tensor and its int64 ``*_len``; ``ref_self_crop`` ``[B]`` bool when
    the items carry that flag (docs/contracts.md)."""
    for items in batches:
        out: dict[str, Any] = {"utt": [x["utt"] for x in items], "spk": [x.get("spk", "") for x in items]}
        for key in PAD_KEYS:
            have = sum(isinstance(x.get(key), torch.Tensor) for x in items)
            if have == 0:
                continue
            if have != len(items):
                raise ValueError(
                    f"padding: only {have} of {len(items)} items carry {key!r}; the pipeline is inconsistent"
                )
            tensors = [x[key] for x in items]
            lengths = torch.tensor([item_length(x, key) for x in items], dtype=torch.long)
            if key == "latent":  # [D, T] -> [B, D, T_max]
                out[key] = _pad_1d([t.transpose(0, 1) for t in tensors]).transpose(1, 2).contiguous()
            else:
                out[key] = _pad_1d(tensors)
            out[f"{key}_len"] = lengths
        flags = [x.get("ref_self_crop") for x in items]
        if all(isinstance(f, bool) for f in flags):
            out["ref_self_crop"] = torch.tensor(flags, dtype=torch.bool)
        yield out
