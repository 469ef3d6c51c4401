"""The learning-rate range test's curve (`cnnkit lr-find`, see cnnkit.train.lr_find)."""
from __future__ import annotations

from pathlib import Path

from cnnkit.utils import CnnkitError
from cnnkit.viz.plots import plt, save_figure


def plot_lr_find(result, path: str | Path) -> Path:
    """Raw (faint) and smoothed loss against lr on a log axis, the suggestion marked."""
    if not result.lrs:
        raise CnnkitError("the range test recorded no finite loss: nothing to plot; "
                          "lower --start-lr")
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    title = "lr range test: no suggestion"
    if result.suggestion is not None:
        i = result.lrs.index(result.suggestion) if result.suggestion in result.lrs else None
        if i is not None:  # the steepest-descent point lies on the curve
            ax.plot([result.suggestion], [result.smoothed[i]], "o", color="tab:red",
                    label=f"suggestion {result.suggestion:.1e}")
        else:  # min/10 falls between the points: a vertical line
            ax.axvline(result.suggestion, color="tab:red", ls="--",
                       label=f"suggestion {result.suggestion:.1e}")
        title = f"lr range test: suggested lr {result.suggestion:.1e}"
    # A diverged tail reaches huge losses: keep the informative part (up to 1.5× the first loss).
    low, high = min(result.losses + result.smoothed), max(result.losses)
    high = min(high, 1.5 * result.smoothed[0])
    if high > low:
        margin = 0.05 * (high - low)
        ax.set_ylim(low - margin, high + margin)
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    ax.legend()
    return save_figure(fig, path, title=title)
