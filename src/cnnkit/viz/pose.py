"""Pose figures: skeletons drawn on images, the maps a network predicts, PCK per joint."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cnnkit.viz.plots import plt, save_figure


def _draw(ax, joints: torch.Tensor, skeleton, colour: str, width: float) -> None:
    for a, b in skeleton:
        (xa, ya), (xb, yb) = joints[a].tolist(), joints[b].tolist()
        if all(v == v for v in (xa, ya, xb, yb)):  # NaN: a joint not found
            ax.plot([xa, xb], [ya, yb], color=colour, linewidth=width)
    found = torch.isfinite(joints[:, 0])
    ax.scatter(joints[found, 0], joints[found, 1], s=8, color=colour, zorder=3)


def plot_skeletons(images: Sequence[torch.Tensor], predicted: torch.Tensor,
                   truth: torch.Tensor | None, skeleton, path: Path, *, columns: int = 4) -> None:
    """Each image with its predicted skeleton (orange) and the annotated one (thin green)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(images[k].permute(1, 2, 0).numpy())
        if truth is not None:
            _draw(ax, truth[k], skeleton, "limegreen", 1.0)
        _draw(ax, predicted[k], skeleton, "orangered", 2.0)
    fig.suptitle("predicted (orange) and annotated (green) skeletons")
    fig.tight_layout()
    save_figure(fig, path, title="pose predictions", dpi=110)


def plot_people(image: torch.Tensor, people: torch.Tensor, skeleton, path: Path) -> Path:
    """One image with every person's skeleton (P, J, 2) in a colour of its own."""
    height, width = image.shape[-2:]
    fig, ax = plt.subplots(figsize=(max(3.0, width / 60), max(3.0, height / 60)))
    ax.imshow(image.permute(1, 2, 0).numpy())
    ax.axis("off")
    colours = plt.get_cmap("tab10")
    for k, joints in enumerate(people):
        _draw(ax, joints, skeleton, colours(k % 10), 2.0)
    ax.set_title(f"{len(people)} {'person' if len(people) == 1 else 'people'}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, title="pose", dpi=110)


def plot_maps(image: torch.Tensor, maps: torch.Tensor, fields: torch.Tensor | None,
              names: Sequence[str], path: Path) -> None:
    """The image, each joint's confidence map, and (bottom-up) the fields' magnitude per limb
    summed into one panel."""
    panels = len(names) + 1 + (fields is not None)
    columns = 6
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image.permute(1, 2, 0).numpy())
    axes.flat[0].set_title("image", fontsize=9)
    for j, name in enumerate(names):
        axes.flat[j + 1].imshow(maps[j].numpy(), cmap="magma", vmin=0, vmax=max(1e-6, float(maps.max())))
        axes.flat[j + 1].set_title(name, fontsize=9)
    if fields is not None:
        strength = fields.view(-1, 2, *fields.shape[-2:]).norm(dim=1).sum(dim=0)  # (h, w)
        axes.flat[len(names) + 1].imshow(strength.numpy(), cmap="viridis")
        axes.flat[len(names) + 1].set_title("affinity fields |L|", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, title="predicted maps of one image")


def plot_pck(per_joint: Sequence[float], names: Sequence[str], path: Path) -> None:
    """PCK@0.2 per joint as horizontal bars, the mean as a line."""
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 1.2))
    ax.barh(range(len(names)), per_joint, color="steelblue")
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=9)
    ax.invert_yaxis()
    mean = sum(per_joint) / max(len(per_joint), 1)
    ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PCK@0.2")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, title="PCK@0.2 per joint", dpi=110)
