"""Text-to-token alignment from the FSQ tokenizer's CTC head: how many speech tokens each text token spans.

The aligned LM layout (:mod:`speech.llm.layout`) puts each text token right before its own speech
tokens, so the LM reads the text locally instead of learning a global alignment from scratch. The
durations come from a CTC forced alignment (Viterbi over the blank-interleaved transcript) of the
tokenizer's own character head, at its token rate; they are then summed over the characters of each
BPE token. Every frame belongs to exactly one character (blank frames to the character before them,
leading blanks to the first), so durations always add up to the utterance's token count.

File format: ``<utt>_align.pt`` beside ``<utt>_fsq.pt``, an int32 tensor ``[len(text)]``: speech tokens
per character of the index's ``text`` (0 for characters the CTC alphabet drops: punctuation).
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ctc_forced_align", "frames_per_target", "char_durations", "token_durations"]


def ctc_forced_align(log_probs: torch.Tensor, targets: Sequence[int], blank: int) -> torch.Tensor | None:
    """The most likely CTC path of ``targets`` through ``log_probs [T, V]``: per frame, the index of the
    target it emits or -1 for blank; ``None`` when ``T`` frames cannot hold the targets (repeats need a blank).
    (torchaudio's ``forced_align`` does this too, but is deprecated and slated for removal.)"""
    t_len, n = log_probs.shape[0], len(targets)
    if n == 0:
        return None
    ext = torch.full((2 * n + 1,), blank, dtype=torch.long)
    ext[1::2] = torch.as_tensor(list(targets), dtype=torch.long)
    repeats = int((ext[1::2][1:] == ext[1::2][:-1]).sum())
    if t_len < n + repeats:
        return None
    lp = log_probs.float()[:, ext]  # [T, S]
    s = ext.shape[0]
    neg = torch.tensor(float("-inf"))
    # a skip over a blank is allowed into a label that differs from the label two states back
    skip_ok = torch.zeros(s, dtype=torch.bool)
    skip_ok[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    score = torch.full((s,), float("-inf"))
    score[:2] = lp[0, :2]
    back = torch.zeros(t_len, s, dtype=torch.long)  # how many states back the best predecessor is
    for t in range(1, t_len):
        stay = score
        step = torch.cat([neg.view(1), score[:-1]])
        skip = torch.where(skip_ok, torch.cat([neg.expand(2), score[:-2]]), neg)
        cand = torch.stack([stay, step, skip])  # [3, S]
        best, back[t] = cand.max(0)
        score = best + lp[t]
    end = s - 1 if s == 1 or score[s - 1] >= score[s - 2] else s - 2
    if not torch.isfinite(score[end]):
        return None
    states = torch.empty(t_len, dtype=torch.long)
    for t in range(t_len - 1, -1, -1):
        states[t] = end
        end -= int(back[t, end])
    return torch.where(states % 2 == 1, (states - 1) // 2, -1)


def frames_per_target(path: torch.Tensor, n_targets: int, group: int = 1) -> torch.Tensor:
    """Frames of each target ``[n_targets]`` (int64), a frame being ``group`` consecutive path steps (the CTC
    head's upsampling): a blank step belongs to the target emitted before it, leading blanks to the first
    target, and a frame to the target of its first step. Sums to ``len(path) // group``."""
    steps = torch.arange(path.shape[0])
    last_emit = torch.cummax(torch.where(path >= 0, steps, 0), 0).values  # the latest emitting step (or 0)
    idx = path[last_emit].clamp_min(0)  # leading blanks (nothing emitted yet) go to target 0
    return torch.bincount(idx[::group][: path.shape[0] // group], minlength=n_targets)


def char_durations(text: str, sources: Sequence[int], frames: torch.Tensor) -> torch.Tensor:
    """Per character of ``text`` (int32 ``[len(text)]``): the frames of the spelled characters it became
    (``sources[k]``: the index in ``text`` of spelled character ``k``)."""
    out = torch.zeros(len(text), dtype=torch.int64)
    out.index_add_(0, torch.as_tensor(list(sources), dtype=torch.long), frames.long())
    return out.to(torch.int32)


def token_durations(char_dur: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Speech tokens per text token ``[L]``, given each text token's first character ``starts`` (sorted):
    token ``k`` owns the characters from its start to the next token's, the first also any before it."""
    first = torch.as_tensor(list(starts), dtype=torch.long)
    owner = (torch.searchsorted(first, torch.arange(char_dur.shape[0]), right=True) - 1).clamp_min(0)
    return torch.zeros(len(first), dtype=torch.long).index_add_(0, owner, char_dur.long())
