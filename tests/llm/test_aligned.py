"""The aligned layout (each text token before its own speech tokens): layout vs a slow per-item
reference, and decoding vs the training forward, KV cache vs recomputation, batch vs one by one."""

from __future__ import annotations

import random

import pytest
import torch

from speech.llm.layout import aligned_allowed, build_aligned_layout, build_layout, merge_layouts
from speech.llm.sampling import GreedySampler, RasSampler, RowRandom

from .conftest import FSQ_LEVELS, SPEECH_VOCAB, make_batch, make_lm

SOS, SPK, TASK, EOS, FILL, IGN = "sos", "spk", "task", "eos", "fill", "-"
EOS_ID, FILL_ID = SPEECH_VOCAB, SPEECH_VOCAB + 2


def reference_item(durations: list[int]):
    """One item's aligned layout, token by token, as the module docstring describes it."""
    inp, tgt, k = [SOS, SPK], [IGN], 0
    for j, d in enumerate(durations):
        inp.append(f"t{j}")
        for _ in range(d):
            tgt.append(f"s{k}")
            inp.append(f"s{k}")
            k += 1
        tgt.append(EOS if j == len(durations) - 1 else FILL)
    return inp, tgt


def test_known_example():
    lay = build_aligned_layout(torch.tensor([3]), torch.tensor([4]), torch.tensor([[2, 0, 2]]), 3, 4)
    pool = [SOS, SPK, "t0", "t1", "t2", TASK, "s0", "s1", "s2", "s3"]
    tpool = ["s0", "s1", "s2", "s3", EOS, FILL, IGN]
    n = int(lay.valid[0].sum())
    assert [pool[i] for i in lay.src[0, :n]] == [SOS, SPK, "t0", "s0", "s1", "t1", "t2", "s2", "s3"]
    assert [tpool[i] for i in lay.tgt[0, :n]] == [IGN, IGN, "s0", "s1", FILL, FILL, "s2", "s3", EOS]
    assert n == 2 + 3 + 4 and lay.src.shape == (1, 3 + 3 + 4)


def test_batched_layout_matches_per_item_reference():
    rng = random.Random(0)
    items = []
    for _ in range(40):
        tl = rng.randint(1, 12)
        items.append([rng.choice([0, 0, 1, 2, 3, 7]) for _ in range(tl)])
    max_t = max(len(d) for d in items) + 1
    max_s = max(sum(d) for d in items) + 2
    text_len = torch.tensor([len(d) for d in items])
    speech_len = torch.tensor([sum(d) for d in items])
    dur = torch.tensor([d + [5] * (max_t - len(d)) for d in items])  # padding durations must not matter
    assert aligned_allowed(text_len, speech_len, dur).all()
    lay = build_aligned_layout(text_len, speech_len, dur, max_t, max_s)
    pool = [SOS, SPK] + [f"t{i}" for i in range(max_t)] + [TASK] + [f"s{i}" for i in range(max_s)]
    tpool = [f"s{i}" for i in range(max_s)] + [EOS, FILL, IGN]
    for row, d in enumerate(items):
        ref_in, ref_tgt = reference_item(d)
        n = len(ref_in)
        assert int(lay.valid[row].sum()) == n and bool(lay.valid[row, :n].all())
        assert [pool[i] for i in lay.src[row, :n]] == ref_in
        assert [tpool[i] for i in lay.tgt[row, :n]] == [IGN] + ref_tgt
        assert all(tpool[i] == IGN for i in lay.tgt[row, n:])


def test_allowed_needs_durations_that_add_up():
    text_len, speech_len = torch.tensor([2, 2, 2, 1]), torch.tensor([3, 3, 3, 0])
    dur = torch.tensor([[1, 2], [1, 1], [-1, 4], [0, 9]])
    assert aligned_allowed(text_len, speech_len, dur).tolist() == [True, False, False, True]


def test_merge_picks_per_item():
    tl, sl = torch.tensor([2, 2]), torch.tensor([3, 3])
    uni = build_layout(tl, sl, 2, 3)
    al = build_aligned_layout(tl, sl, torch.tensor([[1, 2], [2, 1]]), 2, 3)
    m = merge_layouts(torch.tensor([True, False]), al, uni)
    assert torch.equal(m.src[0], al.src[0]) and torch.equal(m.src[1], uni.src[1])
    assert torch.equal(m.tgt[0], al.tgt[0]) and torch.equal(m.valid[1], uni.valid[1])


