"""Seeing inside a trained network: kernels, feature maps, gradient saliency and Grad-CAM.

- Saliency: |∂y_c/∂x| maxed over colour channels (Simonyan et al. 2014,
  https://arxiv.org/abs/1312.6034).
- Grad-CAM: ReLU(Σ_k α_k A^k) with α_k the spatial mean of ∂y_c/∂A^k over the last conv layer's
  rectified maps A (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391), each unit placed at
  its receptive field's centre on the input.
Both differentiate the pre-softmax score y_c of the class (`class_scores`), never a probability.
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


def class_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's pre-softmax class scores (N, classes) for `x`, graph kept for backward.

    Both papers differentiate the unnormalised score y_c, not a probability. For a model ending
    in a softmax (the chapter's LeNet ends in nn.LogSoftmax) the gradient of log p_c is
    Σ_{j≠c} p_j (∇y_c − ∇y_j): it vanishes as p_c → 1 (in float32 it is exactly 0 once
    1 − p_c rounds away), so a confidently recognised digit would be "explained" by a blank map.
    The input of a final nn.LogSoftmax / nn.Softmax module is therefore taken as the score; a
    model whose output looks like (log-)probabilities without such a module is refused, since
    its scores cannot be recovered from outside.
    """
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (output, input) of every softmax module
    hooks = [m.register_forward_hook(lambda _m, inp, out: seen.append((out, inp[0])))
             for m in model.modules() if isinstance(m, (nn.LogSoftmax, nn.Softmax))]
    try:
        out = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    for normalised, logits in seen:
        if normalised is out:  # the model's output is this module's output
            return logits
    if out.dim() == 2 and out.shape[1] > 1:
        rows = out.detach().double()
        log_probs = rows.logsumexp(1).abs().max() < 1e-4
        probs = rows.min() >= 0 and (rows.sum(1) - 1).abs().max() < 1e-4
        if log_probs or probs:
            raise CnnkitError(f"{type(model).__name__} outputs {'log-' if log_probs else ''}"
                              "probabilities from a functional softmax; saliency needs the "
                              "pre-softmax scores: end the model with an nn.LogSoftmax module")
    return out


def saliency(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, int]:
    """|∂y_c/∂x| of the pre-softmax score y_c, maxed over channels: (H, W) for one image (1, C, H, W)."""
    x = x.clone().requires_grad_(True)
    scores = class_scores(model, x)
    target = int(scores.argmax(1)) if target is None else target
    scores[0, target].backward()
    return x.grad.abs().amax(1)[0], target  # (H, W)


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None,
             layer: str | None = None) -> tuple[torch.Tensor, int]:
    """Grad-CAM of the pre-softmax score y_c, in [0, 1] at the input's resolution, (H, W), for
    one image (1, C, H, W). All zeros when no location has positive evidence for the class.

    The maps A are the output of the module named `layer`, by default the last conv layer's
    *rectified* maps: the last tensor in the forward pass with that conv's output shape, i.e.
    after its norm, activation and residual sum (LeNet: relu2, 50×8×8; ResNet: layer4). Taken
    before the ReLU, most of A is negative and the weighted sum is clipped to a blank map.
    """
    target_name, module = _cam_layer(model, layer)
    x = x.detach().clone().requires_grad_(True)  # a graph even when every weight is frozen
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, _i, out: outputs.append((m, out)))
             for m in model.modules() if not list(m.children()) or m is module]
    try:
        scores = class_scores(model, x)
    finally:
        for h in hooks:
            h.remove()
    chosen = [out for m, out in outputs if m is module]
    if not chosen or not isinstance(chosen[-1], torch.Tensor) or chosen[-1].dim() != 4:
        raise CnnkitError(f"layer '{target_name}' does not output a (N, C, H, W) feature map")
    acts = chosen[-1]
    if layer is None:
        acts = [out for _m, out in outputs
                if isinstance(out, torch.Tensor) and out.shape == acts.shape][-1]
    target = int(scores.argmax(1)) if target is None else target
    grads, = torch.autograd.grad(scores[0, target], acts)  # (1, K, h, w), like acts
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1): α_k
    cam = F.relu((alpha * acts).sum(1))[0].detach()  # (h, w)
    cam = place_map(cam, *_geometry(model, x, cam.shape))
    return cam / cam.max().clamp(min=1e-12), target


def _cam_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    if layer is None:
        return last_conv(model)
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise suggest(layer, [n for n in modules if n], "layer")
    return layer, modules[layer]


def _geometry(model: nn.Module, x: torch.Tensor, hw) -> tuple[tuple, tuple, tuple]:
    """(input size, centre of the first unit, jump) per axis for a map of size `hw`: from the
    last conv/pool layer producing that size (cnnkit.ops.receptive_field)."""
    from cnnkit.ops.receptive_field import receptive_fields  # noqa: PLC0415
    rows = [r for r in receptive_fields(model, tuple(x.shape[1:])) if r.out_size == tuple(hw)]
    if not rows:  # no layer of that size: spread the map evenly over the image
        return tuple(x.shape[-2:]), tuple((n / m - 1) / 2 for n, m in zip(x.shape[-2:], hw)), \
            tuple(n / m for n, m in zip(x.shape[-2:], hw))
    return tuple(x.shape[-2:]), rows[-1].start, rows[-1].jump


