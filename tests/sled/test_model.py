"""SledLM: training loss, KV-cached generation, CFG, stop head, batch == alone, prompts, patching."""

from __future__ import annotations

import pytest
import torch

from speech.llm.sampling import RowRandom
from tests.sled.conftest import LATENT_DIM, make_batch, make_sled


@pytest.mark.parametrize("k", [1, 2, 4])
def test_loss_is_finite_trains_every_part_and_ignores_padding(k):
    model = make_sled(patch_size=k, bistream_prob=0.5, mix_ratio=[1, 2])
    batch = make_batch([3, 2], [13, 6], [3000, 2000])
    model.train()
    out = model(batch)
    assert set(out) == {"loss", "energy", "stop", "stop_recall", "stop_precision"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name in ("latent_in", "head", "stop_head", "spk_proj", "sos_task_embedding"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    # eval: fixed draws; padding garbage vs zeros gives the same losses, in both layouts
    model.eval()
    clean = make_batch([3, 2], [13, 6], [3000, 2000], garbage=False)
    clean["text_token"], clean["ref_audio"] = batch["text_token"].clone(), batch["ref_audio"].clone()
    from speech.llm.layout import bistream_allowed
    from speech.sled.patch import step_lengths

    allowed = bistream_allowed(batch["text_token_len"], step_lengths(batch["latent_len"], k), model.mix_ratio)
    assert k == 4 or allowed.any()
    for bi in (torch.tensor([False, False]), allowed):
        a, b = model(batch, bistream=bi), model(clean, bistream=bi)
        assert torch.allclose(a["loss"], b["loss"], atol=1e-5), (a, b)


def _gen(model, batch, rows=None, **kw):
    rows = rows if rows is not None else range(batch["text_token"].shape[0])
    rows = list(rows)
    t = batch["text_token"][rows]
    tl = batch["text_token_len"][rows]
    t = t[:, : int(tl.max())]
    r = batch["ref_audio"][rows]
    rl = batch["ref_audio_len"][rows]
    r = r[:, : int(rl.max())]
    kw.setdefault("generator", RowRandom(torch.tensor([7 + i for i in rows])))
    return model.generate(t, tl, r, rl, max_len_ratio=3.0, min_len_ratio=1.0, **kw)


@pytest.mark.parametrize("k", [1, 2])
def test_kv_cached_generation_equals_full_recomputation(k):
    model = make_sled(patch_size=k)
    batch = make_batch([4, 6], [1, 1], [3000, 2000])
    a, al = _gen(model, batch, cfg_w=1.0, stop_threshold=1.1)
    b, bl = _gen(model, batch, cfg_w=1.0, stop_threshold=1.1, use_cache=False)
    assert torch.equal(al, bl) and al.tolist() == [12, 18 + (-18) % k]
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_batch_equals_item_alone():
    model = make_sled(patch_size=2)
    batch = make_batch([4, 7, 2], [1, 1, 1], [3000, 2000, 4000])
    out, lens = _gen(model, batch, cfg_w=0.5, stop_threshold=1.1)
    for i in range(3):
        one, one_len = _gen(model, batch, rows=[i], cfg_w=0.5, stop_threshold=1.1)
        assert one_len[0] == lens[i]
        assert torch.allclose(one[0], out[i, :, : int(one_len[0])], atol=1e-4)
        assert out[i, :, int(lens[i]):].abs().sum() == 0


def test_cfg_w_zero_is_the_conditional_path():
    model = make_sled()
    batch = make_batch([4, 5], [1, 1], [3000, 2000])
    base = {w: _gen(model, batch, cfg_w=w, stop_threshold=1.1)[0] for w in (0.0, 1.5)}
    with torch.no_grad():
        model.null_embedding.normal_()  # changes only the unconditional path
    moved = {w: _gen(model, batch, cfg_w=w, stop_threshold=1.1)[0] for w in (0.0, 1.5)}
    assert torch.equal(base[0.0], moved[0.0])
    assert not torch.allclose(base[1.5], moved[1.5])
    assert not torch.allclose(base[0.0], base[1.5])


def test_stop_head_ends_generation_within_length_bounds():
    model = make_sled(patch_size=2)
    batch = make_batch([4, 6], [1, 1], [3000, 2000])
    with torch.no_grad():
        model.stop_head.bias.fill_(50.0)  # always "stop": ends at the minimum (1 frame per text token)
    _, lens = _gen(model, batch)
    assert lens.tolist() == [4, 6]
    with torch.no_grad():
        model.stop_head.bias.fill_(-50.0)  # never: runs to the maximum (3 frames per text token)
    _, lens = _gen(model, batch)
    assert lens.tolist() == [12, 18]
    with torch.no_grad():
        model.stop_head.weight.zero_()
        model.stop_head.bias.fill_(0.0)  # p = 0.5: the threshold decides
    assert _gen(model, batch, stop_threshold=0.4)[1].tolist() == [4, 6]
    assert _gen(model, batch, stop_threshold=0.6)[1].tolist() == [12, 18]


def test_seeded_generation_and_one_shot_prompt():
    model = make_sled(patch_size=2)
    batch = make_batch([4, 6], [1, 1], [3000, 2000])
    a, _ = _gen(model, batch, stop_threshold=1.1)
    b, _ = _gen(model, batch, stop_threshold=1.1)
    c, _ = _gen(model, batch, stop_threshold=1.1, generator=RowRandom(torch.tensor([1, 2])))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # A prompt (text + latents, cut to whole patches) changes the continuation; batch == alone still holds.
    g = torch.Generator().manual_seed(3)
    pt, ptl = torch.randint(0, 40, (2, 3), generator=g), torch.tensor([3, 2])
    pl, pll = torch.randn(2, LATENT_DIM, 7, generator=g), torch.tensor([7, 4])
    kw = dict(stop_threshold=1.1, prompt_text_token=pt, prompt_text_token_len=ptl, prompt_latent=pl,
              prompt_latent_len=pll)
    d, dl = _gen(model, batch, **kw)
    assert not torch.allclose(a, d)
    one, _ = _gen(model, batch, rows=[1], **{**kw, "prompt_text_token": pt[1:, :2], "prompt_text_token_len": ptl[1:],
                                             "prompt_latent": pl[1:, :, :4], "prompt_latent_len": pll[1:]})
    assert torch.allclose(one[0], d[1, :, : int(dl[1])], atol=1e-4)


def test_latent_statistics_are_buffers_undone_at_generation(tmp_path):
    import json

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": [3.0] * LATENT_DIM, "std": [0.01] * LATENT_DIM}))
    model = make_sled(latent_stats=str(stats))
    assert torch.equal(model.state_dict()["latent_mean"], torch.full((LATENT_DIM,), 3.0))
    out, lens = _gen(model, make_batch([4], [1], [3000]), stop_threshold=1.1)
    assert (out[0, :, : int(lens[0])] - 3.0).abs().max() < 1.0  # near the mean, scaled by std 0.01


# ------------------------------------------------------------------------------ stop head training


def test_stop_loss_is_the_weighted_bce_formula():
    from speech.sled.model import stop_loss

    g = torch.Generator().manual_seed(0)
    logit = torch.randn(2, 5, generator=g)
    target = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for w in (1.0, 7.5):
        p = torch.sigmoid(logit)
        ref = -(w * target * p.log() + (~target) * (1 - p).log())
        assert torch.allclose(stop_loss(logit, target, valid, w), ref[valid].mean(), atol=1e-6)
    # w = 1 is the plain BCE the model used before
    assert torch.allclose(stop_loss(logit, target, valid, 1.0), torch.nn.functional.binary_cross_entropy_with_logits(
        logit[valid], target[valid].float()), atol=1e-6)


def _stop_counts(model, batch):
    """The stop head's training positions and targets, read off a forward pass with a stop head that fires
    everywhere (precision = positives / positions) and one that never fires (recall 0)."""
    with torch.no_grad():
        model.stop_head.weight.zero_()
        model.stop_head.bias.fill_(50.0)
        always = model(batch, bistream=torch.zeros(len(batch["latent_len"]), dtype=torch.bool))
        model.stop_head.bias.fill_(-50.0)
        never = model(batch, bistream=torch.zeros(len(batch["latent_len"]), dtype=torch.bool))
    return always, never


def test_stop_metrics_against_counted_positions():
    k = 2
    model = make_sled(patch_size=k, stop_pos_weight=3.0)
    batch = make_batch([3, 2], [13, 6], [3000, 2000])  # 13 frames: 6 whole patches (the 13th frame is dropped)
    always, never = _stop_counts(model, batch)
    positions = (13 // k + 1) + (6 // k + 1)  # task .. last step: predict step 0 .. eos (uni-stream)
    positives = 2  # one end per item
    assert always["stop_recall"] == 1.0 and never["stop_recall"] == 0.0 and never["stop_precision"] == 0.0
    assert always["stop_precision"].item() == pytest.approx(positives / positions)
    # a head that always says "stop" with certainty: only the negatives pay, 50 each (BCE at logit 50);
    # one that never does: the positives pay 50, weighted stop_pos_weight
    assert always["stop"].item() == pytest.approx(50.0 * (positions - positives) / positions, rel=1e-4)
    assert never["stop"].item() == pytest.approx(3.0 * 50.0 * positives / positions, rel=1e-4)


def test_training_uses_whole_patches_only():
    """A partial last patch would be zero-filled, a stop cue generation never produces: it is dropped."""
    model = make_sled(patch_size=4)
    batch = make_batch([3, 2], [13, 6], [3000, 2000], garbage=False)
    cut = dict(batch, latent_len=torch.tensor([12, 4]))  # same padded width: the same CV noise draws
    model.eval()
    a, b = model(batch), model(cut)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


# ------------------------------------------------------------------------------ streaming generation


@pytest.mark.parametrize("k,cfg_w", [(1, 0.0), (2, 1.0)])
def test_generate_stream_yields_exactly_what_generate_returns(k, cfg_w):
    model = make_sled(patch_size=k)
    batch = make_batch([5], [1], [3000])
    spk = model.speaker(batch["ref_audio"], batch["ref_audio_len"])
    kw = dict(cfg_w=cfg_w, min_len_ratio=1.0, max_len_ratio=3.0)
    for threshold in (1.1, 0.5):  # never stop (the maximum), and wherever the random stop head fires
        ref, ref_len = model.generate(batch["text_token"], batch["text_token_len"], spk_vector=spk,
                                      stop_threshold=threshold, generator=RowRandom(torch.tensor([4])), **kw)
        frames = list(model.generate_stream(batch["text_token"][0], spk, stop_threshold=threshold,
                                            generator=RowRandom(torch.tensor([4])), **kw))
        assert all(f.shape == (1, LATENT_DIM, k) for f in frames)
        assert len(frames) * k == int(ref_len[0])
        assert torch.equal(torch.cat(frames, -1), ref)
    # a one-shot prompt goes through the same loop
    g = torch.Generator().manual_seed(3)
    pt, pl = torch.randint(0, 40, (1, 3), generator=g), torch.randn(1, LATENT_DIM, 7, generator=g)
    ref, _ = model.generate(batch["text_token"], batch["text_token_len"], spk_vector=spk, stop_threshold=1.1,
                            prompt_text_token=pt, prompt_text_token_len=torch.tensor([3]), prompt_latent=pl,
                            prompt_latent_len=torch.tensor([7]), generator=RowRandom(torch.tensor([4])), **kw)
    frames = list(model.generate_stream(batch["text_token"][0], spk, stop_threshold=1.1, prompt_text_token=pt[0],
                                        prompt_latent=pl, generator=RowRandom(torch.tensor([4])), **kw))
    assert torch.equal(torch.cat(frames, -1), ref)


def _record_inputs(model):
    """Every inputs_embeds the decoder stack is run on (KV-cached: the new positions of each call)."""
    seen = []
    handle = model.decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].detach()),
                                                     with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("cfg_w", [0.0, 1.0])
def test_bistream_feeds_the_training_layout_and_the_cache_equals_recomputation(cfg_w):
    """The sequence generate_bistream feeds is, position for position, the bistream layout ``forward`` trains
    on (text chunks of a, m patches, the rest of the text, task, the remaining patches), built from the
    text and the patches it generated; the unconditional row has null text and speaker slots."""
    from speech.llm.layout import build_layout
    from speech.llm.model import pool_pieces

    a, m, k = 3, 4, 2
    model = make_sled(patch_size=k, bistream_prob=1.0, mix_ratio=[a, m])
    batch = make_batch([8], [1], [3000])
    ids = batch["text_token"][0].tolist()
    spk_vec = model.speaker(batch["ref_audio"], batch["ref_audio_len"])
    kw = dict(cfg_w=cfg_w, stop_threshold=1.1, min_len_ratio=1.0, max_len_ratio=5.0)
    pieces = [ids[:2], ids[2:3], ids[3:7], ids[7:]]  # arbitrary piece sizes: chunks form as text arrives
    seen, handle = _record_inputs(model)
    frames = list(model.generate_bistream(iter(pieces), spk_vec, generator=RowRandom(torch.tensor([5])), **kw))
    handle.remove()
    fed = torch.cat(seen, dim=1)  # [rows, Q, H]
    n_steps = len(frames)
    assert n_steps * k == 8 * 5  # never stops: the maximum, 5 frames per text token
    # reference: the training layout over the text and the generated latents
    latent = torch.cat(frames, -1)
    steps = model.latent_in(patchify_norm(model, latent, k))
    layout = build_layout(torch.tensor([8]), torch.tensor([n_steps]), 8, n_steps, torch.tensor([True]), (a, m))
    spk = model.spk_proj(spk_vec)
    text_emb = model.embed_text(batch["text_token"])
    pool = pool_pieces(model.sos_task_embedding.weight, spk, text_emb, steps)
    ref = pool.gather(1, layout.src.unsqueeze(-1).expand(-1, -1, pool.shape[-1]))
    q = fed.shape[1]
    assert q == 3 + 8 + n_steps - 1  # everything but the last patch (nothing follows it)
    torch.testing.assert_close(fed[:1], ref[:, :q], atol=1e-5, rtol=0)
    if cfg_w:
        null = model.null_embedding.expand(1, 8, -1)
        pool_u = pool_pieces(model.sos_task_embedding.weight, model.null_embedding.expand(1, -1), null, steps)
        ref_u = pool_u.gather(1, layout.src.unsqueeze(-1).expand(-1, -1, pool_u.shape[-1]))
        torch.testing.assert_close(fed[1:], ref_u[:, :q], atol=1e-5, rtol=0)
    again = list(model.generate_bistream(iter(pieces), spk_vec, generator=RowRandom(torch.tensor([5])),
                                         use_cache=False, **kw))
    torch.testing.assert_close(torch.cat(again, -1), latent, atol=1e-4, rtol=0)


def patchify_norm(model, latent, k):
    from speech.sled.patch import patchify

    return patchify(model.normalise(latent), k)


def test_bistream_stops_only_after_the_text_and_the_minimum():
    model = make_sled(patch_size=1, bistream_prob=1.0, mix_ratio=[2, 3])
    batch = make_batch([6], [1], [3000])
    spk = model.speaker(batch["ref_audio"], batch["ref_audio_len"])
    ids = batch["text_token"][0].tolist()
    with torch.no_grad():
        model.stop_head.weight.zero_()
        model.stop_head.bias.fill_(50.0)  # "stop" everywhere: only where a stop is allowed does it end
    frames = list(model.generate_bistream([ids[:3], ids[3:]], spk, cfg_w=0.0, min_len_ratio=2.0, max_len_ratio=4.0,
                                          generator=RowRandom(torch.tensor([1]))))
    assert len(frames) == 12  # 3 chunks of 3 patches inside the text (no stop there), then the minimum 2 x 6
    frames = list(model.generate_bistream([ids], spk, cfg_w=0.0, min_len_ratio=0.5, max_len_ratio=4.0,
                                          generator=RowRandom(torch.tensor([1]))))
    assert len(frames) == 9  # the chunks still get their patches; the tail stops at once


# ------------------------------------------------------------------------------ length head


def test_length_head_starts_at_its_prior_and_learns_a_rate():
    import math

    model = make_sled(length_weight=1.0, latent_rate=50.0)
    text_len = torch.tensor([4, 9, 20])
    text = torch.randint(1, 40, (3, 20))
    spk = torch.randn(3, model.spk_proj.out_features)
    with torch.no_grad():
        start = model.predict_log_frames(text, text_len, spk)
    assert torch.allclose(start, (text_len * 50.0 / 4).log())  # 4 text tokens per second before training
    # training batches move the prior (a running mean of log frames per token, momentum 0.1), not the head
    model.train()
    batch = make_batch([3, 2], [13, 6], [3000, 2000])
    rate = (torch.tensor([13.0, 6.0]) / torch.tensor([3.0, 2.0])).log().mean()  # frames / text tokens (k = 1)
    for _ in range(3):
        expected = model.length_prior + 0.1 * (rate - model.length_prior)
        model(batch)
        assert torch.allclose(model.length_prior, expected, atol=1e-5)
    assert "length_prior" in model.state_dict()
    model.eval()
    model(batch)
    assert torch.allclose(model.length_prior, expected, atol=1e-5)  # CV does not move it
    with torch.no_grad():
        model.length_prior.fill_(math.log(12.5))
    opt = torch.optim.Adam(model.length_head.parameters(), lr=0.01)
    target = (text_len * 7.0).log()  # a voice that speaks 7 frames per token
    for _ in range(150):
        opt.zero_grad()
        (model.predict_log_frames(text, text_len, spk) - target).abs().mean().backward()
        opt.step()
    with torch.no_grad():
        assert ((model.predict_log_frames(text, text_len, spk) - target).exp() - 1).abs().max() < 0.05
    # the training loss reports it: mean |predicted / real frames - 1|
    model.train()
    out = model(make_batch([3, 2], [13, 6], [3000, 2000]))
    assert {"length", "length_err"} <= set(out) and torch.isfinite(out["loss"])
    assert "length" not in make_sled()(make_batch([3, 2], [13, 6], [3000, 2000]))


@pytest.mark.parametrize("scale,frames", [(1.0, 10), (2.0, 20), (0.0, 36), (0.25, 4)])
def test_generation_ends_at_the_length_head_bound(scale, frames):
    """Length head says 10 frames for 4 text tokens (bias log 0.2 on the 50-frame prior); the stop head never
    fires: generation ends at scale x 10 frames (whole patches, within 1..9 frames per token)."""
    import math

    k = 2
    model = make_sled(patch_size=k, length_weight=1.0, latent_rate=50.0)
    with torch.no_grad():
        model.length_head[2].bias.fill_(math.log(0.2))
    batch = make_batch([4], [1], [3000])
    spk = model.speaker(batch["ref_audio"], batch["ref_audio_len"])
    kw = dict(stop_threshold=1.1, min_len_ratio=1.0, max_len_ratio=9.0, length_scale=scale)
    _, n = model.generate(batch["text_token"], batch["text_token_len"], spk_vector=spk,
                          generator=RowRandom(torch.tensor([0])), **kw)
    assert int(n[0]) == frames
    streamed = list(model.generate_stream(batch["text_token"][0], spk, generator=RowRandom(torch.tensor([0])), **kw))
    assert len(streamed) * k == frames
    model.mix_ratio = (2, 1)
    bi = list(model.generate_bistream([batch["text_token"][0]], spk, generator=RowRandom(torch.tensor([0])), **kw))
    assert len(bi) * k == max(frames, 2 * k)  # two text chunks of 2 get one patch each, whatever the bound
