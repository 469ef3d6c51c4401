"""Learning-rate schedules as pure functions of the step (STYLE.md habit 6)."""
from __future__ import annotations

import math


def lr_at(step: int, *, total_steps: int, steps_per_epoch: int, lr: float, schedule: str,
          warmup_epochs: float = 0.0, step_size: int = 10, gamma: float = 0.1) -> float:
    """The learning rate for optimisation step `step` (0-based) of `total_steps`.

    - constant: lr.
    - step: lr · gamma^⌊epoch / step_size⌋.
    - cosine: linear warm-up over `warmup_epochs`, then lr · ½(1 + cos(π·progress)) down to 0
      (Loshchilov & Hutter 2017, SGDR, without restarts).
    - onecycle: Smith & Topin 2018 as torch's OneCycleLR with three_phase=False: cosine warm-up from
      lr/25 to lr over the first 30% of steps, cosine annealing to lr/(25·10⁴) over the rest.
    """
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * gamma ** (step // steps_per_epoch // step_size)
    if schedule == "cosine":
        warmup = int(warmup_epochs * steps_per_epoch)
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "onecycle":
        initial, final = lr / 25.0, lr / 25.0 / 1e4
        peak_step = 0.3 * total_steps - 1
        if step <= peak_step:
            return _cos_anneal(initial, lr, step / peak_step)
        return _cos_anneal(lr, final, (step - peak_step) / (total_steps - 1 - peak_step))
    raise ValueError(f"unknown schedule {schedule!r}")


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(1.0, max(0.0, fraction))) + 1.0)
