"""Generation: KV cache vs recomputation, batched vs one-by-one, seeds, eos and length limits, prompts."""

from __future__ import annotations

import pytest
import torch

from speech.llm.sampling import GreedySampler, RasSampler, RowRandom

from .conftest import FSQ_LEVELS, SPEECH_VOCAB, make_batch, make_lm

EOS = SPEECH_VOCAB


def prompted_inputs(seed: int = 11):
    """Three items with different text, reference and prompt lengths (one item without a prompt)."""
    batch = make_batch(text_len=[4, 2, 3], speech_len=[1, 1, 1], ref_len=[3000, 1800, 2400], seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {
        "text_token": batch["text_token"],
        "text_token_len": batch["text_token_len"],
        "ref_audio": batch["ref_audio"],
        "ref_audio_len": batch["ref_audio_len"],
        "prompt_text_token": torch.randint(0, 40, (3, 5), generator=g),
        "prompt_text_token_len": torch.tensor([5, 0, 2]),
        "prompt_speech_token": torch.randint(0, SPEECH_VOCAB, (3, 9), generator=g),
        "prompt_speech_token_len": torch.tensor([9, 0, 4]),
    }


def item(inputs: dict, i: int) -> dict:
    """Item ``i`` alone, cut to its own lengths (no padding at all)."""
    out = {}
    for key in ("text_token", "ref_audio", "prompt_text_token", "prompt_speech_token"):
        n = int(inputs[key + "_len"][i])
        out[key] = inputs[key][i : i + 1, :n]
        out[key + "_len"] = inputs[key + "_len"][i : i + 1]
    return out


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
def test_kv_cache_equals_recomputation_token_for_token(fsq_levels):
    model = make_lm(head_scale=20.0, fsq_levels=fsq_levels)
    inputs = prompted_inputs()
    kw = {"sampler": GreedySampler(), "min_len_ratio": 2, "max_len_ratio": 6}
    cached, cached_len = model.generate(**inputs, **kw, use_cache=True)
    full, full_len = model.generate(**inputs, **kw, use_cache=False)
    assert torch.equal(cached_len, full_len) and torch.equal(cached, full)
    assert len(set(cached[0, : cached_len[0]].tolist())) > 1  # a real sequence, not one id repeated


def test_batched_equals_one_by_one():
    model = make_lm(head_scale=20.0)
    inputs = prompted_inputs()
    kw = {"sampler": GreedySampler(), "min_len_ratio": 1, "max_len_ratio": 6}
    tokens, lengths = model.generate(**inputs, **kw)
    for i in range(3):
        one, one_len = model.generate(**item(inputs, i), **kw)
        assert int(one_len[0]) == int(lengths[i])
        assert torch.equal(one[0, : one_len[0]], tokens[i, : lengths[i]])


def test_sampled_batch_equals_one_by_one_with_row_random():
    """With per-item random draws, RAS sampling (not only greedy) is independent of the batch."""
    model = make_lm()
    inputs = prompted_inputs()
    kw = {"sampler": RasSampler(), "min_len_ratio": 2, "max_len_ratio": 8}
    seeds = torch.tensor([3, 4, 5])
    tokens, lengths = model.generate(**inputs, **kw, generator=RowRandom(seeds))
    for i in range(3):
        one, one_len = model.generate(**item(inputs, i), **kw, generator=RowRandom(seeds[i : i + 1]))
        assert int(one_len[0]) == int(lengths[i])
        assert torch.equal(one[0, : one_len[0]], tokens[i, : lengths[i]])


def test_ras_with_fixed_seed_is_reproducible():
    model = make_lm()
    inputs = prompted_inputs()
    kw = {"sampler": RasSampler(), "min_len_ratio": 2, "max_len_ratio": 8}
    a = model.generate(**inputs, **kw, generator=torch.Generator().manual_seed(7))
    b = model.generate(**inputs, **kw, generator=torch.Generator().manual_seed(7))
    c = model.generate(**inputs, **kw, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]))


