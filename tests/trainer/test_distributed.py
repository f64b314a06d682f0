"""Two CPU ranks (gloo) under torchrun: DDP and DeepSpeed ZeRO-2, uneven data, exact resume.

One launch runs every scenario (see dist_worker.py); the tests below check its outputs. The
training shard gives rank 0 twenty utterances (10 batches) and rank 1 ten (5 batches), the CV
shard six and one: each epoch must end for both ranks after rank 1's fifth batch.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from .support import PYTHON, run_cmd
from .toy import ToyRegressor, write_corpus

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3  # 5 common batches with accum_grad=2: boundaries after batches 2, 4 and 5 (epoch end)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_corpus(root / "data", [20, 10])
    write_corpus(root / "data", [6, 1], name="cv", seed=1)
    write_corpus(root / "same", [10, 10], seed=2, constant=True)  # every batch identical on both ranks
    out = root / "out"
    out.mkdir()
    result = run_cmd([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      "-m", "tests.trainer.dist_worker", "--out", str(out), "--data", str(root / "data"),
                      "--split_steps", "4", "--engines", "torch_ddp,deepspeed", "--gan", "--poison", "u0021",
                      "--flow_data", str(root / "same"),
                      "--", "train_conf.accum_grad=2", "train_conf.ema_decay=0.9"], timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


def load(out, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}_rank{rank}.pt", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a["state"].keys() == b["state"].keys() and all(torch.equal(v, b["state"][k]) for k, v in a["state"].items())


@pytest.mark.parametrize("engine", ["torch_ddp", "deepspeed"])
def test_ranks_hold_identical_parameters(launch, engine):
    for name in (f"{engine}_full", f"{engine}_resumed"):
        assert same_weights(load(launch, name, 0), load(launch, name, 1)), name


@pytest.mark.parametrize("engine", ["torch_ddp", "deepspeed"])
def test_resume_equals_uninterrupted(launch, engine):
    full, resumed = load(launch, f"{engine}_full", 0), load(launch, f"{engine}_resumed", 0)
    assert full["step"] == resumed["step"] == 2 * STEPS_PER_EPOCH
    assert same_weights(full, resumed)
    assert full["ema"] is not None and all(torch.equal(v, resumed["ema"][k]) for k, v in full["ema"].items())
    assert load(launch, f"{engine}_full", 1)["ema"] is None  # EMA lives on rank 0 only
    # the split run really stopped in the middle of epoch 1 and resumed from there
    meta = yaml.safe_load((launch / f"{engine}_split" / "step_000000004.yaml").read_text())
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 2)


@pytest.mark.parametrize("engine", ["torch_ddp", "deepspeed"])
def test_uneven_data_finishes_with_reduced_cv(launch, engine):
    for rank in (0, 1):
        run = load(launch, f"{engine}_full", rank)
        assert run["world"] == 2 and run["epoch"] == 2 and run["step"] == 2 * STEPS_PER_EPOCH
        assert run["cv"] is not None and run["cv"]["loss"] > 0
    # both ranks agree on the CV metrics (sums over 7 utterances reduced over ranks)
    assert load(launch, f"{engine}_full", 0)["cv"] == load(launch, f"{engine}_full", 1)["cv"]
    meta = yaml.safe_load((launch / f"{engine}_full" / "step_000000006.yaml").read_text())
    assert meta["cv"]["loss"] == pytest.approx(load(launch, f"{engine}_full", 0)["cv"]["loss"])


def test_cv_is_the_mean_over_every_utterance_of_both_ranks(launch):
    """Reference: the saved weights applied to all 7 CV utterances in one process."""
    model = ToyRegressor()
    model.load_state_dict(torch.load(launch / "torch_ddp_full" / "step_000000006.pt", weights_only=True)["model"])
    model.eval()
    lines = [json.loads(line) for line in (launch.parent / "data" / "cv.jsonl").read_text().splitlines()]
    x = torch.tensor([item["x"] for item in lines])
    y = torch.tensor([item["y"] for item in lines])
    with torch.no_grad():
        err = model.net(x).squeeze(-1) - y
    cv = yaml.safe_load((launch / "torch_ddp_full" / "step_000000006.yaml").read_text())["cv"]
    assert len(lines) == 7
    assert cv["loss"] == pytest.approx(float((err ** 2).mean()), rel=1e-5)
    assert cv["mae"] == pytest.approx(float(err.abs().mean()), rel=1e-5)


@pytest.mark.parametrize("name", ["torch_ddp_poison", "deepspeed_poison", "deepspeed0_poison"])
def test_non_finite_gradient_on_one_rank_skips_the_step_on_all(launch, name):
    """u0021 lives on rank 1 only; its batch's step is skipped by both ranks, training goes on."""
    r0, r1 = load(launch, name, 0), load(launch, name, 1)
    assert r0["skipped"] == r1["skipped"] == 1 and r0["step"] == STEPS_PER_EPOCH
    assert same_weights(r0, r1) and all(torch.isfinite(v).all() for v in r0["state"].values())


def test_deepspeed_checkpoint_layout(launch):
    folder = launch / "deepspeed_split" / "step_000000004"
    names = {p.name for p in folder.iterdir()}
    assert {"model.pt", "trainer.pt", "mp_rank_00_model_states.pt"} <= names
    assert sum(n.startswith("zero_pp_rank_") for n in names) == 2  # ZeRO-2 optimizer shards, one per rank
    weights = torch.load(folder / "model.pt", weights_only=True)["model"]
    assert set(weights) == set(load(launch, "deepspeed_full", 0)["state"])


def test_gan_under_ddp(launch):
    g0, g1 = load(launch, "gan", 0), load(launch, "gan", 1)
    assert g0["step"] == STEPS_PER_EPOCH and same_weights(g0, g1)
    meta = yaml.safe_load((launch / "gan" / f"step_{STEPS_PER_EPOCH:09d}.yaml").read_text())
    assert {"generator/loss", "generator/adv", "discriminator/loss", "loss"} <= set(meta["cv"])


def test_ranks_draw_their_own_flow_noise_and_time(launch):
    """Identical batches on both ranks (a constant corpus): the flow-matching noise and time each
    rank draws differ, while DDP keeps the weights identical."""
    r0, r1 = load(launch, "flow_full", 0), load(launch, "flow_full", 1)
    assert len(r0["draws"]) == len(r1["draws"]) == 10  # 5 micro-batches per epoch, 2 epochs
    for a, b in zip(r0["draws"], r1["draws"]):
        assert a["noise"].shape == b["noise"].shape == (2, 5, 1)
        assert not torch.equal(a["noise"], b["noise"]) and not torch.equal(a["t"], b["t"])
    assert same_weights(r0, r1)


def test_flow_resume_replays_each_ranks_draws(launch):
    """Split at step 4 + resume == uninterrupted: weights bit for bit, and each rank's draws after
    the split (3 micro-batches left in epoch 1) are the ones the uninterrupted run drew."""
    for rank in (0, 1):
        full, resumed = load(launch, "flow_full", rank), load(launch, "flow_resumed", rank)
        assert full["step"] == resumed["step"] == 2 * STEPS_PER_EPOCH and same_weights(full, resumed)
        assert len(resumed["draws"]) == 3
        for a, b in zip(full["draws"][-3:], resumed["draws"]):
            assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["t"], b["t"])
