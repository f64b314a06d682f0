"""Sequence layouts of the Stage 1 LM, computed as gather indices (no per-item Python loop, no host sync).

Every item's input is a reordering of the same pieces, so a layout is an index into a *pool*
laid out per batch as::

    pool    = [sos, spk, text_0 .. text_{Lmax-1}, task, speech_0 .. speech_{Tmax-1}]   (3 + Lmax + Tmax)
    targets = [speech_0 .. speech_{Tmax-1}, eos, fill, ignore]                          (Tmax + 3)

*Unistream* (offline text)::

    input   sos spk t0 .. t(L-1) task s0 .. s(T-1)
    target   -   -   -  ..   -    s0   s1 .. eos

*Bistream* (streaming text, CosyVoice 2): chunks of ``a`` text tokens followed by ``b`` speech
tokens while a full text chunk remains; the last speech token of a chunk predicts ``fill``
("feed me more text"); then the remaining text, ``task`` and the remaining speech::

    sos spk [t0..t4 s0..s14] [t5..t9 s15..s29] .. t_rest task s_rest     (a=5, b=15)

Both layouts have the same length ``3 + L + T`` per item; only the order and targets differ, and
unistream is bistream with zero chunks, so one formula serves both.

*Aligned* (each text token right before its own ``d_j`` speech tokens, from a forced alignment,
:mod:`speech.tokenizer.align`): the last input of a token's chunk predicts ``fill`` ("the next text
token, please"), or ``eos`` after the last token; a token with no speech predicts that at once::

    input   sos spk t0 s0 s1 t1 s2 .. t(L-1) .. s(T-1)
    target   -  s0 s1 fill s2 ..            ..   eos

It is ``2 + L + T`` long (no ``task``) and fits the same padded width. The LM reads the text locally,
as it speaks, instead of learning to find its place in the whole text (ELLA-V's interleaving; here
the LM itself decides when to move on, so decoding needs no durations).
"""

from __future__ import annotations

import torch

__all__ = [
    "Layout", "aligned_allowed", "bistream_allowed", "build_aligned_layout", "build_layout", "merge_layouts",
]


class Layout:
    """Gather indices of one batch: ``src [B, S]`` into the pool, ``tgt [B, S]`` into the target pool, ``valid [B, S]``."""

    def __init__(self, src: torch.Tensor, tgt: torch.Tensor, valid: torch.Tensor):
        self.src, self.tgt, self.valid = src, tgt, valid


def bistream_allowed(text_len: torch.Tensor, speech_len: torch.Tensor, mix_ratio: tuple[int, int]) -> torch.Tensor:
    """Items with at least ``b / a`` speech tokens per text token, so every full text chunk gets ``b`` speech tokens."""
    a, b = mix_ratio
    return speech_len * a >= text_len * b