def test_stops_at_eos_once_min_length_is_reached():
    model = make_lm()
    with torch.no_grad():
        model.speech_head.bias[EOS] = 50.0  # eos is by far the most likely id at every step
    inputs = prompted_inputs()
    tokens, lengths = model.generate(
        **inputs, sampler=RasSampler(), min_len_ratio=1.5, max_len_ratio=20, generator=torch.Generator().manual_seed(0)
    )
    assert lengths.tolist() == [6, 3, 4]  # floor(1.5 * text length)
    assert tokens.shape == (3, 6)
    assert (tokens[1, 3:] == 0).all() and (tokens[2, 4:] == 0).all()


def test_respects_max_length_and_never_emits_special_ids():
    model = make_lm()
    with torch.no_grad():
        model.speech_head.bias[EOS] = -50.0
        model.speech_head.bias[EOS + 2] = 50.0  # fill would win if it were not forbidden
    inputs = prompted_inputs()
    tokens, lengths = model.generate(
        **inputs, min_len_ratio=2, max_len_ratio=5, generator=torch.Generator().manual_seed(0)
    )
    assert lengths.tolist() == [20, 10, 15]
    assert (tokens < SPEECH_VOCAB).all()


def test_lengths_between_min_and_max_for_a_random_model():
    model = make_lm()
    inputs = prompted_inputs()
    for seed in range(3):
        _, lengths = model.generate(
            **inputs, min_len_ratio=2, max_len_ratio=4, generator=torch.Generator().manual_seed(seed)
        )
        text_len = inputs["text_token_len"]
        assert (lengths >= 2 * text_len).all() and (lengths <= 4 * text_len).all()


class Recorder(GreedySampler):
    """Greedy, keeping the log-probabilities it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, logp, history, generator=None):
        self.seen.append(logp.clone())
        return super().__call__(logp, history, generator)


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
def test_decoding_matches_the_training_forward(fsq_levels):
    """Every decoding step (KV-cached, left-padded batch, prompts) sees what training sees at that position.

    The generated tokens are fed back as teacher-forced speech to the training forward: its
    log-probabilities must equal the ones the sampler received, step by step.
    """
    model = make_lm(fsq_levels=fsq_levels)
    inputs = prompted_inputs()
    rec = Recorder()
    tokens, lengths = model.generate(**inputs, sampler=rec, min_len_ratio=2, max_len_ratio=3)
    assert (lengths >= 2 * inputs["text_token_len"]).all()
    for i in range(3):
        one = item(inputs, i)
        n = int(lengths[i])
        text = torch.cat([one["prompt_text_token"], one["text_token"]], dim=1)
        speech = torch.cat([one["prompt_speech_token"], tokens[i : i + 1, :n]], dim=1)
        batch = {
            "text_token": text,
            "text_token_len": torch.tensor([text.shape[1]]),
            "speech_token": speech,
            "speech_token_len": torch.tensor([speech.shape[1]]),
            "ref_audio": one["ref_audio"],
            "ref_audio_len": one["ref_audio_len"],
        }
        logits, _ = model.logits_and_targets(batch, bistream=torch.tensor([False]))
        first = 2 + text.shape[1] + one["prompt_speech_token"].shape[1]  # position predicting the first new token
        for step in range(n):
            expected = logits[0, first + step].float()
            expected[SPEECH_VOCAB + 1 :] = float("-inf")  # reserved and fill are never generated
            if step < 2 * int(one["text_token_len"][0]):
                expected[EOS] = float("-inf")  # nor eos before the minimum length
            torch.testing.assert_close(rec.seen[step][i], expected.log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_speaker_vector_input_equals_reference_audio():
    model = make_lm(head_scale=20.0)
    inputs = prompted_inputs()
    kw = {"sampler": GreedySampler(), "min_len_ratio": 1, "max_len_ratio": 4}
    a = model.generate(**inputs, **kw)
    vec = model.speaker(inputs.pop("ref_audio"), inputs.pop("ref_audio_len"))
    b = model.generate(**inputs, spk_vector=vec, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_generates_with_a_bf16_model():
    model = make_lm().to(torch.bfloat16)
    inputs = prompted_inputs()
    tokens, lengths = model.generate(
        **inputs, min_len_ratio=1, max_len_ratio=3, generator=torch.Generator().manual_seed(0)
    )
    assert (lengths >= inputs["text_token_len"]).all() and (lengths <= 3 * inputs["text_token_len"]).all()
    assert tokens.dtype == torch.long and (tokens < SPEECH_VOCAB).all()
