"""The learning-rate range test on the embedded digits data set: real torch, real training steps."""
import math

import numpy as np
import pytest
import torch

from cnnkit.models import create_model
from cnnkit.train.config import TrainConfig
from cnnkit.train.lr_find import geometric_lrs, lr_find, suggest_lr
from cnnkit.train.metrics import token_loss
from cnnkit.train.classify import load_data, make_loader, make_optimizer
from cnnkit.utils import CnnkitError


def quiet_log(*_):
    pass


def probe_config(**overrides) -> TrainConfig:
    values = dict(model="lenet", dataset="digits", batch_size=32, train_limit=640, threads=1,
                  deterministic=True, precision="fp32", quiet=True)
    values.update(overrides)
    return TrainConfig(**values)


def test_lrs_are_geometric_and_reruns_bit_identical():
    start, end, n = 1e-5, 1e-2, 20
    a = lr_find(probe_config(), start_lr=start, end_lr=end, num_steps=n, log=quiet_log)
    b = lr_find(probe_config(), start_lr=start, end_lr=end, num_steps=n, log=quiet_log)
    assert not a.stopped_early and len(a.lrs) == n
    expected = start * (end / start) ** (np.arange(n) / (n - 1))  # numpy as the oracle
    np.testing.assert_allclose(a.lrs, expected, rtol=1e-12)
    assert a.lrs[0] == start and math.isclose(a.lrs[-1], end, rel_tol=1e-12)
    ratios = np.array(a.lrs[1:]) / np.array(a.lrs[:-1])
    np.testing.assert_allclose(ratios, (end / start) ** (1 / (n - 1)), rtol=1e-12)
    assert a.lrs == b.lrs and a.losses == b.losses and a.smoothed == b.smoothed  # bit-identical
    # A different seed is a different probe (other weights, other batches).
    c = lr_find(probe_config(seed=1), start_lr=start, end_lr=end, num_steps=n, log=quiet_log)
    assert c.losses != a.losses


def test_smoothing_is_the_bias_corrected_moving_average():
    r = lr_find(probe_config(), start_lr=1e-4, end_lr=1e-2, num_steps=12, smoothing=0.9,
                log=quiet_log)
    avg = 0.0
    for i, (loss, smoothed) in enumerate(zip(r.losses, r.smoothed)):
        avg = 0.9 * avg + 0.1 * loss
        assert math.isclose(smoothed, avg / (1 - 0.9 ** (i + 1)), rel_tol=1e-12)
    assert r.smoothed[0] == pytest.approx(r.losses[0])  # bias correction: no pull towards 0


def test_divergence_stops_early():
    n = 100
    r = lr_find(probe_config(optimizer="sgd"), start_lr=1e-4, end_lr=1e3, num_steps=n,
                log=quiet_log)
    assert r.stopped_early and len(r.lrs) < n
    assert r.lrs == geometric_lrs(1e-4, 1e3, n)[:len(r.lrs)]
    last, best_before = r.smoothed[-1], min(r.smoothed[:-1])
    assert last > 4.0 * best_before or not math.isfinite(r.losses[-1])
    # The suggestion lies strictly between the start and where the loss diverged.
    assert 1e-4 < r.suggestion < r.lrs[-1]
    assert r.suggestion <= r.min_loss_lr


def test_suggestion_rule_on_an_analytic_curve():
    # 1 − tanh(log10 lr + 3) falls fastest at lr = 1e-3; past 1e-1 the loss climbs again.
    lrs = geometric_lrs(1e-7, 10.0, 81)  # 10 points per decade: 1e-3 is on the grid
    u = np.log10(lrs)
    curve = 1 - np.tanh(u + 3) + np.where(u > -1, 5 * (u + 1) ** 2, 0.0)
    suggestion, rule, min_loss_lr = suggest_lr(lrs, curve.tolist())
    assert suggestion == pytest.approx(1e-3, rel=1e-9)
    assert min_loss_lr == pytest.approx(lrs[int(np.argmin(curve))])
    assert "steepest descent" in rule
    # A curve that only rises has no descent: the min/10 rule takes over.
    suggestion, rule, min_loss_lr = suggest_lr(lrs, (u + 8).tolist())
    assert suggestion == pytest.approx(1e-7 / 10) and rule.startswith("min/10")


def _loss_after_training(config: TrainConfig, lr: float, steps: int = 30) -> float:
    """Mean training-set loss after `steps` constant-lr steps from the seeded initial weights."""
    config = TrainConfig(**{**config.to_dict(), "val_fraction": 0.0}).resolve()
    torch.manual_seed(config.seed)
    train_set, _, _, kwargs = load_data(config)
    model = create_model(config.model, **kwargs)
    config.lr = lr
    optimizer = make_optimizer(config, model)
    loader = make_loader(train_set, config.batch_size, config, train=True)
    step = 0
    while step < steps:
        for x, y in loader:
            optimizer.zero_grad()
            token_loss(model(x), y).backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
        loader.set_epoch(loader.epoch + 1)
    model.eval()
    with torch.no_grad():
        x, y = next(iter(make_loader(train_set, len(train_set), config)))
        return token_loss(model(x), y).item()


def test_suggestion_trains_better_than_a_far_smaller_lr():
    config = probe_config()
    r = lr_find(config, log=quiet_log)
    assert r.suggestion is not None and 1e-7 < r.suggestion < 10.0
    at_suggestion = _loss_after_training(config, r.suggestion)
    at_thousandth = _loss_after_training(config, r.suggestion / 1000)
    assert at_suggestion < at_thousandth - 0.1, (at_suggestion, at_thousandth)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(start_lr=1.0, end_lr=1e-3), "--start-lr"),
    (dict(num_steps=5), "--num-steps"),
    (dict(smoothing=1.0), "--smoothing"),
    (dict(diverge=0.5), "--diverge"),
])
def test_bad_range_is_a_one_line_error(kwargs, fragment):
    with pytest.raises(CnnkitError, match=fragment):
        lr_find(probe_config(), log=quiet_log, **kwargs)
