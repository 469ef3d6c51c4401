"""CycleGAN figures: each epoch's translations of fixed test images, and a run's loss curves."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from cnnkit.utils import CnnkitError
from cnnkit.viz.grid import make_grid
from cnnkit.viz.plots import plt, save_figure

# metrics.csv columns of `cnnkit cyclegan train` → (panel, label); the authors' names in brackets
_CURVES = {"adv_ab": ("adversarial", "G: A→B [G_A]"), "adv_ba": ("adversarial", "F: B→A [G_B]"),
           "d_a": ("adversarial", "D_A [D_B]"), "d_b": ("adversarial", "D_B [D_A]"),
           "cycle_a": ("cycle and identity", "cycle A→B→A"),
           "cycle_b": ("cycle and identity", "cycle B→A→B"),
           "idt_a": ("cycle and identity", "identity G(b)"),
           "idt_b": ("cycle and identity", "identity F(a)")}


def plot_translations(rows: dict[str, torch.Tensor], path, *, domains=("A", "B"),
                      title: str | None = None) -> Path:
    """One panel per direction, each a grid whose rows are fixed test images: input | translated |
    reconstructed. rows: {"AtoB": (N, 3, C, H, W), "BtoA": ...} in [-1, 1]."""
    names = {"AtoB": (domains[0], domains[1]), "BtoA": (domains[1], domains[0])}
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 1.4 * max(
        len(r) for r in rows.values()) + 0.8), layout="constrained", squeeze=False)
    for ax, (direction, images) in zip(axes[0], rows.items()):
        if images.dim() != 5 or images.shape[1] != 3:
            raise CnnkitError(f"translation rows must be (N, 3, C, H, W), got "
                              f"{tuple(images.shape)}")
        grid = make_grid(images.flatten(0, 1), nrow=3, value_range=(-1.0, 1.0))  # (C, H', W')
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        src, dst = names[direction]
        ax.set_title(f"{src} → {dst} → {src}\ninput | translated | reconstructed", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, title=title)


def read_metrics(path) -> list[dict[str, float]]:
    """metrics.csv of a run as rows of floats (an empty cell: None)."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"{path} not found: a run writes metrics.csv after its first epoch")
    with path.open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_cyclegan_losses(metrics_csv, path) -> Path:
    """Per-epoch mean losses from a CycleGAN run's metrics.csv: the adversarial terms (G's and the
    discriminators') on the left, the weighted cycle and identity terms on the right."""
    rows = read_metrics(metrics_csv)
    if not rows or not any(key in rows[0] for key in _CURVES):
        raise CnnkitError(f"{metrics_csv} holds no CycleGAN losses ({', '.join(_CURVES)})")
    epochs = [row["epoch"] for row in rows]
    panels = ("adversarial", "cycle and identity")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for key, (panel, label) in _CURVES.items():
        if key in rows[0]:
            axes[panels.index(panel)].plot(epochs, [row[key] for row in rows], "-o", markersize=3,
                                           label=label)
    for ax, panel in zip(axes, panels):
        ax.set(xlabel="epoch", ylabel="mean loss", title=panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title=f"CycleGAN losses, {len(rows)} epochs")