def build_layout(
    text_len: torch.Tensor,
    speech_len: torch.Tensor,
    max_text: int,
    max_speech: int,
    bistream: torch.Tensor | None = None,
    mix_ratio: tuple[int, int] = (5, 15),
) -> Layout:
    """Indices for items of ``text_len``/``speech_len`` tokens padded to ``max_text``/``max_speech``.

    ``bistream [B]`` (bool) selects the bistream layout per item; the caller must only set it where
    :func:`bistream_allowed` holds. Positions past an item's length are padding (``valid`` False,
    target ``ignore``), so the sequence length is ``3 + max_text + max_speech`` for every batch.
    """
    a, b = mix_ratio
    device = text_len.device
    seq = 3 + max_text + max_speech
    text_len, speech_len = text_len.long().unsqueeze(1), speech_len.long().unsqueeze(1)  # [B, 1]
    n_chunks = torch.zeros_like(text_len) if bistream is None else bistream.long().unsqueeze(1) * (text_len // a)

    # Pool and target-pool offsets.
    text0, task, speech0 = 2, 2 + max_text, 3 + max_text
    t_speech, t_eos, t_fill, t_ignore = 0, max_speech, max_speech + 1, max_speech + 2

    p = torch.arange(seq, device=device).unsqueeze(0)  # [1, S]
    q = p - 2  # position after sos, spk

    # Chunked part (bistream only): chunk j, offset o inside the a + b chunk.
    j, o = torch.div(q, a + b, rounding_mode="floor"), torch.remainder(q, a + b)
    in_chunks = (q >= 0) & (q < n_chunks * (a + b))
    chunk_src = torch.where(o < a, text0 + j * a + o, speech0 + j * b + (o - a))
    chunk_tgt = torch.where(o < a - 1, t_ignore, torch.where(o == a + b - 1, t_fill, t_speech + j * b + (o - a + 1)))

    # Tail: remaining text, task, remaining speech, eos.
    r = q - n_chunks * (a + b)
    rest_text = text_len - n_chunks * a
    m = r - rest_text  # 0 at task, k for the k-th remaining speech token (1-based)
    done_speech = n_chunks * b
    tail_src = torch.where(m < 0, text0 + n_chunks * a + r, torch.where(m == 0, task, speech0 + done_speech + m - 1))
    tail_tgt = torch.where(
        m < 0,
        t_ignore,
        torch.where(
            done_speech + m < speech_len,
            t_speech + done_speech + m,
            torch.where(done_speech + m == speech_len, t_eos, t_ignore),
        ),
    )

    valid = p < 3 + text_len + speech_len
    src = torch.where(q < 0, p, torch.where(in_chunks, chunk_src, tail_src))
    tgt = torch.where(q < 0, t_ignore, torch.where(in_chunks, chunk_tgt, tail_tgt))
    src = torch.where(valid, src, 0)
    tgt = torch.where(valid, tgt, t_ignore)
    return Layout(src, tgt, valid)


def aligned_allowed(text_len: torch.Tensor, speech_len: torch.Tensor, text_dur: torch.Tensor) -> torch.Tensor:
    """Items whose per-text-token durations ``text_dur [B, Lmax]`` are non-negative and add up to their
    speech length."""
    mask = torch.arange(text_dur.shape[1], device=text_dur.device).unsqueeze(0) < text_len.unsqueeze(1)
    dur = text_dur.long().masked_fill(~mask, 0)
    return (dur.sum(1) == speech_len) & ((dur >= 0) | ~mask).all(1)


def build_aligned_layout(
    text_len: torch.Tensor, speech_len: torch.Tensor, text_dur: torch.Tensor, max_text: int, max_speech: int
) -> Layout:
    """Indices of the aligned layout (module docstring) for items whose ``text_dur`` passes :func:`aligned_allowed`."""
    device = text_len.device
    seq = 3 + max_text + max_speech
    text0, speech0 = 2, 3 + max_text
    t_speech, t_eos, t_fill, t_ignore = 0, max_speech, max_speech + 1, max_speech + 2
    text_len, speech_len = text_len.long().unsqueeze(1), speech_len.long().unsqueeze(1)  # [B, 1]
    j_all = torch.arange(max_text, device=device).unsqueeze(0)  # [1, Lmax]
    dur = text_dur.long().masked_fill(j_all >= text_len, 0)
    before = dur.cumsum(1) - dur  # speech tokens before text token j
    start = (j_all + before).masked_fill(j_all >= text_len, seq)  # its position after sos, spk (increasing)

    p = torch.arange(seq, device=device).unsqueeze(0).expand(text_len.shape[0], -1)
    q = p - 2
    j = (torch.searchsorted(start, q.clamp_min(0).contiguous(), right=True) - 1).clamp(0, max_text - 1)
    o = q - start.gather(1, j)  # 0 at text token j, k at its k-th speech token
    d_j, c_j = dur.gather(1, j), before.gather(1, j)
    src = torch.where(o == 0, text0 + j, speech0 + c_j + o - 1)
    tgt = torch.where(o < d_j, t_speech + c_j + o, torch.where(j == text_len - 1, t_eos, t_fill))

    valid = q < text_len + speech_len
    src = torch.where(q < 0, p, src)
    tgt = torch.where(q < 0, t_ignore, tgt)
    return Layout(torch.where(valid, src, 0), torch.where(valid, tgt, t_ignore), valid)


def merge_layouts(choose: torch.Tensor, first: Layout, second: Layout) -> Layout:
    """Per item, ``first`` where ``choose [B]`` holds, else ``second`` (same batch, same width)."""
    c = choose.unsqueeze(1)
    return Layout(
        torch.where(c, first.src, second.src),
        torch.where(c, first.tgt, second.tgt),
        torch.where(c, first.valid, second.valid),
    )
