"""FSQ tokenizer model: Whisper front end, exact 25 Hz token rate, batch invariance, CTC, overfit."""
from __future__ import annotations

import io
import itertools
import math
from fractions import Fraction

import pytest
import s3tokenizer
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from torchaudio.functional import edit_distance

from speech.audio import load_audio
from speech.config import resolve_config_text
from speech.tokenizer.model import (
    FSQTokenizerModel,
    SpecAugment,
    WhisperLogMel,
    _rotary,
    ctc_greedy_decode,
    utterance_mel_stats,
)
from speech.tokenizer.own import model_config_text

VOCAB = 30


def tiny_model(**kw) -> FSQTokenizerModel:
    cfg = dict(vocab_size=VOCAB, dim=32, heads=2, ffn_dim=64, pre_blocks=1, post_blocks=1, dropout=0.0)
    cfg.update(kw)
    return FSQTokenizerModel(**cfg)


def make_batch(lengths: list[int], target_lengths: list[int], sr: int = 24000) -> dict:
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.3 * torch.randn(n)
    text = torch.zeros(len(lengths), max(target_lengths), dtype=torch.long)
    for i, n in enumerate(target_lengths):
        text[i, :n] = torch.randint(0, VOCAB, (n,))
    return {
        "audio": audio,
        "audio_len": torch.tensor(lengths),
        "text_token": text,
        "text_token_len": torch.tensor(target_lengths),
    }


def test_front_end_reproduces_whisper_log_mel_at_16k(corpus_dir):
    """At 16 kHz our front end is Whisper's (as shipped in s3tokenizer) away from the edges."""
    wav, _ = load_audio(corpus_dir / "wavs/awb/awb_000.wav", 16000)
    ref = s3tokenizer.log_mel_spectrogram(wav)  # [128, n // 160]
    ours, mel_len = WhisperLogMel(16000)(wav[None], torch.tensor([wav.numel()]))
    assert ours.shape[1] == 128 and int(mel_len) == math.ceil(wav.numel() / 160) == ours.shape[-1]
    # Whisper reflects at the edges where we zero-pad (batch invariance): compare interior frames.
    torch.testing.assert_close(ours[0, :, 3 : ref.shape[1] - 3], ref[:, 3:-3], atol=1e-4, rtol=0)


@pytest.mark.parametrize("sr", [24000, 16000])
def test_token_rate_is_exactly_25_hz_for_any_length(sr):
    """n samples -> ceil(n * 25 / sr) tokens, i.e. ceil(duration * 25), from 1 sample upwards."""
    model = tiny_model(sample_rate=sr).eval()
    hop = sr // 100
    lengths = sorted({1, 2, hop - 1, hop, hop + 1, 4 * hop - 1, 4 * hop, 4 * hop + 1, 10 * hop + 3, sr, sr + 1,
                      *torch.randint(1, 3 * sr, (6,)).tolist()})
    audio = torch.randn(len(lengths), max(lengths)) * 0.1
    ids, token_len = model.tokenize(audio, torch.tensor(lengths))
    expected = [math.ceil(Fraction(n, sr) * 25) for n in lengths]
    assert token_len.tolist() == expected
    assert model.token_lengths(torch.tensor(lengths)).tolist() == expected
    assert ids.shape == (len(lengths), math.ceil(Fraction(audio.shape[1], sr) * 25))
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 6561


def test_batched_tokens_equal_one_by_one():
    model = tiny_model().eval()
    lengths = [24000, 7777, 12001, 240]
    batch = make_batch(lengths, [3, 3, 3, 3])
    ids, token_len = model.tokenize(batch["audio"], batch["audio_len"])
    for i, n in enumerate(lengths):
        alone, alone_len = model.tokenize(batch["audio"][i : i + 1, :n], torch.tensor([n]))
        assert int(alone_len) == int(token_len[i])
        assert torch.equal(alone[0], ids[i, : token_len[i]])
        assert not ids[i, token_len[i] :].any()  # padding positions are 0


