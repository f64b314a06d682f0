"""Streamed Stage 2: speech tokens arriving one by one -> latent chunks equal to the offline chunked solve.

With chunk attention (``streaming=True``), a causal estimator and the encoder's look-ahead of
``k`` tokens, the latents of token chunk ``[s, e)`` depend only on tokens ``[0, e + k)`` and on the
noise of frames ``[0, e·ratio)``, which is seeded per frame (:func:`~speech.flow.model.seeded_noise`).
So once ``e + k`` tokens are known (or the token stream has ended), solving the ODE on frames
``[0, e·ratio)`` gives exactly the frames the offline ``FlowModel.sample(..., streaming=True)``
gives there; the frames ``[s·ratio, e·ratio)`` are emitted.

Earlier chunks are the attention (and causal-conv) context of the new one. For a one-level causal
U-Net they are *cached* (:class:`~speech.flow.estimator.ChunkCache`: per solver evaluation and
layer, the keys/values and the last conv inputs), so each frame is solved once, as offline.
Measured on CPU (``bench/stream.py``, 1 thread, 10 steps): tiny flow, 4 s: 0.22 s cached vs 0.38 s
recomputed (one offline solve 0.12 s); 10 s: 0.64 s vs 1.74 s (0.33 s); ref-small, 4 s: 1.00 s vs
1.80 s (0.69 s): recomputation grows with the square of the length. (The rest of the cached
overhead is the token encoder, rerun per chunk.) Other estimators (DiT, multi-level U-Net) recompute.
The token encoder is always rerun on the tokens so far (cheap). All state is local to one
:func:`stream_latents` generator, never on the model, so requests can be interleaved freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from speech.flow.estimator import ChunkCache
from speech.flow.model import fit_length, seeded_noise, smooth_pitch

__all__ = ["StreamingError", "look_ahead_tokens", "check_streamable", "stream_latents"]


class StreamingError(ValueError):
    """A model that cannot stream exactly (non-causal estimator, mismatched chunk)."""


def look_ahead_tokens(flow: nn.Module) -> int:
    """Future tokens one token's ``mu`` depends on (the encoder's look-ahead conv)."""
    la = flow.encoder.look_ahead
    return 0 if la is None else int(la.ahead.kernel_size[0]) - 1


def check_streamable(flow: nn.Module, chunk_tokens: int | None = None) -> int:
    """The chunk (in tokens) to stream with; :class:`StreamingError` if streamed != offline would not hold."""
    model_chunk = int(flow.encoder.chunk_size)
    if not getattr(flow.estimator, "causal", False):
        raise StreamingError(
            f"the flow's {type(flow.estimator).__name__} estimator is not causal: streamed latents would differ "
            "from offline ones (train it with configs/flow_stream.yaml or causal: true)"
        )
    est_chunk = int(getattr(flow.estimator, "chunk_size", 0) or 0)
    if model_chunk <= 0 or est_chunk != model_chunk * flow.ratio:
        raise StreamingError(
            f"the flow's chunk attention is not set up (encoder chunk {model_chunk} tokens, estimator {est_chunk} frames)"
        )
    chunk = model_chunk if chunk_tokens is None else int(chunk_tokens)
    if chunk < 1 or chunk % model_chunk:
        raise StreamingError(f"chunk_tokens {chunk} must be a positive multiple of the flow's chunk {model_chunk}")
    return chunk


@torch.inference_mode()
def stream_latents(
    flow: nn.Module,
    tokens: Iterable[int],
    *,
    spk: torch.Tensor | None = None,
    ref_audio: torch.Tensor | None = None,
    ref_audio_len: torch.Tensor | None = None,
    prompt_token: torch.Tensor | None = None,
    prompt_latent: torch.Tensor | None = None,
    n_steps: int | None = None,
    cfg_w: float | None = None,
    solver: str | None = None,
    seed: int = 0,
    chunk_tokens: int | None = None,
    cache: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Latent chunks ``[1, D, n]`` (raw DAC-VAE ``mu`` space) of one utterance, as ``tokens`` arrive.

    ``tokens``: speech token ids (ints) in order. The speaker comes from ``spk`` ``[1, spk_dim]`` or
    ``ref_audio`` ``[1, S]``; an optional prompt is ``prompt_token`` ``[P]`` with its raw
    ``prompt_latent`` ``[1, D, >= P·ratio]`` (chunks then count from the prompt's first token, as in
    the offline solve). The chunks, concatenated, equal ``flow.sample(..., streaming=True)`` of all
    the tokens (float tolerance). ``cache`` (default: when the estimator supports it) solves only the
    new chunk's frames, reading earlier chunks from a :class:`~speech.flow.estimator.ChunkCache`;
    ``cache=False`` recomputes them (the reference the cache is tested against).
    """
    chunk = check_streamable(flow, chunk_tokens)
    r, ahead = flow.ratio, look_ahead_tokens(flow)
    device = flow.latent_mean.device
    spk_c = flow.speaker_condition(spk, ref_audio, ref_audio_len)
    ids: list[int] = [] if prompt_token is None else [int(t) for t in prompt_token.reshape(-1).tolist()]
    n_prompt = len(ids)
    p_cond = None
    if n_prompt:
        if prompt_latent is None:
            raise ValueError("stream_latents: a prompt needs prompt_latent")
        p_cond = flow.normalise(fit_length(prompt_latent.to(device), n_prompt * r))
    done = n_prompt  # tokens whose frames were emitted (the prompt's never are)
    if cache is None:
        cache = bool(getattr(flow.estimator, "supports_cache", False))
    state = ChunkCache() if cache else None
    solved = 0  # frames in the cache (the prompt's frames are solved with the first chunk)

    def solve(n_known: int, stop: int) -> torch.Tensor:
        nonlocal solved
        tok = torch.tensor([ids[:n_known]], dtype=torch.long, device=device)
        mu, mask = flow.encoder(tok, torch.tensor([n_known], device=device), streaming=True)
        first = solved if state is not None else 0  # frames [first, stop·r) are solved now
        mu, mask = mu[..., first : stop * r], mask[:, first : stop * r]
        cond = torch.zeros_like(mu) if p_cond is None else fit_length(p_cond, stop * r)[..., first:]
        noise = seeded_noise(seed, mu.shape[1], stop * r, device)[None, :, first:]
        extra = {}
        if state is not None:
            state.begin_chunk(first)
            extra["cache"] = state
        x = flow.matching.sample(
            flow.estimator,
            noise,
            mask,
            {"mu": mu, "spk": spk_c, "cond": cond},
            n_steps=n_steps,
            cfg_w=cfg_w,
            solver=solver,
            streaming=True,
            **extra,
        )
        solved = stop * r
        return flow.denormalise(x[..., done * r - first : stop * r - first])

    pitch_history = None  # channel 0 of the frames already emitted, for the causal pitch smoothing

    def emit(n_known: int, stop: int) -> torch.Tensor:
        nonlocal pitch_history
        out, pitch_history = smooth_pitch(solve(n_known, stop), flow.pitch_smoothing, pitch_history)
        return out

    for token in tokens:
        ids.append(int(token))
        end = (done // chunk + 1) * chunk  # the end of the chunk being filled
        while len(ids) >= end + ahead:  # (a long prompt can complete several at once)
            yield emit(end + ahead, end)
            done, end = end, end + chunk
    if len(ids) > done:
        yield emit(len(ids), len(ids))
