"""Classic edge-detection kernels as data, and the edge maps they produce.

Naming: the `_X` kernels differentiate along x (across columns, left → right), so they respond to
**vertical** edges — a change of intensity from one column to the next, as at the border of a
standing bar. The `_Y` kernels (the transposes) differentiate along y (down the rows) and respond to
**horizontal** edges. Each derivative kernel is a smoothing [1, 2, 1]-like column times the
difference [−1, 0, 1]:

    Sobel   (Sobel & Feldman 1968)        smoothing [1, 2, 1]
    Prewitt (Prewitt 1970)                smoothing [1, 1, 1]
    Scharr  (Scharr 2000, "Optimale Operatoren in der digitalen Bildverarbeitung")  [3, 10, 3]

LAPLACIAN is the 4-neighbour second derivative ∂²/∂x² + ∂²/∂y², isotropic: it has no direction.
`gaussian_blur` is the smoothing on its own: a separable Gaussian of a given σ.

All kernels are applied as cross-correlation (what `nn.Conv2d` computes, see `cnnkit.ops.conv`),
so `SOBEL_X` gives a positive response where the image gets brighter from left to right; true
convolution would flip that sign.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.ops.conv import conv2d
from cnnkit.utils import CnnkitError, suggest

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0],
                        [-2.0, 0.0, 2.0],
                        [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.T.contiguous()
PREWITT_X = torch.tensor([[-1.0, 0.0, 1.0],
                          [-1.0, 0.0, 1.0],
                          [-1.0, 0.0, 1.0]])
PREWITT_Y = PREWITT_X.T.contiguous()
SCHARR_X = torch.tensor([[-3.0, 0.0, 3.0],
                         [-10.0, 0.0, 10.0],
                         [-3.0, 0.0, 3.0]])
SCHARR_Y = SCHARR_X.T.contiguous()
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0],
                          [1.0, -4.0, 1.0],
                          [0.0, 1.0, 0.0]])

# name -> (vertical-edge kernel, horizontal-edge kernel)
EDGE_KERNELS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
    "sobel": (SOBEL_X, SOBEL_Y),
    "prewitt": (PREWITT_X, PREWITT_Y),
    "scharr": (SCHARR_X, SCHARR_Y),
}
PADDINGS = ("replicate", "zeros", "valid")


def edge_maps(image: torch.Tensor, kernel: str | torch.Tensor = "sobel",
              horizontal: torch.Tensor | None = None, *,
              padding: str = "replicate") -> dict[str, torch.Tensor]:
    """Vertical edges, horizontal edges and gradient magnitude of a (C, H, W) or (H, W) image.

    `kernel`: a name in EDGE_KERNELS ("sobel", "prewitt", "scharr"), or a square vertical-edge
    kernel such as `SOBEL_X` with its horizontal partner in `horizontal` (default: its transpose).

    The chapter's channel rule: a filter spans all input channels. For a colour image the 3×3
    kernel becomes one filter of shape (1, C, 3, 3), the same kernel on every channel, so each
    output pixel *sums* the responses of the C channels — one edge map, not C of them.

    `padding`: "replicate" (default) keeps the size and repeats the border pixels, so the image
    frame itself shows no edge; "zeros" keeps the size with the chapter's zero padding (a bright
    image then gets a strong edge along its frame); "valid" pads nothing ((H−2) × (W−2) maps for
    a 3×3 kernel). Integer images (uint8) are scaled to [0, 1]; float images are used as they are.

    Returns {"vertical": (H', W'), "horizontal": (H', W'), "magnitude": √(v² + h²)}.
    """
    if isinstance(kernel, str):
        if kernel not in EDGE_KERNELS or horizontal is not None:
            raise suggest(kernel, EDGE_KERNELS, "edge kernel")
        kx, ky = EDGE_KERNELS[kernel]
    else:
        kx, ky = kernel, kernel.T if horizontal is None else horizontal
        if kx.dim() != 2 or kx.shape[0] != kx.shape[1] or kx.shape != ky.shape:
            raise CnnkitError(f"edge kernels must be two square 2-D tensors of one shape, got "
                              f"{tuple(kx.shape)} and {tuple(ky.shape)}")
    if padding not in PADDINGS:
        raise suggest(padding, PADDINGS, "edge padding")
    if image.dim() == 2:
        image = image.unsqueeze(0)                              # (1, H, W)
    if image.dim() != 3:
        raise CnnkitError(f"edge_maps expects an image of shape (C, H, W) or (H, W), "
                          f"got {tuple(image.shape)}")
    if not image.is_floating_point():
        image = image.float() / 255.0
    c, (kh, kw) = image.shape[0], kx.shape
    x = image.unsqueeze(0)                                      # (1, C, H, W)
    if padding == "replicate":
        top, left = (kh - 1) // 2, (kw - 1) // 2                # the split "same" padding uses
        x = F.pad(x, (left, kw - 1 - left, top, kh - 1 - top), mode="replicate")  # (1, C, H', W')
    # both kernels at once: filter 0 finds vertical edges, filter 1 horizontal ones
    weight = torch.stack([kx, ky]).to(x)                        # (2, kh, kw)
    weight = weight.unsqueeze(1).expand(2, c, kh, kw)           # (2, C, kh, kw)
    out = conv2d(x, weight, padding="same" if padding == "zeros" else 0)[0]  # (2, H', W')
    vertical, horizontal = out[0], out[1]
    return {"vertical": vertical, "horizontal": horizontal,
            "magnitude": torch.sqrt(vertical ** 2 + horizontal ** 2)}


def gaussian_blur(x: torch.Tensor, sigma: float, *, padding: str = "replicate") -> torch.Tensor:
    """Each channel of float (N, C, H, W) smoothed by a Gaussian of `sigma` pixels, truncated at
    ±round(3σ) (at least ±1) and normalised to sum 1, as two 1-D passes (the 2-D Gaussian is the
    outer product of two 1-D ones); `padding` ("replicate", "reflect") keeps H × W."""
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    g = g / g.sum()                                             # (K,), K = 2·radius + 1
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)                               # every channel its own image
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=padding), g.view(1, 1, 1, -1))  # along W
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=padding), g.view(1, 1, -1, 1))  # along H
    return x.reshape(n, c, h, w)
