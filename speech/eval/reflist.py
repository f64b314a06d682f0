"""Reference lists: which utterances to score, their reference audio and text.

Two formats, told apart line by line:

- tab-separated ``utt<TAB>wav[<TAB>text[<TAB>prompt_wav]]`` (``#`` comments and blank lines ignored);
- JSON lines with ``utt``, ``wav`` and optional ``text``, ``prompt_wav``, ``spk`` (our dataset index
  lines are valid as they are).

``prompt_wav`` is the audio a zero-shot system was prompted with: speaker similarity compares the
synthesised audio with it when given, else with ``wav``. A relative path resolves against the
list's folder, or against the working directory when only that file exists.
Utterances can also come straight from a corpus folder in the seed layout (:func:`corpus_items`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RefItem", "RefListError", "read_ref_list", "corpus_items"]

log = logging.getLogger(__name__)


class RefListError(ValueError):
    """A reference list or corpus that cannot be used at all."""


@dataclass(frozen=True)
class RefItem:
    """One utterance to score."""

    utt: str
    wav: str
    text: str | None = None
    prompt_wav: str | None = None
    spk: str | None = None


def _resolve(path: str, base: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        return str(p)
    beside = base / p
    return str(beside if beside.exists() or not p.exists() else p)


def _parse(line: str) -> dict:
    if line.startswith("{"):
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("a JSON line must be an object")
        return obj
    cols = line.split("\t")
    if len(cols) < 2 or len(cols) > 4:
        raise ValueError(f"expected 2-4 tab-separated columns, got {len(cols)}")
    return dict(zip(("utt", "wav", "text", "prompt_wav"), cols))


def read_ref_list(path: str | Path) -> list[RefItem]:
    """Items of a reference list; malformed lines and duplicate ids are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise RefListError(f"reference list not found: {path}")
    items: list[RefItem] = []
    seen: set[str] = set()
    bad = 0
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = _parse(line)
            utt, wav = str(obj["utt"]), str(obj["wav"])
            if not utt or not wav:
                raise ValueError("empty utt or wav")
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            log.warning("%s:%d: skipping malformed line (%s)", path, lineno, exc)
            bad += 1
            continue
        if utt in seen:
            log.warning("%s:%d: skipping duplicate utterance id %s", path, lineno, utt)
            bad += 1
            continue
        seen.add(utt)
        prompt = obj.get("prompt_wav") or None
        items.append(
            RefItem(
                utt=utt,
                wav=_resolve(wav, path.parent),
                text=None if obj.get("text") is None else str(obj["text"]),
                prompt_wav=_resolve(prompt, path.parent) if prompt else None,
                spk=obj.get("spk"),
            )
        )
    if not items:
        raise RefListError(f"reference list has no usable line: {path} ({bad} malformed)")
    return items


def corpus_items(corpus_dir: str | Path, split: str | None = None) -> list[RefItem]:
    """Items of a corpus in the seed layout (``wavs/<spk>/<utt>.wav`` + ``.txt``, ``utt2spk``,
    ``splits/<split>.txt``); every utterance of ``utt2spk`` when ``split`` is None."""
    root = Path(corpus_dir)
    utt2spk_path = root / "utt2spk"
    if not utt2spk_path.is_file():
        raise RefListError(f"corpus has no utt2spk: {utt2spk_path}")
    utt2spk = dict(
        line.split(maxsplit=1) for line in utt2spk_path.read_text(encoding="utf-8").splitlines() if line.strip()
    )
    if split is None:
        utts = list(utt2spk)
    else:
        split_path = root / "splits" / f"{split}.txt"
        if not split_path.is_file():
            raise RefListError(f"corpus has no split {split!r}: {split_path}")
        utts = [u.strip() for u in split_path.read_text(encoding="utf-8").splitlines() if u.strip()]
    items = []
    for utt in utts:
        spk = utt2spk.get(utt)
        if spk is None:
            log.warning("%s: utterance %s is not in utt2spk, skipped", root, utt)
            continue
        spk = spk.strip()
        wav = root / "wavs" / spk / f"{utt}.wav"
        txt = wav.with_suffix(".txt")
        text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
        items.append(RefItem(utt=utt, wav=str(wav), text=text, spk=spk))
    if not items:
        raise RefListError(f"corpus {root} has no utterances for split {split!r}")
    return items
