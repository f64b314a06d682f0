"""LR schedules against their closed forms, stepped once per optimizer step."""
from __future__ import annotations

import math

import pytest
import torch

from speech.trainer.scheduler import ConstantLR, NoamLR, WarmupCosineLR, WarmupLR

BASE = 0.1


def lrs(make, steps: int) -> list[float]:
    """The LR each of ``steps`` optimizer steps used."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_constant():
    got = lrs(lambda o: WarmupLR(o, warmup_steps=4), 8)
    assert got == pytest.approx([BASE * min(1.0, (s + 1) / 4) for s in range(8)])
    assert got[3:] == pytest.approx([BASE] * 5)


def test_noam_peaks_at_warmup_then_inverse_sqrt():
    w = 5
    got = lrs(lambda o: NoamLR(o, warmup_steps=w), 30)
    want = [BASE * min((s + 1) / w, math.sqrt(w / (s + 1))) for s in range(30)]
    assert got == pytest.approx(want)
    assert max(got) == pytest.approx(BASE) and got.index(max(got)) == w - 1


def test_warmup_cosine_reaches_floor():
    got = lrs(lambda o: WarmupCosineLR(o, warmup_steps=2, total_steps=10, min_ratio=0.1), 14)
    assert got[:2] == pytest.approx([BASE / 2, BASE])
    assert got[6] == pytest.approx(BASE * (0.1 + 0.9 * 0.5))  # halfway through the cosine part
    assert got[10:] == pytest.approx([BASE * 0.1] * 4)
    assert all(a >= b for a, b in zip(got[1:], got[2:]))


def test_constant():
    assert lrs(ConstantLR, 3) == pytest.approx([BASE] * 3)


def test_state_dict_resumes_the_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    sched = NoamLR(opt, warmup_steps=3)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched2 = NoamLR(opt2, warmup_steps=3)
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    for _ in range(3):
        opt.step(); sched.step()  # noqa: E702
        opt2.step(); sched2.step()  # noqa: E702
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
