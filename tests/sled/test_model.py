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
    assert set(out) == {"loss", "energy", "stop", "stop_acc"} and torch.isfinite(out["loss"])
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
