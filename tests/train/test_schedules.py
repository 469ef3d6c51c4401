"""The schedules are pure functions of the step; torch's own schedulers are the oracle."""
import math

import pytest
import torch

from cnnkit.train.schedules import lr_at


def torch_lrs(scheduler_factory, steps: int, lr: float) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = scheduler_factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_onecycle_matches_torch():
    steps, lr = 97, 0.01
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=lr, total_steps=steps, cycle_momentum=False), steps, lr)
    got = [lr_at(s, total_steps=steps, steps_per_epoch=10, lr=lr, schedule="onecycle")
           for s in range(steps)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_step_matches_torch_step_lr():
    spe, lr = 7, 0.1
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 3 * spe, 0.5), 10 * spe, lr)
    got = [lr_at(s, total_steps=10 * spe, steps_per_epoch=spe, lr=lr, schedule="step",
                 step_size=3, gamma=0.5) for s in range(10 * spe)]
    assert got == pytest.approx(expected, rel=1e-12)


def test_cosine_with_warmup_shape():
    kw = dict(total_steps=100, steps_per_epoch=10, lr=1.0, schedule="cosine", warmup_epochs=1)
    lrs = [lr_at(s, **kw) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lr_at(5, **{**kw, "schedule": "constant"}) == 1.0


def test_unknown_schedule():
    with pytest.raises(ValueError):
        lr_at(0, total_steps=1, steps_per_epoch=1, lr=1.0, schedule="linear")
