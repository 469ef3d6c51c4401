"""Image grids, like torchvision's `make_grid` + `save_image`, for sample grids of generative models.

Without a title the PNG holds the grid pixel for pixel (no resampling, no axes), so a saved
grid can be read back and compared exactly; with a title matplotlib draws it above the grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit.utils import CnnkitError, atomic_path
from cnnkit.viz.plots import plt, save_figure  # pyplot, once the Agg backend is chosen


def make_grid(images: torch.Tensor, *, nrow: int = 8, padding: int = 2,
              value_range: tuple[float, float] | None = None, pad_value: int = 0) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (C, H', W') uint8 image, `nrow` images per row.

    uint8 images are taken as they are; float images are mapped from `value_range` (default
    (0, 1); (-1, 1) for tanh outputs) onto 0..255 and clipped. The layout is torchvision's: each
    tile at (padding + row·(H + padding), padding + col·(W + padding)).
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W) → (N, 1, H, W)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise CnnkitError(f"images must be a non-empty (N, C, H, W) batch with 1 or 3 channels, "
                          f"got {tuple(x.shape)}")
    if nrow < 1 or padding < 0:
        raise CnnkitError(f"need nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    if x.dtype != torch.uint8:
        lo, hi = value_range or (0.0, 1.0)
        if hi <= lo:
            raise CnnkitError(f"value_range must be (low, high) with low < high, got {value_range}")
        # torchvision's save_image rounding: ×255, +0.5, truncate
        x = ((x.float() - lo) / (hi - lo)).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding),
                      pad_value, dtype=torch.uint8)
    for k in range(n):
        top = padding + (k // cols) * (h + padding)
        left = padding + (k % cols) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[k]
    return grid


def image_grid(images: torch.Tensor, path, *, nrow: int = 8, padding: int = 2,
               title: str | None = None, value_range: tuple[float, float] | None = None,
               col_labels: list[str] | None = None, min_width: int = 600) -> Path:
    """Save `make_grid(images)` as a PNG at `path` (grey stays one channel) and return the path.

    With a `title` or `col_labels` (one per column: the class of a class-conditional grid) the
    grid is drawn by matplotlib, enlarged by an integer factor to at least `min_width` pixels.
    """
    grid = make_grid(images, nrow=nrow, padding=padding, value_range=value_range)
    pixels = grid.permute(1, 2, 0).numpy()  # (H', W', C)
    pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    cols = min(nrow, len(images))
    if col_labels is not None and len(col_labels) != cols:
        raise CnnkitError(f"{len(col_labels)} column labels for a grid of {cols} columns")
    if title is None and col_labels is None:
        path = Path(path)
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")
        return path
    # Small images (28×28 digits) are blown up by an integer factor so they stay crisp: a
    # 10-column grid of digits is 302 pixels wide, too small to read on a page.
    scale = max(1, math.ceil(min_width / pixels.shape[1]))
    dpi = 100
    title_px, label_px = (30 if title else 0), (22 if col_labels else 0)
    height, width = pixels.shape[0] * scale, pixels.shape[1] * scale
    total = height + title_px + label_px
    fig = plt.figure(figsize=(width / dpi, total / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / total))
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.axis("off")
    tile = images.shape[-1] + padding  # grid pixels from one column to the next
    for c, label in enumerate(col_labels or []):
        ax.text(padding + c * tile + images.shape[-1] / 2, -4, label, ha="center", va="bottom",
                fontsize=11, clip_on=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.15 * title_px / total)
    return save_figure(fig, path, title=title, dpi=dpi)