def aligned_inputs(seed: int = 5):
    batch = make_batch(text_len=[4, 2, 3], speech_len=[1, 1, 1], ref_len=[3000, 1800, 2400], seed=seed)
    return {k: batch[k] for k in ("text_token", "text_token_len", "ref_audio", "ref_audio_len")}


def one(inputs: dict, i: int) -> dict:
    out = {}
    for key in ("text_token", "ref_audio"):
        n = int(inputs[key + "_len"][i])
        out[key], out[key + "_len"] = inputs[key][i : i + 1, :n], inputs[key + "_len"][i : i + 1]
    return out


class Recorder(RasSampler):
    """The RAS sampler, recording the log-probabilities it is given."""

    def __init__(self):
        super().__init__(top_k=5, top_p=0.9, win_size=4)
        self.seen, self.ids = [], []

    def __call__(self, logp, history, generator=None):
        ids = super().__call__(logp, history, generator)
        self.seen.append(logp.clone())
        self.ids.append(ids.clone())
        return ids


def fill_favoured(model, bias: float = 4.0):
    """Raise fill's logit, so a random model moves through its text within a few ids per token."""
    with torch.no_grad():
        head = model.speech_head.linear if hasattr(model.speech_head, "linear") else model.speech_head
        head.bias[FILL_ID] += bias
    return model


# prompts for aligned_inputs' three items: (text ids, speech tokens per text id, speech ids); the second has none
PROMPTS = [([7, 8, 9], [2, 0, 3], [11, 12, 13, 14, 15]), ([], [], []), ([5, 6], [1, 4], [21, 22, 23, 24, 25])]


def prompt_kwargs(prompts=PROMPTS) -> dict:
    def padded(rows):
        width = max(len(r) for r in rows)
        return torch.tensor([list(r) + [0] * (width - len(r)) for r in rows]), torch.tensor([len(r) for r in rows])

    pt, pt_len = padded([p[0] for p in prompts])
    dur, _ = padded([p[1] for p in prompts])
    ps, ps_len = padded([p[2] for p in prompts])
    return {"prompt_text_token": pt, "prompt_text_token_len": pt_len, "prompt_text_token_dur": dur,
            "prompt_speech_token": ps, "prompt_speech_token_len": ps_len}


def check_against_training_forward(model, inputs, rec, tokens, lengths, max_ratio, prompts=None):
    """Each decoding step of item ``i`` sees what the aligned training forward sees at that position: the
    sampled ids, cut into chunks at each fill, are teacher-forced with those durations (after the prompt's
    text, durations and speech ids, when there is one), and the log-probabilities match."""
    ids = torch.stack(rec.ids, 1)  # [B, steps]
    for i in range(ids.shape[0]):
        x = one(inputs, i)
        n_text, row = int(x["text_token_len"][0]), ids[i].tolist()
        p_text, p_dur, p_speech = prompts[i] if prompts else ([], [], [])
        end, out = 0, 0
        while end < len(row) and row[end] != EOS_ID and out < max_ratio * n_text:  # eos, or max_ratio ids out
            out += row[end] < SPEECH_VOCAB
            end += 1
        row, dur = row[: end + (end < len(row) and row[end] == EOS_ID)], [0]
        for k in row:
            if k == FILL_ID:
                dur.append(0)
            elif k < SPEECH_VOCAB:
                dur[-1] += 1
        speech = [k for k in row if k < SPEECH_VOCAB]
        assert speech == tokens[i, : int(lengths[i])].tolist()
        assert len(dur) <= n_text and (EOS_ID not in row or len(dur) == n_text)  # eos only after the last token
        dur += [0] * (n_text - len(dur))
        batch = {"ref_audio": x["ref_audio"], "ref_audio_len": x["ref_audio_len"],
                 "text_token": torch.cat([torch.tensor([p_text], dtype=torch.long), x["text_token"]], 1),
                 "text_token_len": torch.tensor([len(p_text) + n_text]),
                 "speech_token": torch.tensor([p_speech + speech]),
                 "speech_token_len": torch.tensor([len(p_speech) + len(speech)]),
                 "text_token_dur": torch.tensor([p_dur + dur])}
        logits, targets = model.logits_and_targets(batch, aligned=torch.tensor([True]))
        first = 2 + len(p_text) + len(p_speech)  # the input position of the text's first token
        for step in range(len(row)):
            expected = logits[0, first + step].float()
            expected[SPEECH_VOCAB + 1] = float("-inf")
            fed = row[:step].count(FILL_ID)
            if fed == n_text - 1:
                expected[FILL_ID] = float("-inf")
                if sum(k < SPEECH_VOCAB for k in row[:step]) < n_text:  # min_len_ratio 1
                    expected[EOS_ID] = float("-inf")
            else:
                expected[EOS_ID] = float("-inf")
            torch.testing.assert_close(rec.seen[step][i], expected.log_softmax(-1), rtol=1e-4, atol=1e-4)
            if EOS_ID in row or step + 1 < len(row):  # the targets are the sampled ids (fill and eos included)
                assert int(targets[0, first + step]) == row[step]


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
def test_decoding_matches_the_training_forward(fsq_levels):
    model = fill_favoured(make_lm(fsq_levels=fsq_levels, decode_layout="aligned"))
    inputs = aligned_inputs()
    rec = Recorder()
    tokens, lengths = model.generate(**inputs, sampler=rec, min_len_ratio=1, max_len_ratio=6,
                                     generator=torch.Generator().manual_seed(3))
    check_against_training_forward(model, inputs, rec, tokens, lengths, 6)


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
def test_prompted_decoding_continues_the_prompt_in_the_training_layout(fsq_levels):
    """A one-shot prompt (its text, alignment and speech ids) is the start of the same aligned sequence: decoding
    after it matches the training forward of prompt + decoded text; an item without a prompt text is as unprompted."""
    model = fill_favoured(make_lm(fsq_levels=fsq_levels, decode_layout="aligned"))
    inputs = aligned_inputs()
    rec = Recorder()
    kw = {"min_len_ratio": 1, "max_len_ratio": 6}
    tokens, lengths = model.generate(**inputs, **prompt_kwargs(), sampler=rec, **kw,
                                     generator=RowRandom(torch.arange(3)))
    check_against_training_forward(model, inputs, rec, tokens, lengths, 6, PROMPTS)
    plain = model.generate(**inputs, sampler=RasSampler(top_k=5, top_p=0.9, win_size=4), **kw,
                           generator=RowRandom(torch.arange(3)))
    assert tokens[1, : int(lengths[1])].tolist() == plain[0][1, : int(plain[1][1])].tolist()


