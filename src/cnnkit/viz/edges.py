"""Figures for edge detection: the classic maps, and a learned kernel beside the classic one."""
from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.viz.inside import _show
from cnnkit.viz.plots import plt, save_figure


def plot_edge_maps(image: torch.Tensor, maps: dict[str, torch.Tensor], kernel_name: str,
                   path) -> Path:
    """Original, vertical edges, horizontal edges, gradient magnitude side by side."""
    panels = [("original", image, "gray"), ("vertical edges", maps["vertical"], "gray"),
              ("horizontal edges", maps["horizontal"], "gray"),
              ("gradient magnitude", maps["magnitude"], "magma")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), layout="constrained")
    for ax, (title, img, cmap) in zip(axes, panels):
        _show(ax, img, cmap=cmap)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{kernel_name} kernels", fontsize=11)
    return save_figure(fig, path, dpi=110)


def plot_learned_kernel(learned: torch.Tensor, target: torch.Tensor, losses: list[float],
                        name: str, path) -> Path:
    """The learned 3×3 kernel beside the classic one (values printed), and the loss curve.

    Constrained layout makes room for the curve's axis labels, which otherwise overlapped the
    kernel beside it and were cut off at the bottom."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.3]})
    limit = float(target.abs().max())
    for ax, (title, kernel) in zip(axes, [("learned by gradient descent", learned), (name, target)]):
        ax.imshow(kernel.numpy(), cmap="coolwarm", vmin=-limit, vmax=limit)
        for i in range(kernel.shape[0]):
            for j in range(kernel.shape[1]):
                ax.text(j, i, f"{float(kernel[i, j]):.2f}", ha="center", va="center", fontsize=10)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[2].semilogy(losses)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("MSE to the classic response")
    axes[2].set_title("training loss", fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_conv(image: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor, args, path) -> Path:
    """Input, kernel (channel mean) and output of one convolution, with its settings."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 1.2, 3]},
                             layout="constrained")
    _show(axes[0], image)
    axes[0].set_title(f"input {tuple(image.shape)}", fontsize=9)
    shown = kernel.mean(0)
    axes[1].imshow(shown.numpy(), cmap="coolwarm")
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            axes[1].text(j, i, f"{float(shown[i, j]):.1f}", ha="center", va="center", fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title(f"kernel {tuple(kernel.shape)}", fontsize=9)
    _show(axes[2], out, cmap="gray")
    axes[2].set_title(f"output {tuple(out.shape)}", fontsize=9)
    fig.suptitle(f"{args.mode}, stride {args.stride}, padding {args.padding}, "
                 f"dilation {args.dilation}", fontsize=10)
    return save_figure(fig, path, dpi=110)
