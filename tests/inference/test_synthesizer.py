"""speech.inference.Synthesizer on tiny checkpoints: lengths, determinism, batch == alone, one-shot
prompts, and the validation of requests and of model combinations."""
from __future__ import annotations

import pytest
import torch

from dac_vae.checkpoint import load_codec
from speech.inference import InferenceError, Synthesizer, SynthesisOptions, check_compatible, load_model

TEXTS = ["Hello there, how are you today?", "A short one.", "The quick brown fox jumps over the lazy dog."]
FAST = SynthesisOptions(max_len_ratio=4.0, n_steps=4)


def test_output_is_tokens_over_25_hz(synthesizer, tiny_system):
    (r,) = synthesizer.synthesize([synthesizer.prepare("a", TEXTS[0], tiny_system["prompt"])], FAST)
    assert r.n_tokens > 0
    assert r.audio.shape == (r.n_tokens * 960,)  # 2x codec: 2 frames x 480 samples per token = 1/25 s
    assert torch.isfinite(r.audio).all() and r.audio.square().mean().sqrt() > 1e-4


def test_batch_equals_each_item_alone(synthesizer, tiny_system):
    """Different text lengths, prompts and prompt kinds (zero-shot and one-shot) in one batch."""
    prompt_text = tiny_system["prompt"].with_suffix(".txt").read_text().strip()
    utts = [
        synthesizer.prepare("a", TEXTS[0], tiny_system["prompt"]),
        synthesizer.prepare("b", TEXTS[1], tiny_system["prompt2"]),
        synthesizer.prepare("c", TEXTS[2], tiny_system["prompt"], prompt_text=prompt_text),
    ]
    opt = SynthesisOptions(seed=5, max_len_ratio=4.0, n_steps=4)
    batch = synthesizer.synthesize(utts, opt)
    assert [r.utt for r in batch] == ["a", "b", "c"]
    for u, rb in zip(utts, batch):
        (ra,) = synthesizer.synthesize([u], opt)
        assert ra.n_tokens == rb.n_tokens
        torch.testing.assert_close(ra.audio, rb.audio, atol=1e-4, rtol=0)


@pytest.mark.parametrize("llm_key", ["llm", "llm_unistream"])
def test_one_shot_prompt_reaches_the_lm_and_the_flow(tiny_system, monkeypatch, llm_key):
    """Both layouts continue the prompt; an aligned-layout LM also gets its alignment (speech tokens per prompt
    text token, from the speech tokenizer's CTC head), which adds up to the prompt's speech tokens."""
    from speech.inference import Synthesizer

    s = tiny_system
    synth = Synthesizer.from_checkpoints(s[llm_key], s["flow"], s["codec"], speech_tokenizer=s["fsq"], device="cpu")
    assert synth.llm.decode_layout == ("aligned" if llm_key == "llm" else "unistream")
    seen = {}
    generate, sample = synth.llm.generate, synth.flow.sample

    def spy_generate(*args, **kw):
        seen["lm"] = kw["prompt_speech_token"] is not None and kw["prompt_text_token"] is not None
        seen["dur"] = kw.get("prompt_text_token_dur")
        seen["ps_len"] = kw["prompt_speech_token_len"]
        return generate(*args, **kw)

    def spy_sample(*args, **kw):
        seen["flow"] = kw["prompt_latent"] is not None and kw["prompt_token"] is not None
        return sample(*args, **kw)

    monkeypatch.setattr(synth.llm, "generate", spy_generate)
    monkeypatch.setattr(synth.flow, "sample", spy_sample)
    prompt_text = s["prompt"].with_suffix(".txt").read_text().strip()
    u = synth.prepare("a", TEXTS[1], s["prompt"], prompt_text=prompt_text)
    (r,) = synth.synthesize([u], SynthesisOptions(max_len_ratio=4.0, n_steps=2))
    assert r.n_tokens > 0 and seen["lm"] and seen["flow"]
    if llm_key == "llm":
        assert seen["dur"].shape == (1, len(u.prompt_text_token))
        assert (seen["dur"] >= 0).all() and int(seen["dur"].sum()) == int(seen["ps_len"][0]) > 0
    else:
        assert seen["dur"] is None


