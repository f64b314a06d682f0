"""speech.llm.probe: next-id accuracy with the true and with a random speech history."""

from __future__ import annotations

import pytest
import torch

from speech.llm.probe import history_probe, main, probe_batches

from .conftest import make_batch, make_lm


def test_true_history_figures_are_the_training_forward_ones():
    model = make_lm(bistream_prob=0.0, head_scale=4.0)
    batch = make_batch(text_len=[6, 3], speech_len=[30, 11], ref_len=[3000, 1700])
    sums = history_probe(model, batch, torch.Generator().manual_seed(0))
    out = model(batch)  # unistream: the same targets, each speech id + eos
    assert sums["targets"] == (30 + 1) + (11 + 1)
    assert sums["correct"] / sums["targets"] == pytest.approx(out["acc"].item())
    assert sums["nll"] / sums["targets"] == pytest.approx(out["loss"].item(), rel=1e-5)
    # a random history changes what the model predicts
    assert sums["nll_random"] != pytest.approx(sums["nll"], rel=1e-3)


def test_an_aligned_lm_is_probed_in_its_layout_without_fill_targets():
    import torch.nn.functional as F

    from speech.llm.model import IGNORE_ID

    model = make_lm(bistream_prob=0.0, head_scale=4.0, decode_layout="aligned")
    batch = make_batch(text_len=[4, 3], speech_len=[10, 6], ref_len=[3000, 1700])
    batch["text_token_dur"] = torch.tensor([[3, 0, 7, 0], [-1, -1, -1, 0]])  # the second has no alignment
    sums = history_probe(model, batch, torch.Generator().manual_seed(0))
    assert sums["targets"] == (10 + 1) + (6 + 1)  # speech ids + eos of both; the first item's 3 fills not scored
    with torch.no_grad():
        logits, targets = model.logits_and_targets(batch, torch.tensor([False, False]), torch.tensor([True, False]))
    keep = (targets != IGNORE_ID) & (targets != model.fill_id)
    assert int((targets == model.fill_id).sum()) == 3
    nll = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    assert sums["nll"] == pytest.approx(float(nll), rel=1e-5)


def test_random_history_is_the_same_for_a_model_that_ignores_its_speech_inputs():
    model = make_lm(bistream_prob=0.0, head_scale=4.0)
    with torch.no_grad():
        model.speech_embedding.weight.zero_()  # every speech id in looks alike: the history cannot matter
    batch = make_batch(text_len=[5, 4], speech_len=[20, 16], ref_len=[2500, 2000])
    sums = history_probe(model, batch, torch.Generator().manual_seed(0))
    assert sums["correct_random"] == sums["correct"]
    assert sums["nll_random"] == pytest.approx(sums["nll"], rel=1e-5)


def test_probe_batches_adds_up_batches_and_stops_at_max_batches():
    model = make_lm(bistream_prob=0.0)
    batches = [make_batch(text_len=[4, 3], speech_len=[12, 9], ref_len=[2000, 1500], seed=s) for s in (1, 2, 3)]
    gen = torch.Generator().manual_seed(5)
    parts = [history_probe(model, b, gen) for b in batches[:2]]
    result = probe_batches(model, batches, seed=5, max_batches=2)
    n = sum(p["targets"] for p in parts)
    assert result["utterances"] == 4 and result["targets"] == n == 2 * ((12 + 1) + (9 + 1))
    assert result["acc"] == pytest.approx(sum(p["correct"] for p in parts) / n)
    assert result["loss_random_history"] == pytest.approx(sum(p["nll_random"] for p in parts) / n)
    with pytest.raises(ValueError, match="no speech targets"):
        probe_batches(model, [])


def test_cli_names_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path / "data.list")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not found" in err[0]
