"""Seeing inside a trained network: kernels, feature maps, gradient saliency and Grad-CAM.

- Saliency: |∂y_c/∂x| maxed over colour channels (Simonyan et al. 2014,
  https://arxiv.org/abs/1312.6034).
- Grad-CAM: ReLU(Σ_k α_k A^k) with α_k the spatial mean of ∂y_c/∂A^k over the last conv layer's
  maps A (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391), upsampled to the input.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.utils import CnnkitError, suggest
from cnnkit.viz.plots import plt, save_figure

STAGE_TYPES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def find_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The named conv layer, or the first one when no name is given."""
    convs = {name: m for name, m in model.named_modules() if _is_conv(m)}
    if not convs:
        raise CnnkitError(f"{type(model).__name__} has no convolution layer")
    if layer is None:
        return next(iter(convs.items()))
    if layer not in convs:
        raise suggest(layer, convs, "conv layer")
    return layer, convs[layer]


def last_conv(model: nn.Module) -> tuple[str, nn.Module]:
    return list((n, m) for n, m in model.named_modules() if _is_conv(m))[-1]


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) or (hasattr(module, "weight") and
                                             type(module).__name__.endswith("Conv2d"))


def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Output of every conv and pooling layer for one input batch, in execution order."""
    maps: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: maps.append((name, out.detach())))
             for name, m in model.named_modules()
             if isinstance(m, STAGE_TYPES) or _is_conv(m) or type(m).__name__.endswith("Pool2d")]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return maps


def saliency(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, int]:
    """|∂ score / ∂ input| maxed over channels: (H, W) for a single image (1, C, H, W)."""
    x = x.clone().requires_grad_(True)
    scores = model.eval()(x)
    target = int(scores.argmax(1)) if target is None else target
    scores[0, target].backward()
    return x.grad.abs().amax(1)[0], target  # (H, W)


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None,
             layer: str | None = None) -> tuple[torch.Tensor, int]:
    """Grad-CAM heat map in [0, 1] at the input's resolution, (H, W), for one image (1, C, H, W)."""
    name, conv = find_conv(model, layer) if layer else last_conv(model)
    store = {}

    def keep(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    hook = conv.register_forward_hook(keep)
    try:
        scores = model.eval()(x)
    finally:
        hook.remove()
    target = int(scores.argmax(1)) if target is None else target
    scores[0, target].backward()
    acts, grads = store["a"], store["a"].grad  # (1, K, h, w) each
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1): α_k
    cam = F.relu((alpha * acts).sum(1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max().clamp(min=1e-12)).detach(), target


# --- figures ---

def _show(ax, img: torch.Tensor, cmap="gray") -> None:
    """img: (C, H, W) or (H, W) float; rescaled to [0, 1] for display."""
    img = img.float()
    img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-12)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)  # (H, W, 3)
    ax.imshow(img.numpy(), cmap=cmap if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_filters(model: nn.Module, path, layer: str | None = None, max_filters: int = 64) -> Path:
    """A conv layer's kernels as a grid: RGB tiles for 3-channel input, else the input-mean."""
    name, conv = find_conv(model, layer)
    w = conv.weight.detach()[:max_filters]  # (O, I, kh, kw)
    tiles = w if w.shape[1] in (1, 3) else w.mean(1, keepdim=True)
    cols = min(8, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, tile in enumerate(tiles):
        _show(axes.flat[i], tile)
        axes.flat[i].axis("on")
    note = "" if w.shape[1] in (1, 3) else f", mean over {w.shape[1]} input channels"
    fig.suptitle(f"{name}: {tuple(conv.weight.shape)} kernels{note}", fontsize=9)
    return save_figure(fig, path, dpi=110)


def plot_feature_maps(maps: list[tuple[str, torch.Tensor]], image: torch.Tensor, path,
                      per_stage: int = 8) -> Path:
    """One row per stage: the input, then the first `per_stage` channels, titled with the shape."""
    rows = len(maps) + 1
    fig, axes = plt.subplots(rows, per_stage, figsize=(1.3 * per_stage, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], image)
    axes[0, 0].set_title(f"input {tuple(image.shape)}", fontsize=7, loc="left")
    for r, (name, fmap) in enumerate(maps, start=1):
        fmap = fmap[0]  # (C, H, W) of the first image
        for c in range(min(per_stage, fmap.shape[0])):
            _show(axes[r, c], fmap[c], cmap="viridis")
        axes[r, 0].set_title(f"{name} {tuple(fmap.shape)}", fontsize=7, loc="left")
    return save_figure(fig, path, dpi=110)


def plot_heatmaps(image: torch.Tensor, sal: torch.Tensor, cam: torch.Tensor, title: str,
                  path) -> Path:
    """Input, gradient saliency and Grad-CAM overlaid on the input."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    _show(axes[1], sal, cmap="hot")
    axes[1].set_title("gradient saliency", fontsize=9)
    _show(axes[2], image)
    axes[2].imshow(cam.numpy(), cmap="jet", alpha=0.45, interpolation="bilinear")
    axes[2].set_title("Grad-CAM", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
