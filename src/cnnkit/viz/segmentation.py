"""Segmentation figures: masks as colour overlays on their images, and the per-class IoU chart."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cnnkit.viz.plots import plt, save_figure

OVERLAY_ALPHA = 0.5  # share of the class colour over the image


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) float RGB in 0..1: tab10/tab20, distinct for up to 20 classes, then cycling."""
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    return np.array([cmap(i % cmap.N)[:3] for i in range(num_classes)])


def overlay(image: torch.Tensor, mask: torch.Tensor, num_classes: int, *,
            ignore_index: int = 255, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 image (C, H, W) and class mask (H, W) → float RGB (H, W, 3) in 0..1, each labelled
    pixel tinted with its class colour; void (ignore_index) pixels are left as they are."""
    rgb = image.float().div(255).numpy()
    rgb = np.repeat(rgb, 3, axis=0) if rgb.shape[0] == 1 else rgb[:3]
    rgb = rgb.transpose(1, 2, 0)  # (H, W, 3)
    labels = mask.numpy()
    labelled = labels != ignore_index
    colours = class_colours(num_classes)[np.where(labelled, labels, 0)]  # (H, W, 3)
    out = rgb.copy()
    out[labelled] = (1 - alpha) * rgb[labelled] + alpha * colours[labelled]
    return out


def plot_overlays(images: torch.Tensor, truths: torch.Tensor, predictions: torch.Tensor,
                  classes: Sequence[str], path, *, ignore_index: int = 255,
                  names: Sequence[str] | None = None) -> Path:
    """One row per image: the image, the true mask over it, the predicted mask over it."""
    n, k = len(images), len(classes)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False, layout="constrained")
    for row in range(n):
        image = images[row]
        plain = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        panels = [(plain, names[row] if names is not None else "image"),
                  (overlay(image, truths[row], k, ignore_index=ignore_index), "truth"),
                  (overlay(image, predictions[row], k, ignore_index=ignore_index), "prediction")]
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in class_colours(k)]
    fig.legend(handles, classes, loc="outside lower center", ncol=min(k, 6), fontsize=8)
    return save_figure(fig, path, title="image, true mask, predicted mask")


def plot_cells(images: torch.Tensor, truths: torch.Tensor, cell_probability: torch.Tensor,
               path) -> Path:
    """ISBI-style cell segmentations, one row per image: the image, the true cells, the cells of
    P(cell) > 0.5 and those of the seeded watershed (`watershed_cells`), each cell in its own
    colour (membrane black), titled with its foreground-restricted Rand F-score."""
    from skimage.color import label2rgb  # noqa: PLC0415 (imported on first use: slow)
    from skimage.measure import label  # noqa: PLC0415

    from cnnkit.train.seg_metrics import isbi_label_scores, watershed_cells  # noqa: PLC0415
    truths, probability = truths.numpy(), cell_probability.float().numpy()
    flooded = watershed_cells(probability)  # (N, H, W)
    fig, axes = plt.subplots(len(images), 4, figsize=(12, 3 * len(images)), squeeze=False,
                             layout="constrained")
    for row, image in enumerate(images):
        thresholded = label(probability[row] > 0.5, connectivity=1)
        panels = [(image[0].numpy(), "image"),
                  (label(truths[row] == 1, connectivity=1), "true cells")]
        for cells, name in ((thresholded, "P(cell) > 0.5"), (flooded[row], "seeded watershed")):
            rand_f = isbi_label_scores(cells, truths[row])["rand_f"]
            panels.append((cells, f"{name}: Rand F {rand_f:.3f}"))
        for col, (ax, (picture, title)) in enumerate(zip(axes[row], panels)):
            if col:  # a label image: one colour per cell, membrane black
                picture = label2rgb(picture, bg_label=0, bg_color=(0, 0, 0))
            ax.imshow(picture, cmap="gray" if col == 0 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    return save_figure(fig, path, title="cells: truth, thresholded map, seeded watershed")


def plot_class_iou(iou, classes: Sequence[str], path) -> Path:
    """Horizontal bars of each class's IoU, with the mean (mIoU) as a line."""
    values = np.asarray(torch.as_tensor(iou, dtype=torch.float64))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(classes) + 1.2), layout="constrained")
    ax.barh(range(len(classes)), np.nan_to_num(values), color=class_colours(len(classes)))
    ax.set_yticks(range(len(classes)), classes)
    ax.invert_yaxis()
    mean = np.nanmean(values)
    ax.axvline(mean, color="black", linestyle="--", label=f"mIoU {mean:.3f}")
    for i, v in enumerate(values):
        ax.text(min(np.nan_to_num(v) + 0.01, 0.9), i, "absent" if np.isnan(v) else f"{v:.3f}",
                va="center", fontsize=8)
    ax.set(xlim=(0, 1), xlabel="IoU", title="test IoU per class")
    ax.legend(loc="lower right")
    return save_figure(fig, path, title="per-class IoU")


def save_rgb(rgb: np.ndarray, path) -> Path:
    """A float RGB (H, W, 3) image in 0..1 as a PNG at its own size, written atomically."""
    from PIL import Image  # noqa: PLC0415

    from cnnkit.utils import atomic_path  # noqa: PLC0415
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)
