"""The figure of a multi-seed comparison: every validation curve, and every run's test accuracy.

One colour per variant, one line per seed: the spread between seeds is drawn, not averaged away,
so a reader can see whether the gap between variants is larger than the seed-to-seed noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnkit.utils import CnnkitError
from cnnkit.viz.plots import plt, save_figure

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _val_accs(row: dict) -> list[float]:
    """The per-epoch validation accuracies of a run: a list, or schemes.csv's "a;b;c" text."""
    values = row["val_accs"]
    if isinstance(values, str):
        values = [float(v) for v in values.split(";") if v]
    return [float(v) for v in values]


def plot_scheme_runs(rows: list[dict], path, *, labels: dict[str, str] | None = None,
                     title: str | None = None) -> Path:
    """Left: validation accuracy against the epoch, one line per run, coloured by variant.
    Right: test accuracy of every run per variant, runs of the same seed joined by a grey line
    (the pairing the paired t-test uses), with the mean ± sample std beside them.

    `rows`: dicts with `variant`, `seed`, `test_acc` and `val_accs` (a list, or "a;b;c" as
    schemes.csv stores it); variants are drawn in the order they first appear. `title`: the
    experiment's headline, above the default "N variants × S seeds".
    """
    if not rows:
        raise CnnkitError("plot_scheme_runs got no runs; train at least one first")
    labels = labels or {}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, (ax_val, ax_test) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained",
                                          gridspec_kw={"width_ratios": [3, 2]})
    for i, variant in enumerate(variants):
        color = _COLORS[i % len(_COLORS)]
        runs = [r for r in rows if r["variant"] == variant]
        for j, run in enumerate(runs):
            accs = _val_accs(run)
            ax_val.plot(range(1, len(accs) + 1), accs, "-o", color=color, alpha=0.75,
                        markersize=3, linewidth=1.2,
                        label=f"{labels.get(variant, variant)} ({len(runs)} seeds)" if j == 0
                        else None)
        tests = np.array([float(r["test_acc"]) for r in runs])
        ax_test.scatter(np.full(len(tests), i), tests, color=color, s=22, zorder=3)
        std = tests.std(ddof=1) if len(tests) > 1 else 0.0
        ax_test.errorbar(i + 0.18, tests.mean(), yerr=std, fmt="D", color=color, markersize=5,
                         capsize=4, zorder=3)
    seeds = sorted({int(r["seed"]) for r in rows})
    for seed in seeds:  # the pairing: the same seed across variants
        pairs = [(variants.index(r["variant"]), float(r["test_acc"])) for r in rows
                 if int(r["seed"]) == seed]
        if len(pairs) > 1:
            xs, ys = zip(*sorted(pairs))
            ax_test.plot(xs, ys, color="grey", alpha=0.4, linewidth=0.8, zorder=1)
    epochs = max(len(_val_accs(r)) for r in rows)
    ax_val.set(xlabel="epoch", ylabel="validation accuracy",
               title="validation accuracy, one line per seed")
    ax_val.set_xticks(range(1, epochs + 1))
    ax_val.grid(alpha=0.3)
    ax_val.legend(fontsize=8, loc="lower right")
    ax_test.set_xticks(range(len(variants)),
                       [labels.get(v, v).split(":")[0] for v in variants])
    ax_test.set_xlim(-0.5, len(variants) - 0.3)
    ax_test.set(ylabel="test accuracy", title="test accuracy per run; ◆ mean ± std")
    ax_test.grid(alpha=0.3, axis="y")
    counts = f"{len(variants)} variants × {len(seeds)} seeds"
    title = f"{title}: {counts}" if title else counts
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, title=title)