@pytest.mark.parametrize("upsample", [1, 2])
def test_ctc_loss_matches_a_per_utterance_loop(upsample):
    """The batch CTC value equals the sum of per-utterance NLLs over the number of target units."""
    model = tiny_model(ctc_upsample=upsample).eval()
    lengths, targets = [24000, 9000, 15000], [12, 4, 7]
    batch = make_batch(lengths, targets)
    out = model(batch)
    total = 0.0
    for i, n in enumerate(lengths):
        enc = model.encode(batch["audio"][i : i + 1, :n], torch.tensor([n]))
        codes, _ = model.fsq(enc["z"])
        h = model.post_norm(model.post[0](model.from_code(codes), torch.ones(1, 1, 1, codes.shape[1], dtype=torch.bool),
                                          _rotary(codes.shape[1], 32 // 2, codes.device)))
        # Frame t's head output holds `upsample` consecutive CTC frames.
        logits = model.ctc_head(h)[0].reshape(-1, upsample, VOCAB + 1).reshape(-1, VOCAB + 1)
        y = batch["text_token"][i, : targets[i]]
        total += F.ctc_loss(logits.log_softmax(-1), y, torch.tensor([logits.shape[0]]), torch.tensor([len(y)]),
                            blank=VOCAB, reduction="sum")
    torch.testing.assert_close(out["ctc"], total / sum(targets), rtol=1e-4, atol=1e-5)
    assert out["loss"].item() == pytest.approx(out["ctc"].item())
    assert 0 < out["code_usage"].item() <= 1 and out["code_perplexity"].item() >= 1


def test_infeasible_targets_are_counted_not_fatal():
    model = tiny_model()
    # 0.2 s -> 5 frames; 12 targets cannot fit, and "aa" needs a blank between the two a's.
    batch = make_batch([4800, 24000], [12, 3])
    batch["text_token"][1, :3] = torch.tensor([1, 1, 2])
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["ctc_infeasible"].item() == pytest.approx(0.5)
    batch = make_batch([960 * 3], [2])
    batch["text_token"][0, :2] = 4  # 3 frames hold "x_x" exactly
    assert model(batch)["ctc_infeasible"].item() == 0
    batch["audio_len"] = torch.tensor([960 * 2])
    assert model(batch)["ctc_infeasible"].item() == 1


def test_greedy_decode_matches_a_reference_loop():
    log_probs = torch.randn(3, 20, 5).log_softmax(-1)
    lengths = torch.tensor([20, 11, 0])
    hyps = ctc_greedy_decode(log_probs, lengths, blank=4)
    for b, hyp in enumerate(hyps):
        path = log_probs[b, : lengths[b]].argmax(-1).tolist()
        assert hyp == [k for k, _ in itertools.groupby(path) if k != 4]


def test_error_rate_of_perfect_and_wrong_paths():
    model = tiny_model().eval()
    targets = torch.tensor([[1, 1, 2, 3], [5, 6, 0, 0]])
    target_len = torch.tensor([4, 2])
    path = torch.tensor([[1, 30, 1, 2, 2, 3, 30], [5, 5, 6, 30, 30, 30, 30]])  # blank = 30
    log_probs = F.one_hot(path, VOCAB + 1).float().log_softmax(-1)
    frames = torch.tensor([7, 7])
    assert model._error_rate(log_probs, frames, targets, target_len).item() == 0.0
    path[1, 2] = 7  # "5 6" -> "5 7": one substitution out of 6 reference units
    log_probs = F.one_hot(path, VOCAB + 1).float().log_softmax(-1)
    assert model._error_rate(log_probs, frames, targets, target_len).item() == pytest.approx(1 / 6)


def test_transcribe_agrees_with_the_eval_cer():
    model = tiny_model().eval()
    batch = make_batch([24000, 12000, 30000], [5, 3, 9])
    hyps, _ = model.transcribe(batch["audio"], batch["audio_len"])
    assert any(hyps)  # a random head emits non-blank labels, so the comparison is not vacuous
    refs = [batch["text_token"][i, :n].tolist() for i, n in enumerate(batch["text_token_len"].tolist())]
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    assert model(batch)["cer"].item() == pytest.approx(errors / sum(map(len, refs)))


def test_eval_reports_cer_and_train_does_not_sync():
    model = tiny_model(mel_weight=1.0)
    batch = make_batch([24000, 12000], [5, 3])
    out = model(batch)
    assert {"loss", "ctc", "mel", "code_usage", "code_perplexity", "ctc_infeasible"} <= out.keys()
    assert "cer" not in out
    assert out["loss"].item() == pytest.approx(out["ctc"].item() + out["mel"].item(), rel=1e-5)
    assert all(v.dim() == 0 for v in out.values())
    model.eval()
    cer = model(batch)["cer"]
    assert cer.dim() == 0 and cer.item() > 0  # an untrained model cannot transcribe


def test_gradients_reach_the_front_end_through_fsq():
    model = tiny_model(mel_weight=0.5)
    model(make_batch([24000, 10000], [6, 3]))["loss"].backward()
    for name in ("subsample.conv1.weight", "pre.0.qkv.weight", "to_code.weight", "from_code.weight", "mel_head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_utterance_mel_stats_match_a_per_item_loop():
    mel = torch.randn(3, 5, 9) * 2 + 1
    mel_len = torch.tensor([9, 4, 1])
    stats = utterance_mel_stats(mel, mel_len)
    for b, n in enumerate(mel_len.tolist()):
        frames = mel[b, :, :n]
        expected = torch.cat([frames.mean(-1), frames.std(-1, unbiased=False).clamp_min(1e-4)])
        assert torch.allclose(stats[b], expected, atol=1e-5), b


def test_mel_voice_feeds_only_the_mel_head():
    """The voice vector changes the mel loss, never the tokens or the CTC path; it gets gradients."""
    torch.manual_seed(0)
    plain = tiny_model(mel_weight=1.0).eval()
    torch.manual_seed(0)
    voiced = tiny_model(mel_weight=1.0, mel_voice=True).eval()
    assert voiced.mel_voice is not None and tiny_model(mel_voice=True).mel_voice is None  # no mel head, no vector
    missing = voiced.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["mel_voice.weight", "mel_voice.bias"]
    batch = make_batch([24000, 9000], [5, 3])
    a, b = plain(batch), voiced(batch)
    assert torch.equal(a["ctc"], b["ctc"]) and torch.equal(a["cer"], b["cer"])
    assert not torch.allclose(a["mel"], b["mel"])
    assert torch.equal(plain.tokenize(batch["audio"], batch["audio_len"])[0],
                       voiced.tokenize(batch["audio"], batch["audio_len"])[0])
    voiced.train()(batch)["loss"].backward()
    assert voiced.mel_voice.weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_and_backward():
    model = tiny_model(mel_weight=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch([12000, 6000], [4, 2]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["ctc"].dtype == torch.float32


def test_spec_augment_only_in_training_and_only_masks():
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=0.2)
    x = torch.randn(4, 128, 50) + 5
    lengths = torch.tensor([50, 30, 10, 1])
    y = aug(x, lengths)
    changed = y != x
    assert (y[changed] == 0).all() and changed.any()
    # Every change belongs to a whole masked band (row) or a whole masked span (column)...
    rows, cols = changed.all(dim=2), changed.all(dim=1)
    assert torch.equal(changed, rows[:, :, None] | cols[:, None, :])
    # ...and time spans stay inside each item's valid frames.
    for b, n in enumerate(lengths.tolist()):
        assert not cols[b, n:].any()
    assert torch.equal(aug.eval()(x, lengths), x)


def test_bad_settings_fail_fast():
    with pytest.raises(ValueError, match="multiple of 100"):
        tiny_model(sample_rate=22050)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_model(vocab_size=0)


@pytest.mark.slow
def test_ctc_loss_falls_when_overfitting_two_utterances(corpus_dir):
    """A tiny model memorises two real utterances (character targets): CTC loss drops by > 3x."""
    texts, wavs = [], []
    for utt in ("kal16_000", "slt_001"):  # "Good morning." / "Thank you!"
        spk = utt.rsplit("_", 1)[0]
        wavs.append(load_audio(corpus_dir / f"wavs/{spk}/{utt}.wav", 24000)[0])
        texts.append((corpus_dir / f"wavs/{spk}/{utt}.txt").read_text().strip().lower())
    chars = sorted(set("".join(texts)))
    batch = {
        "audio": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
        "audio_len": torch.tensor([w.numel() for w in wavs]),
        "text_token": torch.nn.utils.rnn.pad_sequence(
            [torch.tensor([chars.index(c) for c in t]) for t in texts], batch_first=True),
        "text_token_len": torch.tensor([len(t) for t in texts]),
    }
    model = FSQTokenizerModel(vocab_size=len(chars), dim=64, heads=2, ffn_dim=128, pre_blocks=1, post_blocks=1,
                              dropout=0.0, ctc_upsample=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first / 3, (first, last)


def test_text_ids_beyond_the_vocabulary_fail_fast_with_one_line():
    model = tiny_model()
    batch = make_batch([24000], [3])
    batch["text_token"][0, 1] = VOCAB
    with pytest.raises(ValueError, match="vocab_size"):
        model(batch)


@pytest.mark.parametrize("config", ["configs/tiny/fsq.yaml", "configs/fsq.yaml"])
def test_configs_build_the_model_with_the_char_vocabulary(repo_root, config):
    tree = load_hyperpyyaml(io.StringIO(model_config_text(resolve_config_text(repo_root / config))))
    model = tree["fsq"]
    assert isinstance(model, FSQTokenizerModel)
    assert model.vocab_size == tree["text_tokenizer"].vocab_size and model.codebook_size == 6561
    assert model.sample_rate == 24000 and model.token_rate == 25


def test_spec_augment_touches_training_forward_only_never_tokenize():
    model = tiny_model(spec_augment=SpecAugment(freq_masks=4, freq_width=60, time_masks=4, time_width=0.3))
    batch = make_batch([24000, 16000], [4, 4])
    train_ids, _ = model.train().tokenize(batch["audio"], batch["audio_len"])
    eval_ids, _ = model.eval().tokenize(batch["audio"], batch["audio_len"])
    assert torch.equal(train_ids, eval_ids)
    model.train()
    torch.manual_seed(1)
    a = model(batch)["ctc"]
    torch.manual_seed(2)
    assert model(batch)["ctc"] != a  # different random masks in training forward