def test_an_aligned_lm_speaks_from_the_voice_when_the_prompt_does_not_align(synthesizer, tiny_system, monkeypatch,
                                                                             caplog):
    """A transcript far too long for its clip has no CTC alignment: the LM decodes without the prompt (a warning
    says so), the flow still continues it, and a batch with an aligned prompt beside it is unaffected."""
    s = tiny_system
    prompt_text = s["prompt"].with_suffix(".txt").read_text().strip()
    seen = {}
    generate = synthesizer.llm.generate

    def spy_generate(*args, **kw):
        seen["pt_len"], seen["ps_len"] = kw["prompt_text_token_len"], kw["prompt_speech_token_len"]
        return generate(*args, **kw)

    monkeypatch.setattr(synthesizer.llm, "generate", spy_generate)
    bad = synthesizer.prepare("bad", TEXTS[1], s["prompt"], prompt_text=" ".join([prompt_text] * 4))
    good = synthesizer.prepare("good", TEXTS[1], s["prompt"], prompt_text=prompt_text)
    with caplog.at_level("WARNING", logger="speech.inference"):
        out = synthesizer.synthesize([bad, good], FAST)
    assert "bad: the prompt's transcript did not align" in caplog.text
    assert seen["pt_len"].tolist() == [0, len(good.prompt_text_token)] and int(seen["ps_len"][0]) == 0
    (alone,) = synthesizer.synthesize([good], FAST)
    torch.testing.assert_close(out[1].audio, alone.audio, atol=1e-4, rtol=0)


def test_an_aligned_lm_skips_prompts_a_tokenizer_without_ctc_head_cannot_align(synthesizer, tiny_system,
                                                                               monkeypatch, caplog):
    seen = {}
    generate = synthesizer.llm.generate

    def spy_generate(*args, **kw):
        seen["prompt"] = kw["prompt_text_token"]
        return generate(*args, **kw)

    monkeypatch.setattr(synthesizer.llm, "generate", spy_generate)
    monkeypatch.setattr(synthesizer.speech_tokenizer, "chars", None)
    prompt_text = tiny_system["prompt"].with_suffix(".txt").read_text().strip()
    u = synthesizer.prepare("a", TEXTS[1], tiny_system["prompt"], prompt_text=prompt_text)
    with caplog.at_level("WARNING", logger="speech.inference"):
        (r,) = synthesizer.synthesize([u], FAST)
    assert r.n_tokens > 0 and seen["prompt"] is None and "cannot align a prompt's transcript" in caplog.text


def test_run_sorts_by_length_and_keeps_every_item(synthesizer, tiny_system):
    utts = [synthesizer.prepare(str(i), t, tiny_system["prompt"]) for i, t in enumerate(TEXTS)]
    out = list(synthesizer.run(utts, FAST, batch_size=2))
    assert [r.utt for r in out] == ["2", "0", "1"]  # longest text first
    with pytest.raises(InferenceError, match="batch_size"):
        list(synthesizer.run(utts, FAST, batch_size=0))


def test_seed_fixes_the_sample(synthesizer, tiny_system):
    u = synthesizer.prepare("a", TEXTS[1], tiny_system["prompt"])
    opts = [SynthesisOptions(seed=s, max_len_ratio=4.0, n_steps=4) for s in (1, 1, 2)]
    a, b, c = (synthesizer.synthesize([u], o)[0].audio for o in opts)
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.allclose(a, c)


def test_greedy_sampling_option(synthesizer, tiny_system):
    u = synthesizer.prepare("a", TEXTS[1], tiny_system["prompt"])
    opt = SynthesisOptions(sampling="greedy", max_len_ratio=4.0, n_steps=2)
    r1, r2 = (synthesizer.synthesize([u], SynthesisOptions(**{**opt.__dict__, "seed": s}))[0] for s in (0, 9))
    assert r1.n_tokens == r2.n_tokens  # greedy tokens ignore the seed (the flow noise does not)
    with pytest.raises(InferenceError, match="unknown sampling"):
        SynthesisOptions(sampling="beam").sampler(None)


