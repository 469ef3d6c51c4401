"""Where a sequence reader looked: each image above its attention weights over the image columns.

For `cnn_attention_seq` (Bahdanau-style soft attention over encoder columns): row t of the heat
map is the decoder's weight distribution α_t over the L columns while it emitted token t, drawn
on the image's own x axis, so column l spans pixels l·W/L … (l+1)·W/L and lies exactly under the
part of the image it summarises. A reader that has learned to read shows a staircase: one bright
cell per digit, moving right, then diffuse rows for "end".
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cnnkit.utils import CnnkitError
from cnnkit.viz.plots import WRONG_COLOR, _numpy, display_images, plt, save_figure  # Agg pyplot

HEATMAP_CMAP = "viridis"  # perceptually uniform; its top colour (yellow) is absent from the images


def _tokens(values, shape: tuple[int, int], num_classes: int, what: str) -> np.ndarray:
    tokens = _numpy(values, what)
    if tokens.shape != shape:
        raise CnnkitError(f"{what} must be (N, T) = {shape}, like the attention's first two "
                          f"dimensions, got {tokens.shape}")
    tokens = tokens.astype(np.int64)
    outside = tokens[(tokens < 0) | (tokens >= num_classes)]
    if outside.size:
        raise CnnkitError(f"{what} hold class {int(outside[0])}, outside the {num_classes} "
                          f"class names; pass one name per class")
    return tokens


def plot_attention(images, attention, preds, labels, classes: Sequence[str], path, *,
                   max_sequences: int = 6) -> Path:
    """Draw up to `max_sequences` images (N, 1|3, H, W), each above its (T, L) attention map.

    `attention`: (N, T, L) weights, e.g. `model.last_attention`; `preds` / `labels`: (N, T)
    class indices (labels may be None). Heat-map rows are labelled with the predicted token and,
    given labels, the true one in brackets, in red where they differ; the title of each image
    reads the whole predicted sequence (tokens named "end" are left out). Returns `path`.
    """
    pics = display_images(images)  # (N, H, W, C) in [0, 1]
    weights = _numpy(attention, "attention").astype(np.float64)
    if weights.ndim != 3 or len(weights) != len(pics):
        raise CnnkitError(f"attention must be (N, T, L) with N = {len(pics)} images, got "
                          f"{weights.shape}")
    n, steps, columns = weights.shape
    if n == 0 or steps == 0 or columns == 0:
        raise CnnkitError(f"plot_attention got nothing to draw: attention of shape {weights.shape}")
    preds = _tokens(preds, (n, steps), len(classes), "predictions")
    labels = None if labels is None else _tokens(labels, (n, steps), len(classes), "labels")

    shown = min(n, max_sequences)
    height, width = pics.shape[1:3]
    image_in, row_in = 7.2 * height / width, 0.24  # inches: ~ true aspect in the ~7.2" axes
    ratios = [r for _ in range(shown) for r in (image_in, row_in * steps)]
    fig, axes = plt.subplots(2 * shown, 1, figsize=(8.0, sum(ratios) + 0.45 * shown + 0.4),
                             gridspec_kw={"height_ratios": ratios}, layout="constrained",
                             squeeze=False)
    for i in range(shown):
        ax_image, ax_map = axes[2 * i, 0], axes[2 * i + 1, 0]
        pic = pics[i, ..., 0] if pics.shape[-1] == 1 else pics[i]
        # Both axes span x = 0 … width in pixels, one above the other in the same layout column
        # (constrained layout gives them the same left and right edges): heat-map column l
        # covers [l·W/L, (l+1)·W/L], under the pixels it summarises.
        ax_image.imshow(pic, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0),
                        aspect="auto", interpolation="nearest")
        ax_map.imshow(weights[i], cmap=HEATMAP_CMAP, vmin=0, vmax=max(weights[i].max(), 1e-12),
                      extent=(0, width, steps, 0), aspect="auto", interpolation="nearest")
        wrong = labels is not None and bool((preds[i] != labels[i]).any())
        read = " ".join(classes[t] for t in preds[i] if classes[t] != "end") or "∅"
        title = f"read {read}"
        if labels is not None:
            title += "   true " + (" ".join(classes[t] for t in labels[i] if classes[t] != "end")
                                   or "∅")
        ax_image.set_title(title, fontsize=10, color=WRONG_COLOR if wrong else "black")
        ax_image.set(xticks=[], yticks=[])
        ax_map.set_yticks(np.arange(steps) + 0.5, [
            classes[p] if labels is None else f"{classes[p]} ({classes[y]})"
            for p, y in zip(preds[i], preds[i] if labels is None else labels[i])], fontsize=8)
        if labels is not None:
            for tick, p, y in zip(ax_map.get_yticklabels(), preds[i], labels[i]):
                tick.set_color(WRONG_COLOR if p != y else "black")
        ax_map.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel(f"image column (pixels); {columns} attention columns of "
                           f"{width / columns:g} px", fontsize=8)
    return save_figure(fig, path, title=f"attention over image columns, {shown} of {n} sequences")
