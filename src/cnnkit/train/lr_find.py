"""`lr_find(config)`: the learning-rate range test — loss against an exponentially growing lr.

Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3
(https://arxiv.org/abs/1506.01186), in the form fast.ai made popular: one optimiser step per
learning rate, lr_i = start · (end/start)^(i/(n−1)), on successive training batches; the loss is
smoothed by a bias-corrected exponential moving average, and the test stops once the smoothed loss
has blown up. The model, data, optimiser, precision and augmentation are exactly those
`cnnkit train` would use for the same config, but the weights are fresh and thrown away: this is a
probe, only its plot and CSV are kept.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnkit.models import create_model
from cnnkit.train.config import TrainConfig
from cnnkit.engine.device import to_device
from cnnkit.engine.run import Run
from cnnkit.train.classify import load_data, make_loader, make_optimizer
from cnnkit.train.metrics import token_loss
from cnnkit.utils import CnnkitError, atomic_write_text

SKIP_FRACTION = 0.1  # the first 10% of the steps are warm-up noise, never a suggestion


@dataclass
class LrFindResult:
    lrs: list[float]  # the learning rates tried, one per step, until the stop
    losses: list[float]  # the raw training loss of each step
    smoothed: list[float]  # its bias-corrected exponential moving average
    suggestion: float | None  # None only when too few steps ran to choose
    rule: str  # one line: how the suggestion was chosen
    stopped_early: bool  # the smoothed loss diverged before the last lr
    min_loss_lr: float | None = None  # the lr at the minimum smoothed loss ("min/10" rule: ÷10)
    plot: Path | None = None
    table: Path | None = None  # the CSV of step, lr, loss, smoothed


def lr_find(config: TrainConfig, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, smoothing: float = 0.98, diverge: float = 4.0,
            out: str | Path | None = None, log=print) -> LrFindResult:
    """Run the range test for `config`; when `out` is given, write it (PNG) and its `.csv` twin.

    Each step sets a constant lr (no schedule), trains on the next batch (the loader is cycled
    epoch after epoch, as training would) and records the loss. The smoothed loss is
    avg_i = β·avg_{i−1} + (1−β)·loss_i, divided by (1 − β^(i+1)) so the first points are not
    pulled towards zero. The test stops when the smoothed loss exceeds `diverge` × the best so far
    or a loss is not finite: past that point every step only says "too large".

    The suggestion is the lr of steepest descent of the smoothed loss (the most negative
    d smoothed / d log10 lr), searched between the first 10% of the steps and the minimum of the
    smoothed loss; see `suggest_lr` for why this rule rather than the minimum itself.
    The same config and seed give bit-identical losses (with `deterministic` and fixed threads).
    """
    _check_range(start_lr, end_lr, num_steps, smoothing, diverge)
    if config.resume:
        raise CnnkitError("lr-find trains fresh weights and cannot --resume a run; drop --resume")
    # No validation split: every training image may be probed; early stopping needs none either.
    config = replace(config, val_fraction=0.0, early_stop=0)
    with Run.open(config, task="classify", prefix="lr-find", log=log, folder=False) as run:
        lrs, losses, smoothed, stopped_early = _range_test(run, run.config, start_lr, end_lr,
                                                           num_steps, smoothing, diverge, log)
    suggestion, rule, min_loss_lr = suggest_lr(lrs, smoothed)
    result = LrFindResult(lrs, losses, smoothed, suggestion, rule, stopped_early, min_loss_lr)
    if suggestion is None:
        log(f"no suggestion: {rule}")
    else:
        log(f"suggested lr: {suggestion:.1e} (rule: {rule})")
        log(f"other rules: minimum of the smoothed loss at {min_loss_lr:.1e}, "
            f"min/10 = {min_loss_lr / 10:.1e}")
    if out is not None:
        from cnnkit.viz.lr_find import plot_lr_find  # noqa: PLC0415  (matplotlib, slow import)
        result.plot = plot_lr_find(result, out)
        result.table = write_csv(result, Path(out).with_suffix(".csv"))
    return result


def _range_test(run: Run, config: TrainConfig, start_lr, end_lr, num_steps, smoothing, diverge,
                log):
    """The test's loop: one engine step per learning rate; returns the curve and the stop."""
    train_set, _, _, model_kwargs = load_data(config)
    model = create_model(config.model, **model_kwargs)
    model, _ = run.prepare(model, channels_last=config.channels_last)
    model.train()
    optimizer = make_optimizer(config, model)
    loader = make_loader(train_set, config.batch_size, config, train=True)
    if len(loader) == 0:
        raise CnnkitError(f"--batch-size {config.batch_size} is larger than the training set "
                          f"({len(train_set)} images)")

    schedule = geometric_lrs(start_lr, end_lr, num_steps)
    every = max(1, num_steps // 10)
    log(f"lr range test: {config.model} on {config.dataset} ({len(train_set)} images, batch "
        f"{config.batch_size}, {config.optimizer}, {run.precision}), {num_steps} steps from "
        f"{start_lr:.1e} to {end_lr:.1e}")
    log(" step        lr      loss  smoothed")
    lrs, losses, smoothed = [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    batches = _endless(loader)
    for step, lr in enumerate(schedule):
        x, y = to_device(next(batches), run.device)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with run.autocast():
            logits = model(x)
        loss = token_loss(logits.float(), y, label_smoothing=config.label_smoothing)
        if not math.isfinite(loss.item()):  # nothing to average: the last point says enough
            log(f"{step:5d}  {lr:.2e}  loss became {loss.item()}: stopping")
            stopped_early = True
            break
        value = run.step(loss, optimizer, clip=config.grad_clip)  # the loss before the step
        avg = smoothing * avg + (1 - smoothing) * value
        value_smoothed = avg / (1 - smoothing ** (step + 1))  # bias correction (as in Adam)
        lrs.append(lr)
        losses.append(value)
        smoothed.append(value_smoothed)
        diverged = value_smoothed > diverge * best
        if step % every == 0 or diverged or step == num_steps - 1:
            log(f"{step:5d}  {lr:.2e}  {value:8.4f}  {value_smoothed:8.4f}")
        if diverged:
            log(f"smoothed loss {value_smoothed:.4f} > {diverge:g} × best {best:.4f}: stopping")
            stopped_early = True
            break
        best = min(best, value_smoothed)
    return lrs, losses, smoothed, stopped_early


def geometric_lrs(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """start · (end/start)^(i/(n−1)) for i = 0..n−1: equal ratios, exactly start and end."""
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]


def suggest_lr(lrs, smoothed, *, skip_fraction: float = SKIP_FRACTION):
    """(suggestion, rule text, lr at the minimum smoothed loss) for a range-test curve.

    The rule: the lr where the smoothed loss falls fastest per decade of lr (minimum of the
    finite-difference gradient d smoothed / d log10 lr), before the loss reaches its minimum and
    after the first `skip_fraction` of the points. Why this one: the minimum itself sits at the
    edge of divergence — a training run there (and a schedule peaking there) is unstable, which is
    why the other common rule backs off to min/10; the steepest point is where a larger lr still
    buys the most progress, on the well-behaved side of the curve (Smith's "the loss starts to
    decrease fast"; fast.ai's `steep`). Restricting it to before the minimum ignores the noisy
    dips of a diverging tail. When the loss never falls after the warm-up, min/10 is used.
    """
    n = len(smoothed)
    if n < 3:
        return None, f"only {n} finite points before the loss diverged; lower --start-lr", None
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    y = np.asarray(smoothed, dtype=np.float64)
    i_min = int(np.argmin(y))
    min_loss_lr = float(lrs[i_min])
    skip = max(1, int(skip_fraction * n))
    if i_min - skip < 2:  # no descent to speak of after the warm-up
        return (min_loss_lr / 10, f"min/10: the smoothed loss never fell after the first {skip} "
                f"steps; its minimum is at {min_loss_lr:.1e}", min_loss_lr)
    gradient = np.gradient(y, x)  # central differences, one-sided at the ends
    i_steep = skip + int(np.argmin(gradient[skip:i_min + 1]))
    rule = (f"steepest descent of the smoothed loss (minimum gradient of loss vs log10 lr) "
            f"before its minimum at {min_loss_lr:.1e}")
    return float(lrs[i_steep]), rule, min_loss_lr


# --- helpers ---

def _check_range(start_lr, end_lr, num_steps, smoothing, diverge) -> None:
    if not 0 < start_lr < end_lr:
        raise CnnkitError(f"the range needs 0 < --start-lr < --end-lr, got {start_lr:g} and "
                          f"{end_lr:g}")
    if num_steps < 10:
        raise CnnkitError(f"--num-steps must be at least 10 to draw a curve, got {num_steps}")
    if not 0 <= smoothing < 1:
        raise CnnkitError(f"--smoothing must be in [0, 1), got {smoothing}")
    if diverge <= 1:
        raise CnnkitError(f"--diverge must be above 1 (a factor over the best loss), got {diverge}")


def _endless(loader):
    """The training batches epoch after epoch, each epoch with its own permutation."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def write_csv(result: LrFindResult, path: str | Path) -> Path:
    out = io.StringIO()
    table = csv.writer(out)
    table.writerow(["step", "lr", "loss", "smoothed"])
    for step, row in enumerate(zip(result.lrs, result.losses, result.smoothed)):
        table.writerow([step, *(repr(v) for v in row)])  # repr: the exact floats round-trip
    atomic_write_text(path, out.getvalue())
    return Path(path)
