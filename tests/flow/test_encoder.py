"""Token encoder: output length = ratio x tokens, padding-invariance, look-ahead and chunk reach."""

from __future__ import annotations

import pytest
import torch

from speech.flow.encoder import TokenEncoder


def _encoder(ratio, out_dim=7, blocks=1, **kw):
    kw = {
        "dim": 16,
        "token_blocks": blocks,
        "latent_blocks": blocks,
        "heads": 2,
        "ffn_dim": 32,
        "dropout": 0.0,
        "vocab_size": 50,
        **kw,
    }
    return TokenEncoder(out_dim, ratio, **kw).eval()


@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
def test_output_length_is_ratio_times_tokens(ratio):
    enc = _encoder(ratio)
    lengths = torch.tensor([9, 4, 1])
    mu, mask = enc(torch.randint(0, 50, (3, 9)), lengths)
    assert mu.shape == (3, 7, 9 * ratio)
    assert mask.sum(1).tolist() == (lengths * ratio).tolist()
    assert (mu[~mask[:, None, :].expand_as(mu)] == 0).all()


@pytest.mark.parametrize("ratio, fsq_levels", [(2, None), (3, None), (2, [3, 3, 3, 2])])
def test_padded_batch_equals_items_alone(ratio, fsq_levels):
    enc = _encoder(ratio, vocab_size=54, fsq_levels=fsq_levels)
    lengths = [9, 4, 6]
    tokens = torch.randint(0, 54, (3, 9))
    with torch.no_grad():
        mu, _ = enc(tokens, torch.tensor(lengths))
        for b, n in enumerate(lengths):
            alone, _ = enc(tokens[b : b + 1, :n], torch.tensor([n]))
            assert torch.allclose(mu[b : b + 1, :, : n * ratio], alone, atol=1e-5)


def test_look_ahead_reaches_exactly_three_tokens():
    enc = _encoder(2, blocks=0, look_ahead=3)
    tokens = torch.randint(0, 50, (1, 12))
    lengths = torch.tensor([12])
    with torch.no_grad():
        base, _ = enc(tokens, lengths)
        for k, expect in ((3, True), (4, False)):
            changed = tokens.clone()
            changed[0, 2 + k] = (changed[0, 2 + k] + 1) % 50
            out, _ = enc(changed, lengths)
            token2 = slice(4, 6)  # the two latent frames of token 2
            assert (not torch.allclose(out[..., token2], base[..., token2])) == expect


def test_streaming_chunks_do_not_see_the_future():
    enc = _encoder(2, blocks=2, chunk_size=4, look_ahead=3)
    tokens = torch.randint(0, 50, (1, 16))
    lengths = torch.tensor([16])
    changed = tokens.clone()
    changed[0, 4 + 3 :] = (changed[0, 4 + 3 :] + 1) % 50  # beyond chunk 0 + its look-ahead
    with torch.no_grad():
        a, _ = enc(tokens, lengths, streaming=True)
        b, _ = enc(changed, lengths, streaming=True)
        full_a, _ = enc(tokens, lengths)
        full_b, _ = enc(changed, lengths)
    assert torch.allclose(a[..., :8], b[..., :8], atol=1e-6)  # chunk 0 = tokens 0..3 = frames 0..7
    assert not torch.allclose(full_a[..., :8], full_b[..., :8], atol=1e-4)  # full attention does see it


def test_fsq_digit_embedding_must_span_the_vocabulary():
    enc = _encoder(2, vocab_size=27, fsq_levels=[3, 3, 3])
    assert enc.embed.num_embeddings == 27 and enc.embed.table is None
    with pytest.raises(ValueError, match="give 27 ids, not vocab_size 50"):
        _encoder(2, fsq_levels=[3, 3, 3])


def test_bad_ratio_fails():
    with pytest.raises(ValueError):
        TokenEncoder(8, 0)
    with pytest.raises(ValueError):
        TokenEncoder(8, 1.5)