def place_map(cam: torch.Tensor, size, start, jump) -> torch.Tensor:
    """A (h, w) map of units onto the (H, W) input, each unit at the centre of its receptive
    field (start + i·jump input pixels): linear between centres, fading to 0 one jump beyond the
    outermost ones. A plain resize would stretch the 8×8 map of LeNet's valid convs (centres at
    pixels 6.5..20.5) over all 28 pixels, moving the heat up to 5 pixels out onto the background.
    """
    weights = []
    for n_pixels, n_units, first, step in zip(size, cam.shape, start, jump):
        centres = first + step * torch.arange(n_units, dtype=torch.float32)  # (units,)
        pixels = torch.arange(n_pixels, dtype=torch.float32)[:, None]  # (pixels, 1)
        weights.append((1 - (pixels - centres).abs() / step).clamp(min=0))  # (pixels, units)
    return weights[0] @ cam.float() @ weights[1].T  # (H, h) @ (h, w) @ (w, W) → (H, W)


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
    """A conv layer's kernels as a grid, each tile titled with its output-channel index, all on
    one colour scale: grey kernels (one input channel, or the mean over the input channels) in a
    diverging map centred on 0 with a colour bar; RGB kernels as colour, 0.5 + w / (2·max|w|)."""
    name, conv = find_conv(model, layer)
    weight = conv.weight.detach().float()
    w = weight[:max_filters]  # (O, I, kh, kw)
    rgb = w.shape[1] == 3
    tiles = w if rgb else w.mean(1)  # (O, 3, kh, kw) or (O, kh, kw)
    limit = float(tiles.abs().max()) or 1.0  # one scale for every tile, so they compare
    cols = min(8, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 1.2, 1.4 * rows + 0.7),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, tile in enumerate(tiles):
        ax = axes.flat[i]
        if rgb:
            ax.imshow((0.5 + tile.permute(1, 2, 0) / (2 * limit)).clamp(0, 1).numpy(),
                      interpolation="nearest")  # (kh, kw, 3)
        else:
            shown = ax.imshow(tile.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit,
                              interpolation="nearest")
        ax.set_title(f"#{i}", fontsize=9)
    if rgb:
        note = f"; RGB shown as 0.5 + w/(2·{limit:.3g})"
    else:
        label = "weight" if w.shape[1] == 1 else f"mean weight over {w.shape[1]} input channels"
        fig.colorbar(shown, ax=axes, shrink=0.8, label=label)
        note = "" if w.shape[1] == 1 else f", mean over {w.shape[1]} input channels"
    shown_count = f"filters 0–{len(tiles) - 1} of {len(weight)}" if len(tiles) < len(weight) \
        else f"{len(tiles)} filters"
    fig.suptitle(f"{name}: {tuple(weight.shape)} kernels, {shown_count}{note}", fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_feature_maps(maps: list[tuple[str, torch.Tensor]], image: torch.Tensor, path,
                      per_stage: int = 8, max_stages: int = 8) -> Path:
    """One row per stage: the input, then the first `per_stage` channels, titled with the shape.

    A deep model has dozens of stages (ResNet-50: 70 convs and pools); at most `max_stages`
    rows, evenly spaced in depth and always including the last, keep the figure readable
    (≤ ~1,300 px tall). Each map is scaled to its own range (viridis: low → high).
    """
    total = len(maps)
    if total > max_stages:
        picks = sorted({round(k * (total - 1) / (max_stages - 1)) for k in range(max_stages)})
        maps = [maps[k] for k in picks]
    rows = len(maps) + 1
    fig, axes = plt.subplots(rows, per_stage, figsize=(1.3 * per_stage, 1.45 * rows + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], image)
    axes[0, 0].set_title(f"input {tuple(image.shape)}", fontsize=9, loc="left")
    for r, (name, fmap) in enumerate(maps, start=1):
        fmap = fmap[0]  # (C, H, W) of the first image
        for c in range(min(per_stage, fmap.shape[0])):
            _show(axes[r, c], fmap[c], cmap="viridis")
        axes[r, 0].set_title(f"{name} {tuple(fmap.shape)}", fontsize=9, loc="left")
    shown = f"{len(maps)} of {total} stages, evenly spaced" if len(maps) < total \
        else f"all {total} stages"
    fig.suptitle(f"feature maps: {shown}; first {per_stage} channels each", fontsize=10)
    return save_figure(fig, path, dpi=100)


def plot_heatmaps(image: torch.Tensor, sal: torch.Tensor, cam: torch.Tensor, title: str,
                  path) -> Path:
    """Input, gradient saliency |∂y_c/∂x| and Grad-CAM overlaid on the input, with colour bars."""
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), layout="constrained")
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=10)
    shown = axes[1].imshow(sal.numpy(), cmap="hot", vmin=0, interpolation="nearest")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.colorbar(shown, ax=axes[1], shrink=0.85, label="|∂ score / ∂ pixel|")
    axes[1].set_title("gradient saliency", fontsize=10)
    _show(axes[2], image)
    shown = axes[2].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                           interpolation="bilinear")
    fig.colorbar(shown, ax=axes[2], shrink=0.85, label="Grad-CAM (max = 1)")
    axes[2].set_title("Grad-CAM", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, title=title, dpi=110)
