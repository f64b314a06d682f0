"""Training forward of SpeechLM: the loss counts exactly the speech (+ eos, + fill) targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speech.llm.model import IGNORE_ID

from .conftest import FSQ_LEVELS, SPEECH_VOCAB, make_batch, make_lm

EOS, FILL = SPEECH_VOCAB, SPEECH_VOCAB + 2


def item_reference(model, batch, i: int, bistream: bool, mix=(5, 15)):
    """Logits and targets of item ``i`` alone, unpadded, with the sequence assembled piece by piece."""
    tl, sl, rl = (int(batch[k][i]) for k in ("text_token_len", "speech_token_len", "ref_audio_len"))
    text, speech = batch["text_token"][i, :tl], batch["speech_token"][i, :sl]
    spk = model.spk_proj(model.speaker(batch["ref_audio"][i : i + 1, :rl], torch.tensor([rl])))[0]
    sos, task = model.sos_task_embedding.weight
    temb, semb = model.embed_text(text), model.speech_embedding(speech)
    pieces, targets = [sos, spk], [IGNORE_ID, IGNORE_ID]
    a, b = mix
    ti = si = 0
    while bistream and tl - ti >= a:
        pieces += list(temb[ti : ti + a]) + list(semb[si : si + b])
        targets += [IGNORE_ID] * (a - 1) + speech[si : si + b].tolist() + [FILL]
        ti, si = ti + a, si + b
    pieces += list(temb[ti:]) + [task] + list(semb[si:])
    targets += [IGNORE_ID] * (tl - ti) + speech[si:].tolist() + [EOS]
    hidden = model.backbone.model(inputs_embeds=torch.stack(pieces)[None]).last_hidden_state[0]
    return model.speech_head(hidden), torch.tensor(targets)


def reference_loss(model, batch, bistream, label_smoothing=0.0):
    total, count, correct = 0.0, 0, 0
    for i, bi in enumerate(bistream):
        logits, targets = item_reference(model, batch, i, bi)
        for pos, tgt in enumerate(targets.tolist()):
            if tgt == IGNORE_ID:
                continue
            logp = logits[pos].log_softmax(-1)
            nll = -logp[tgt]
            smooth = -logp.mean()
            total = total + (1 - label_smoothing) * nll + label_smoothing * smooth
            count += 1
            correct += int(logits[pos].argmax() == tgt)
    return total / count, correct / count, count


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
@pytest.mark.parametrize("bistream", [[False, False], [True, False]])
def test_loss_matches_hand_built_reference(bistream, fsq_levels):
    model = make_lm(fsq_levels=fsq_levels)
    batch = make_batch(text_len=[7, 4], speech_len=[40, 9], ref_len=[3000, 2000])
    logits, targets = model.logits_and_targets(batch, torch.tensor(bistream))
    ref_loss, ref_acc, n = reference_loss(model, batch, bistream)
    assert int((targets != IGNORE_ID).sum()) == n == (40 + 1) + (9 + 1) + (1 if bistream[0] else 0)
    flat = logits.flatten(0, 1)
    loss = F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_ID)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    # forward() with the same layout gives the same figures (bistream forced through the probability).
    model.bistream_prob = 1.0 if bistream[0] else 0.0
    out = model(batch)  # item 2 (4 text, 9 speech) is never bistream-eligible: 9 * 5 < 4 * 15
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-5, atol=1e-5)
    assert out["acc"].item() == pytest.approx(ref_acc)


def test_label_smoothing_matches_reference():
    model = make_lm(label_smoothing=0.1, bistream_prob=0.0)
    batch = make_batch(text_len=[5, 3], speech_len=[12, 20], ref_len=[2500, 4000])
    ref_loss, _, _ = reference_loss(model, batch, [False, False], label_smoothing=0.1)
    torch.testing.assert_close(model(batch)["loss"], ref_loss, rtol=1e-5, atol=1e-5)


def test_padding_content_and_extra_padding_do_not_matter():
    model = make_lm(bistream_prob=0.0)
    batch = make_batch(text_len=[6, 3], speech_len=[30, 11], ref_len=[3000, 1700], garbage=False)
    base = model(batch)["loss"]
    noisy = make_batch(text_len=[6, 3], speech_len=[30, 11], ref_len=[3000, 1700], seed=7)
    for key in ("text_token", "speech_token", "ref_audio"):
        length = batch[key + "_len"]
        mask = torch.arange(batch[key].shape[1])[None] < length[:, None]
        noisy[key] = torch.where(mask, batch[key], noisy[key])
        pad = torch.zeros(2, 5, dtype=noisy[key].dtype) if key != "ref_audio" else torch.randn(2, 700)
        noisy[key] = torch.cat([noisy[key], pad], dim=1)
    torch.testing.assert_close(model(noisy)["loss"], base, rtol=1e-5, atol=1e-6)


def test_bistream_only_where_ratio_allows():
    model = make_lm(bistream_prob=1.0)
    batch = make_batch(text_len=[5, 5], speech_len=[15, 14], ref_len=[2000, 2000])
    _, targets = model.logits_and_targets(batch)
    assert (targets[0] == FILL).sum() == 1 and (targets[1] == FILL).sum() == 0
    model.bistream_prob = 0.0
    _, targets = model.logits_and_targets(batch)
    assert not (targets == FILL).any()


@pytest.mark.parametrize("fsq_levels", [None, FSQ_LEVELS])
def test_backward_reaches_every_trained_part_and_never_the_text_head(fsq_levels):
    model = make_lm(fsq_levels=fsq_levels).train()
    model.backbone.lm_head.register_forward_hook(lambda *a: pytest.fail("text-vocabulary head was evaluated"))
    batch = make_batch(text_len=[7, 4], speech_len=[40, 9], ref_len=[3000, 2000])
    model(batch)["loss"].backward()
    speech = ("speech_embedding.weight", "speech_head.weight")
    if fsq_levels:  # digit rows in and out (eos and fill are targets, never inputs)
        speech = ("speech_embedding.digits.weight", "speech_head.digits.digits.weight", "speech_head.linear.weight")
    for name in (
        "speaker.stem.weight",
        "spk_proj.weight",
        *speech,
        "sos_task_embedding.weight",
        "backbone.model.layers.0.self_attn.q_proj.weight",
        "backbone.model.embed_tokens.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_fsq_levels_must_spell_the_speech_vocabulary():
    from speech.config import ConfigError

    with pytest.raises(ConfigError, match="give 27 ids, not speech_token_size 50"):
        make_lm(fsq_levels=[3, 3, 3])


def test_bf16_autocast_forward_backward():
    model = make_lm().train()
    batch = make_batch(text_len=[7, 4], speech_len=[40, 9], ref_len=[3000, 2000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(model.speech_head.weight.grad).all()


def test_training_reduces_loss_on_a_fixed_batch():
    model = make_lm(bistream_prob=0.5).train()
    batch = make_batch(text_len=[7, 4, 6], speech_len=[40, 9, 25], ref_len=[3000, 2000, 2500])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.5 * first and out["acc"].item() > 0.5


def test_every_trainable_parameter_gets_a_gradient_with_an_untied_backbone():
    """DDP without find_unused_parameters needs this: the untied text head is frozen, all else is used."""
    from speech.llm import SpeakerExtractor, SpeechLM, build_qwen2

    from .conftest import tiny_backbone_config

    speaker = SpeakerExtractor(
        sample_rate=16000,
        n_fft=256,
        hop_length=64,
        n_mels=20,
        channels=16,
        conv_layers=1,
        attention_layers=1,
        heads=2,
        ffn_dim=32,
        dim=12,
    )
    model = SpeechLM(
        build_qwen2(config=tiny_backbone_config(tie_word_embeddings=False)), speaker, speech_token_size=SPEECH_VOCAB
    ).train()
    assert not model.backbone.lm_head.weight.requires_grad
    assert model.backbone.model.embed_tokens.weight.requires_grad
    model(make_batch(text_len=[7, 4], speech_len=[40, 9], ref_len=[3000, 2000]))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