@pytest.mark.parametrize("prompted", [False, True])
def test_kv_cache_batch_and_stream_agree(prompted):
    model = fill_favoured(make_lm(fsq_levels=FSQ_LEVELS, decode_layout="aligned"))
    inputs = aligned_inputs(seed=8)
    seeds = torch.tensor([3, 4, 5])
    kw = {"sampler": RasSampler(top_k=5, win_size=4), "min_len_ratio": 1, "max_len_ratio": 5}
    prompt = prompt_kwargs() if prompted else {}
    cached = model.generate(**inputs, **prompt, **kw, generator=RowRandom(seeds))
    full = model.generate(**inputs, **prompt, **kw, generator=RowRandom(seeds), use_cache=False)
    assert torch.equal(cached[0], full[0]) and torch.equal(cached[1], full[1])
    assert (cached[1] >= inputs["text_token_len"]).all() and (cached[1] <= 5 * inputs["text_token_len"]).all()
    assert (cached[0] < SPEECH_VOCAB).all()
    spk = model.speaker(inputs["ref_audio"], inputs["ref_audio_len"])
    for i in range(3):
        x = one(inputs, i)
        p_text, p_dur, p_speech = (torch.tensor(v, dtype=torch.long) for v in PROMPTS[i])
        one_prompt = {"prompt_text_token": p_text, "prompt_text_token_dur": p_dur, "prompt_speech_token": p_speech}
        one_prompt = one_prompt if prompted and len(p_text) else {}
        batch_of_one = {k: v[None] for k, v in one_prompt.items()}
        if one_prompt:
            batch_of_one.update(prompt_text_token_len=torch.tensor([len(p_text)]),
                                prompt_speech_token_len=torch.tensor([len(p_speech)]))
        alone = model.generate(**x, **batch_of_one, **kw, generator=RowRandom(seeds[i : i + 1]))
        n = int(cached[1][i])
        assert alone[0][0].tolist() == cached[0][i, :n].tolist()
        streamed = list(model.generate_stream(x["text_token"][0], spk[i], generator=RowRandom(seeds[i : i + 1]),
                                              **one_prompt, **kw))
        assert streamed == cached[0][i, :n].tolist()
        # text arriving in pieces (one empty) is read only as the LM asks for it, with the same result
        ids, pulled = x["text_token"][0].tolist(), []

        def pieces():
            for piece in ([ids[0]], [], ids[1:2], ids[2:]):
                pulled.append(len(piece))
                yield piece

        stream = model.generate_bistream(pieces(), spk[i], generator=RowRandom(seeds[i : i + 1]), **one_prompt, **kw)
        first = next(stream)
        assert sum(pulled) <= 2 and len(pulled) < 4  # two text ids (the first, and one ahead) before speech
        assert [first] + list(stream) == cached[0][i, :n].tolist()


