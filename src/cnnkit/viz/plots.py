"""Figures of a training run: learning curves, the confusion matrix, predictions on test images.

Every function renders with matplotlib's Agg backend (no display needed), writes its PNG atomically
(a crash leaves the previous file, never half a PNG), closes its figure and returns the path.
The figure's title is also stored as the PNG's `Title` text chunk, so a file describes itself.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnnkit.utils import CnnkitError, atomic_path  # noqa: E402

WRONG_COLOR = "red"  # titles and frames of misclassified images


def save_figure(fig, path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Write `fig` as a PNG at `path` atomically and close it, even when saving fails."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Title": title} if title else None)
    finally:
        plt.close(fig)
    return path


def _numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise CnnkitError(f"{what} must be a tensor or an array, got {type(x).__name__}") from err


# --- learning curves ---

def _series(history: list[dict], epochs: list, key: str) -> tuple[list, list]:
    """The epochs where `key` has a value: validation metrics are None without a validation split."""
    pairs = [(e, float(row[key])) for e, row in zip(epochs, history)
             if row.get(key) is not None and not math.isnan(float(row[key]))]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_curves(history: list[dict], path) -> Path:
    """Loss (left) and accuracy (right) of the train and validation splits against the epoch.

    `history`: one dict per epoch with `epoch`, `train_loss`, `train_acc`, `val_loss`, `val_acc`;
    the `val_*` values may be missing or None when there is no validation split.
    """
    if not history:
        raise CnnkitError("plot_curves got an empty history; train for at least one epoch first")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    plotted = 0
    for ax, metric, label in zip(axes, ("loss", "acc"), ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "--s")):
            xs, ys = _series(history, epochs, f"{split}_{metric}")
            if xs:  # markers, so that a single epoch still shows
                ax.plot(xs, ys, style, markersize=4, label=split)
                plotted += 1
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not plotted:
        plt.close(fig)
        raise CnnkitError("history has no train_loss, train_acc, val_loss or val_acc values to plot")
    return save_figure(fig, path, title=f"learning curves, {len(history)} epochs")


# --- confusion matrix ---

def plot_confusion(cm: torch.Tensor | np.ndarray, classes: list[str], path, *,
                   normalize: bool = True) -> Path:
    """Confusion matrix, rows = true class, columns = predicted class, with a colourbar.

    `normalize`: colour each row by its fraction of the true class (recall on the diagonal), so
    rare classes are as readable as common ones; the cells are annotated with the raw counts
    (up to 20 classes). The title gives the overall accuracy, trace / total.
    """
    counts = _numpy(cm, "the confusion matrix").astype(np.float64)
    k = len(classes)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise CnnkitError(f"the confusion matrix must be square (K, K), got shape {counts.shape}")
    if counts.shape[0] != k:
        raise CnnkitError(f"the confusion matrix is {counts.shape[0]}×{counts.shape[0]} but "
                          f"{k} class names were given; pass one name per class")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total > 0 else 0.0
    if normalize:
        row_sums = counts.sum(1, keepdims=True)
        shown = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    else:
        shown = counts

    side = max(5.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    vmax = 1.0 if normalize else max(shown.max(), 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalize else "count")
    if k <= 50:  # beyond that the names would overlap
        ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(k), classes)
    if k <= 20:
        integral = np.all(counts == np.round(counts))
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{int(n)}" if integral else f"{n:.2g}", ha="center", va="center",
                    fontsize=8 if k <= 12 else 6,
                    color="white" if shown[i, j] > 0.5 * vmax else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    title = f"accuracy {accuracy:.2%} ({int(np.trace(counts)):,} / {int(total):,})"
    ax.set_title(title)
    return save_figure(fig, path, title=f"confusion matrix, {title}")


# --- predictions ---

def _per_channel(values, channels: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float32).flatten()
    if v.numel() not in (1, channels):
        raise CnnkitError(f"{what} has {v.numel()} values for {channels}-channel images; "
                          f"give one per channel")
    return v.reshape(-1, 1, 1)  # (C or 1, 1, 1): broadcasts over (N, C, H, W)


def display_images(images: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) images → (N, H, W, C) floats in [0, 1] for `imshow`.

    uint8 images are raw pixels (mean/std ignored); float images are un-normalised with mean/std
    when given, else, if outside [0, 1], stretched per image to [0, 1].
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, 1, H, W)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise CnnkitError(f"images must be (N, C, H, W) with 1 or 3 channels, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    else:
        x = x.float()
        if mean is not None or std is not None:
            channels = x.shape[1]
            std_ = _per_channel(1.0 if std is None else std, channels, "std")
            mean_ = _per_channel(0.0 if mean is None else mean, channels, "mean")
            x = x * std_ + mean_
        elif x.numel() and (x.min() < 0 or x.max() > 1):
            lo = x.amin(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp(min=1e-12)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)


def _class_indices(values, n: int, num_classes: int, what: str) -> list[int]:
    idx = _numpy(values, what).astype(np.int64).reshape(-1).tolist()
    if len(idx) != n:
        raise CnnkitError(f"{n} images but {len(idx)} {what}; pass one per image")
    bad = [i for i in idx if not 0 <= i < num_classes]
    if bad:
        raise CnnkitError(f"{what} contain class {bad[0]}, outside the {num_classes} class names")
    return idx


def plot_predictions(images: torch.Tensor, preds, labels, classes: Sequence[str], path, *,
                     probs=None, mean=None, std=None, ncols: int = 8) -> Path:
    """A grid of test images, each titled "pred (p%) / true"; wrong ones get a red title and frame.

    `images`: (N, C, H, W) uint8 or float (grey or RGB); float ones normalised with `mean`/`std`
    are un-normalised for display. `probs`: the predicted class's probability, (N,), or all
    class probabilities, (N, K), from which the predicted class's is taken.
    """
    pics = display_images(images, mean, std)  # (N, H, W, C)
    n = len(pics)
    if n == 0:
        raise CnnkitError("plot_predictions got no images")
    preds = _class_indices(preds, n, len(classes), "predictions")
    labels = _class_indices(labels, n, len(classes), "labels")
    confidence = None
    if probs is not None:
        p = _numpy(probs, "probs").astype(np.float64)
        if p.ndim == 2 and p.shape == (n, len(classes)):
            p = p[np.arange(n), preds]
        if p.shape != (n,):
            raise CnnkitError(f"probs must be (N,) or (N, {len(classes)}), got {p.shape}")
        confidence = p

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = 1.9 * nrows + 0.4  # inches: a row of tiles with their titles, plus the suptitle
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(1.7 * ncols, 3.4), height),
                             squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1 / height, top=1 - 0.6 / height,
                        wspace=0.15, hspace=0.35)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        pic = pics[i]
        if pic.shape[2] == 1:
            ax.imshow(pic[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(pic, interpolation="nearest")
        wrong = preds[i] != labels[i]
        shown_p = "" if confidence is None else f" ({confidence[i]:.0%})"
        ax.set_title(f"{classes[preds[i]]}{shown_p} / {classes[labels[i]]}", fontsize=8,
                     color=WRONG_COLOR if wrong else "black")
        for spine in ax.spines.values():  # only the wrong ones are framed
            spine.set_visible(wrong)
            spine.set_color(WRONG_COLOR)
            spine.set_linewidth(3)
    errors = sum(p != t for p, t in zip(preds, labels))
    title = f"{errors} of {n} wrong (pred / true)"
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, title=title)
