"""EMA weights against a float64 loop of the definition."""
from __future__ import annotations

import pytest
import torch

from speech.trainer.ema import EMA


def test_ema_matches_definition_and_copies_buffers():
    torch.manual_seed(0)
    model = torch.nn.BatchNorm1d(3)  # parameters and buffers (incl. an integer counter)
    model.weight.data.normal_()
    decay = 0.8
    ema = EMA(model, decay)
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # updates running stats and num_batches_tracked
        ema.update(model)
        for n, p in model.named_parameters():
            ref[n] = decay * ref[n] + (1 - decay) * p.detach().double()
    state = ema.state_dict()
    for n, r in ref.items():
        torch.testing.assert_close(state[n].double(), r, rtol=1e-6, atol=1e-6)
    assert torch.equal(state["num_batches_tracked"], model.num_batches_tracked)
    assert torch.equal(state["running_mean"], model.running_mean)


def test_ema_state_loads_into_the_model_and_round_trips():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    fresh = torch.nn.Linear(2, 2)
    fresh.load_state_dict(ema.state_dict())  # same keys as the model
    other = EMA(torch.nn.Linear(2, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(other.state_dict()[k], v) for k, v in ema.state_dict().items())
    with pytest.raises(KeyError):
        other.load_state_dict({"weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError):
        EMA(model, 1.0)


def test_ema_state_has_exactly_the_models_keys_with_a_non_persistent_buffer():
    model = torch.nn.Linear(2, 2)
    model.register_buffer("table", torch.arange(3.0), persistent=False)  # derived, not saved
    model.register_buffer("count", torch.zeros(()))
    ema = EMA(model, 0.9)
    model.count.add_(2)
    ema.update(model)
    assert set(ema.state_dict()) == set(model.state_dict()) == {"weight", "bias", "count"}
    fresh = torch.nn.Linear(2, 2)
    fresh.register_buffer("table", torch.zeros(3), persistent=False)
    fresh.register_buffer("count", torch.zeros(()))
    ema.copy_to(fresh)  # strict load
    assert fresh.count.item() == 2 and torch.equal(fresh.table, torch.zeros(3))