def test_aligned_model_refuses_a_prompt_without_a_usable_alignment():
    model = make_lm(decode_layout="aligned")
    inputs, prompt = aligned_inputs(), prompt_kwargs()
    missing = {k: v for k, v in prompt.items() if k != "prompt_text_token_dur"}
    with pytest.raises(ValueError, match="aligned-layout LM continues a prompt only with its alignment"):
        model.generate(**inputs, **missing, sampler=GreedySampler())
    short = {**prompt, "prompt_text_token_dur": prompt["prompt_text_token_dur"] - 1}
    with pytest.raises(ValueError, match="add up to each prompt's speech length"):
        model.generate(**inputs, **short, sampler=GreedySampler())
    with pytest.raises(ValueError, match="must match prompt_text_token"):
        model.generate(**inputs, **{**prompt, "prompt_text_token_dur": prompt["prompt_text_token_dur"][:, :1]},
                       sampler=GreedySampler())
    with pytest.raises(ValueError, match="aligned-layout LM continues a prompt only"):
        list(model.generate_stream(inputs["text_token"][0], torch.zeros(12), prompt_text_token=torch.tensor([1]),
                                   prompt_speech_token=torch.tensor([2])))


def test_training_uses_the_aligned_layout_where_durations_add_up():
    model = make_lm(aligned_prob=1.0, bistream_prob=0.0)
    batch = make_batch(text_len=[3, 2], speech_len=[5, 4], ref_len=[2000, 2000], seed=2)
    batch["text_token_dur"] = torch.tensor([[2, 0, 3], [1, 1, 0]])  # the second does not add up: unistream
    _, targets = model.logits_and_targets(batch)
    speech = batch["speech_token"][0].tolist()
    assert targets[0, 2:9].tolist() == speech[:2] + [FILL_ID, FILL_ID] + speech[2:5] and targets[0, 9] == EOS_ID
    no = torch.tensor([False, False])
    _, uni = model.logits_and_targets(batch, bistream=no, aligned=no)
    assert torch.equal(targets[1], uni[1]) and not torch.equal(targets[0], uni[0])
    out = model(batch)
    assert torch.isfinite(out["loss"]) and 0 <= float(out["acc"]) <= 1


def test_max_chunk_forces_the_next_text_token():
    """A model that never asks for more text still moves on after max_chunk ids, and ends after the last token."""
    model = fill_favoured(make_lm(decode_layout="aligned", max_chunk=3, head_scale=5.0), bias=-1e4)
    with torch.no_grad():  # and never ends by itself
        model.speech_head.bias[EOS_ID] -= 1e4
    inputs = aligned_inputs()
    rec = Recorder()
    tokens, lengths = model.generate(**inputs, sampler=rec, min_len_ratio=0, max_len_ratio=20,
                                     generator=torch.Generator().manual_seed(0))
    assert lengths.tolist() == (3 * inputs["text_token_len"]).tolist()
    ids = torch.stack(rec.ids, 1)
    for i, n_text in enumerate(inputs["text_token_len"].tolist()):
        row = ids[i].tolist()
        row = row[: row.index(EOS_ID) + 1]
        expected = ([0] * 3 + [FILL_ID]) * (n_text - 1) + [0] * 3 + [EOS_ID]
        assert [k if k >= SPEECH_VOCAB else 0 for k in row] == expected


def test_text_in_pieces_stops_at_the_whole_texts_length_bound():
    """A model that talks long hits max_len_ratio before its text has all arrived: the bound is the whole
    text's, as offline, not the part read so far."""
    model = fill_favoured(make_lm(decode_layout="aligned", max_chunk=4, head_scale=5.0), bias=-1e4)
    inputs = aligned_inputs()
    spk = model.speaker(inputs["ref_audio"], inputs["ref_audio_len"])
    x = one(inputs, 0)  # 4 text ids: 4 per id -> 16 without the bound, 8 with it
    kw = {"sampler": GreedySampler(), "min_len_ratio": 0, "max_len_ratio": 2}
    offline, n = model.generate(**x, **kw)
    assert int(n[0]) == 8
    ids = x["text_token"][0].tolist()
    streamed = list(model.generate_bistream(([i] for i in ids), spk[0], **kw))
    assert streamed == offline[0, :8].tolist()
