"""Streamed Stage 2 (speech.flow.streaming): latent chunks equal the offline chunked solve of a causal flow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speech.config import ConfigError, load_config
from speech.flow.streaming import StreamingError, check_streamable, stream_latents

REPO = Path(__file__).resolve().parents[2]
N_TOKENS = 33


def _flow(chunk: int, **over):
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs/tiny/flow_stream.yaml", {"chunk_tokens": chunk, **over})
    return cfg["flow"].eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 6561, (1, N_TOKENS), generator=g)
    ref = 0.1 * torch.randn(1, 24000, generator=g)
    return tokens, dict(ref_audio=ref, ref_audio_len=torch.tensor([24000]))


# 8 and 25 do not divide the 33 tokens; the tiny config predicts data, the full-size ones velocity
@pytest.mark.parametrize("chunk,prediction", [(3, "data"), (8, "data"), (25, "data"), (8, "velocity")])
def test_streamed_latents_equal_offline(chunk, prediction):
    flow = _flow(chunk, prediction=prediction)
    assert flow.matching.prediction == prediction
    tokens, spk = _inputs()
    kw = dict(n_steps=3, cfg_w=0.7, seed=4)
    offline, _ = flow.sample(tokens, torch.tensor([N_TOKENS]), streaming=True, **spk, **kw)
    assert flow.estimator.supports_cache
    for cache in (True, False) if chunk == 8 else (True,):  # earlier chunks cached, or recomputed
        chunks = list(stream_latents(flow, tokens[0].tolist(), cache=cache, **spk, **kw))
        assert [c.shape[-1] for c in chunks[:-1]] == [chunk * flow.ratio] * (len(chunks) - 1)
        torch.testing.assert_close(torch.cat(chunks, -1), offline, atol=1e-4, rtol=0)


def test_cached_stream_with_chunks_of_several_model_chunks():
    flow = _flow(3)
    tokens, spk = _inputs()
    kw = dict(n_steps=2, cfg_w=0.7, seed=4, solver="midpoint")
    offline, _ = flow.sample(tokens, torch.tensor([N_TOKENS]), streaming=True, **spk, **kw)
    chunks = list(stream_latents(flow, tokens[0].tolist(), chunk_tokens=9, **spk, **kw))
    assert chunks[0].shape[-1] == 9 * flow.ratio
    torch.testing.assert_close(torch.cat(chunks, -1), offline, atol=1e-4, rtol=0)


def test_streamed_latents_with_a_prompt_equal_offline():
    flow = _flow(8)
    tokens, spk = _inputs()
    prompt = torch.randint(0, 6561, (1, 5), generator=torch.Generator().manual_seed(5))
    p_lat = torch.randn(1, 80, 10, generator=torch.Generator().manual_seed(6))
    kw = dict(n_steps=2, cfg_w=0.7, seed=1)
    offline, _ = flow.sample(
        tokens, torch.tensor([N_TOKENS]), prompt_token=prompt, prompt_token_len=torch.tensor([5]),
        prompt_latent=p_lat, streaming=True, **spk, **kw,
    )
    for cache in (True, False):
        chunks = list(stream_latents(flow, tokens[0].tolist(), prompt_token=prompt[0], prompt_latent=p_lat,
                                     cache=cache, **spk, **kw))
        assert chunks[0].shape[-1] == (8 - 5) * flow.ratio  # the first chunk holds the prompt's end
        torch.testing.assert_close(torch.cat(chunks, -1), offline, atol=1e-4, rtol=0)


def test_streamed_latents_with_pitch_smoothing_equal_offline():
    """The causal pitch smoothing carries its history across chunks: the stream still equals offline
    (a window of 7 frames spans chunks of 16), with and without a prompt, and it changes channel 0 only."""
    tokens, spk = _inputs()
    kw = dict(n_steps=2, cfg_w=0.7, seed=4)
    rough = _flow(8).sample(tokens, torch.tensor([N_TOKENS]), streaming=True, **spk, **kw)[0]
    flow = _flow(8, pitch_smoothing=7)
    offline, _ = flow.sample(tokens, torch.tensor([N_TOKENS]), streaming=True, **spk, **kw)
    torch.testing.assert_close(offline[:, 1:], rough[:, 1:], atol=0, rtol=0)
    assert (offline[0, 0] - rough[0, 0]).abs().max() > 1e-3
    chunks = list(stream_latents(flow, tokens[0].tolist(), **spk, **kw))
    assert len(chunks) == 4  # three chunks of 8 tokens, then the last 9 when the stream ends
    torch.testing.assert_close(torch.cat(chunks, -1), offline, atol=1e-4, rtol=0)
    prompt = torch.randint(0, 6561, (1, 5), generator=torch.Generator().manual_seed(5))
    p_lat = torch.randn(1, 80, 10, generator=torch.Generator().manual_seed(6))
    offline, _ = flow.sample(tokens, torch.tensor([N_TOKENS]), prompt_token=prompt, prompt_token_len=torch.tensor([5]),
                             prompt_latent=p_lat, streaming=True, **spk, **kw)
    chunks = list(stream_latents(flow, tokens[0].tolist(), prompt_token=prompt[0], prompt_latent=p_lat, **spk, **kw))
    torch.testing.assert_close(torch.cat(chunks, -1), offline, atol=1e-4, rtol=0)


def test_a_non_causal_flow_is_refused():
    with pytest.raises(ConfigError, match="needs a causal estimator"):
        load_config(REPO / "configs/tiny/flow.yaml", {"streaming_prob": 0.5})
    torch.manual_seed(0)
    offline_flow = load_config(REPO / "configs/tiny/flow.yaml")["flow"]
    with pytest.raises(StreamingError, match="not causal"):
        check_streamable(offline_flow)
    with pytest.raises(StreamingError, match="multiple"):
        check_streamable(_flow(8), chunk_tokens=12)