@pytest.mark.parametrize(
    "text, prompt_key, prompt_text, expect",
    [
        ("", "prompt", None, "empty text"),
        (" \n ", "prompt", None, "empty text"),
        (TEXTS[1], "missing", None, "file not found"),
        (TEXTS[1], "prompt_short", None, r"0.10 s, shorter than 0.5 s"),
        (TEXTS[1], "prompt_long", "some words", "cannot be cut while its transcript is given"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(synthesizer, tiny_system, tmp_path, text, prompt_key, prompt_text, expect):
    prompt = tiny_system.get(prompt_key, tmp_path / "missing.wav")
    with pytest.raises(InferenceError, match=expect):
        synthesizer.prepare("x", text, prompt, prompt_text)


def test_long_prompt_is_cut(synthesizer, tiny_system, caplog):
    u = synthesizer.prepare("x", TEXTS[1], tiny_system["prompt_long"])
    assert u.prompt.numel() == 15 * 24000 and "using its first 15 s" in caplog.text


def test_prompt_text_needs_a_speech_tokenizer(synthesizer, tiny_system):
    s = synthesizer
    plain = Synthesizer(s.llm, s.flow, s.codec, s.text_tokenizer, speech_tokenizer=None)
    with pytest.raises(InferenceError, match="needs a speech tokenizer"):
        plain.prepare("x", TEXTS[1], tiny_system["prompt"], prompt_text="some words")
    assert plain.prepare("x", TEXTS[1], tiny_system["prompt"], prompt_text="  ").prompt_text is None


def test_mismatched_models_fail_before_synthesis(synthesizer, tiny_system):
    s = synthesizer
    codec3x = load_codec(tiny_system["codec3x"].parent / "config.yaml", tiny_system["codec3x"])
    with pytest.raises(InferenceError, match=r"80-dim latents at 2 frames per token \(2x\).*64-dim latents at 3 \(3x\)"):
        check_compatible(s.llm, s.flow, codec3x, s.text_tokenizer)

    class BigVocab:
        vocab_size = 10**6

    with pytest.raises(InferenceError, match="text tokenizer has 1000000 ids, the LM embeds 4096"):
        check_compatible(s.llm, s.flow, s.codec, BigVocab())


def test_moved_checkpoint_takes_the_tokenizer_from_the_command_line(tiny_system, tmp_path):
    """A saved config names the BPE by the path training used; elsewhere, --text_tokenizer replaces it."""
    import shutil

    moved = tmp_path / "llm"
    moved.mkdir()
    shutil.copy(tiny_system["llm"], moved / "final.pt")
    text = (tiny_system["llm"].parent / "config.yaml").read_text()
    (moved / "config.yaml").write_text(text.replace(str(tiny_system["bpe"]), "exp/gone/tokenizer.json"))
    with pytest.raises(InferenceError, match=r"tokenizer not found: exp/gone/tokenizer.json \(give --text_tokenizer\)"):
        load_model(moved / "final.pt", "llm")
    bpe = str(tiny_system["bpe"])
    synth = Synthesizer.from_checkpoints(moved / "final.pt", tiny_system["flow"], tiny_system["codec"], text_tokenizer=bpe)
    assert synth.text_tokenizer.path == bpe


def test_cached_speaker_vectors_give_the_same_output(synthesizer, tiny_system):
    """A registered voice's speaker vectors, computed once, stand in for its clip in any batch."""
    import dataclasses

    utts = [synthesizer.prepare(str(i), t, tiny_system[p]) for i, (t, p) in enumerate(zip(TEXTS, ["prompt", "prompt2"]))]
    cached = [dataclasses.replace(u, speaker=synthesizer.speaker_vectors(u.prompt)) for u in utts]
    assert cached[0].speaker[0].ndim == 1
    for a, b in zip(synthesizer.synthesize(utts, FAST), synthesizer.synthesize(cached, FAST)):
        assert a.n_tokens == b.n_tokens
        torch.testing.assert_close(a.audio, b.audio, atol=1e-4, rtol=0)
