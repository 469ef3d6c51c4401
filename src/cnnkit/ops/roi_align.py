"""RoIAlign and RoIPool with torchvision's exact semantics, in tensor ops (no loop over RoIs).

RoIAlign (Mask R-CNN, He et al. 2017, https://arxiv.org/abs/1703.06870, §3): split each RoI into
output_size bins *without rounding*, average a sampling_ratio × sampling_ratio grid of bilinearly
interpolated points per bin. The rules follow torchvision csrc/ops/cpu/roi_align_kernel.cpp and
roi_align_common.h:

* coordinates: box · spatial_scale, minus 0.5 when `aligned` (a pixel's centre is at +0.5, so
  aligned=True samples where the box really is — Detectron2's fix); with aligned=False a RoI is at
  least 1 × 1 feature pixels.
* grid: `sampling_ratio` points per bin side, or ceil(roi_size / output_size) when <= 0.
* sample y (likewise x): outside [-1, H] contributes 0 (it still counts in the average); otherwise
  clamped to >= 0, and at or past row H-1 it reads row H-1 only.

Bilinear interpolation is a weighted sum of 4 pixels, so a whole bin is a weighted sum of
4·(grid points) feature rows; `F.embedding_bag(mode="sum", per_sample_weights=...)` computes
exactly that over channels-last feature rows without materialising the gathered (…, C) taps, and
autograd gives the backward (scatter-add of the same weights). Gradients reach the features only,
not the boxes, as with torchvision's kernel.

RoIPool (Fast R-CNN, Girshick 2015, https://arxiv.org/abs/1504.08083): round the box to whole
feature pixels (C `round`: half away from zero), split into bins by floor/ceil, take the max of
each bin (0 for an empty bin). Ties go to the first maximum in row-major order, where torchvision's
backward sends the gradient.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.utils import CnnkitError

__all__ = ["roi_align", "roi_pool", "RoIAlign", "RoIPool", "convert_boxes_to_roi_format"]

Boxes = Union[torch.Tensor, Sequence[torch.Tensor]]


def _pair(v) -> tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else tuple(v)
    if h < 1 or w < 1:
        raise CnnkitError(f"output_size must be positive, got {v!r}")
    return int(h), int(w)


def convert_boxes_to_roi_format(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image (Li, 4) boxes -> one (K, 5) tensor of [batch_index, x1, y1, x2, y2]."""
    ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]  # (Li, 1) each
    return torch.cat([torch.cat(ids), torch.cat(list(boxes))], dim=1)   # (K, 5)


def _rois(input: torch.Tensor, boxes: Boxes, what: str) -> torch.Tensor:
    """Validated (K, 5) RoIs in the input's dtype, detached (no gradient to the boxes)."""
    if input.dim() != 4:
        raise CnnkitError(f"{what} expects an input of shape (N, C, H, W), "
                          f"got {tuple(input.shape)}")
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise CnnkitError(f"{what}: a boxes tensor must be (K, 5) [batch_index, x1, y1, x2, "
                              f"y2], got {tuple(boxes.shape)}; per-image boxes go in a list of "
                              f"(L, 4) tensors")
        rois = boxes
    else:
        for b in boxes:
            if b.dim() != 2 or b.shape[1] != 4:
                raise CnnkitError(f"{what}: each per-image boxes tensor must be (L, 4), "
                                  f"got {tuple(b.shape)}")
        if len(boxes) == 0:
            return input.new_zeros(0, 5)
        rois = convert_boxes_to_roi_format(boxes)
    rois = rois.detach().to(input.dtype)
    if rois.shape[0] and (rois[:, 0].min() < 0 or rois[:, 0].max() >= input.shape[0]):
        raise CnnkitError(f"{what}: batch indices must lie in [0, {input.shape[0] - 1}], got "
                          f"{rois[:, 0].min().item():g}..{rois[:, 0].max().item():g}")
    return rois


def _rows(input: torch.Tensor) -> torch.Tensor:
    n, c, h, w = input.shape
    return input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N·H·W, C), one row per pixel


def _taps(coord: torch.Tensor, size: int, used: torch.Tensor):
    """Bilinear taps along one axis for sample coordinates (K, P, G) on an axis of `size` pixels.

    Returns (low, high) indices and their weights (1 - l, l), all (K, P, G, 2) stacked as
    [low, high], with the weights zeroed for samples outside [-1, size] or beyond the RoI's grid.
    """
    # !(c >= -1 && c <= size) rather than (c < -1 || c > size): NaN goes the empty way too
    valid = (coord >= -1) & (coord <= size) & used
    c = torch.where(valid, coord, torch.zeros_like(coord)).clamp(min=0)
    low = c.long()                                  # truncation, as (int) in C; c >= 0 here
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(c), c - low.to(c.dtype))
    zero = torch.zeros_like(frac)
    weights = torch.stack((torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)), -1)
    return torch.stack((low, high), -1), weights    # (K, P, G, 2) each


def roi_align(input: torch.Tensor, boxes: Boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """(K, C, oh, ow) RoIAlign of `input` (N, C, H, W) over `boxes`: a (K, 5) tensor of
    [batch_index, x1, y1, x2, y2] or a list of per-image (L, 4) tensors, in image coordinates
    that `spatial_scale` maps onto the input (1/16 for a stride-16 feature map).

    With sampling_ratio <= 0 every RoI is padded to the largest RoI's grid (masked samples), so
    one huge RoI costs memory for all; detectors use a fixed ratio (torchvision's: 2)."""
    rois = _rois(input, boxes, "roi_align")
    ph, pw = _pair(output_size)
    if torch.is_autocast_enabled(input.device.type) and input.dtype != torch.float64:
        # as torchvision's autocast kernel: run in float32, hand back the input's dtype
        with torch.autocast(input.device.type, enabled=False):
            return roi_align(input.float(), rois.float(), (ph, pw), spatial_scale, sampling_ratio,
                             aligned).to(input.dtype)
    n, c, h, w = input.shape
    k = rois.shape[0]
    dt, dev = input.dtype, input.device
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))  # (K,) each
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: force malformed RoIs to 1 × 1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw                                         # (K,)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((k,), sampling_ratio, dtype=torch.long, device=dev)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    count = (grid_h * grid_w).clamp(min=1).to(dt)                                 # (K,)
    gh = int(grid_h.max().clamp(min=0)) if k else 0
    gw = int(grid_w.max().clamp(min=0)) if k else 0
    if k == 0 or gh == 0 or gw == 0:  # nothing sampled anywhere: zeros, still in the graph
        return input.new_zeros(k, c, ph, pw) + input.reshape(-1)[:0].sum()  # + 0, with grad_fn

    def samples(start, bin_size, grid, bins, g):
        # start + p·bin + (i + 0.5)·bin/grid, in the kernel's operation order
        p = torch.arange(bins, device=dev).to(dt)[None, :, None]                 # (1, P, 1)
        i = torch.arange(g, device=dev).to(dt)[None, None, :]                    # (1, 1, G)
        s = start[:, None, None] + p * bin_size[:, None, None] \
            + (i + 0.5) * bin_size[:, None, None] / grid.clamp(min=1)[:, None, None].to(dt)
        used = torch.arange(g, device=dev)[None, None, :] < grid[:, None, None]  # (K, 1, G)
        return s, used.expand_as(s)                                              # (K, P, G)

    ys, y_used = samples(y1, bin_h, grid_h, ph, gh)
    xs, x_used = samples(x1, bin_w, grid_w, pw, gw)
    yi, wy = _taps(ys, h, y_used)                                    # (K, PH, GH, 2)
    xi, wx = _taps(xs, w, x_used)                                    # (K, PW, GW, 2)
    # every (bin, grid point, tap pair): flat pixel row b·H·W + y·W + x and weight wy·wx/count
    base = rois[:, 0].long() * (h * w)                               # (K,)
    idx = (base[:, None, None, None, None, None, None]
           + yi[:, :, None, :, None, :, None] * w
           + xi[:, None, :, None, :, None, :])                       # (K, PH, PW, GH, GW, 2, 2)
    weight = (wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
              / count[:, None, None, None, None, None, None])         # (K, PH, PW, GH, GW, 2, 2)
    out = F.embedding_bag(idx.reshape(k * ph * pw, -1), _rows(input),
                          per_sample_weights=weight.reshape(k * ph * pw, -1),
                          mode="sum")                                # (K·PH·PW, C)
    return out.view(k, ph, pw, c).permute(0, 3, 1, 2).contiguous()   # (K, C, PH, PW)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves go away from zero (torch.round goes to even: 2.5 -> 2, C gives 3)."""
    r = torch.trunc(x)
    return r + torch.sign(x) * ((x - r).abs() >= 0.5).to(x.dtype)


def roi_pool(input: torch.Tensor, boxes: Boxes, output_size,
             spatial_scale: float = 1.0) -> torch.Tensor:
    """(K, C, oh, ow) RoIPool (max over quantised bins) of `input` (N, C, H, W); `boxes` as in
    `roi_align`. Every bin is gathered whole (padded to the longest bin), so memory grows with
    K·C·(RoI area); it is the legacy op, kept for Fast R-CNN-style heads."""
    rois = _rois(input, boxes, "roi_pool")
    ph, pw = _pair(output_size)
    n, c, h, w = input.shape
    k = rois.shape[0]
    dt, dev = input.dtype, input.device
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * spatial_scale).long() for i in range(1, 5))
    roi_w = (x2 - x1 + 1).clamp(min=1)  # whole pixels, both ends included; malformed -> 1
    roi_h = (y2 - y1 + 1).clamp(min=1)

    def bins(start, size, p_n, limit):
        bin_size = size.to(dt) / p_n                                              # (K,)
        p = torch.arange(p_n, device=dev).to(dt)
        lo = torch.floor(p[None, :] * bin_size[:, None]).long() + start[:, None]  # (K, P)
        hi = torch.ceil((p[None, :] + 1) * bin_size[:, None]).long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    hs, he = bins(y1, roi_h, ph, h)
    ws, we = bins(x1, roi_w, pw, w)
    lh = int((he - hs).max().clamp(min=1)) if k else 1  # the longest bin side over all RoIs
    lw = int((we - ws).max().clamp(min=1)) if k else 1
    rows = hs[..., None] + torch.arange(lh, device=dev)                           # (K, PH, LH)
    cols = ws[..., None] + torch.arange(lw, device=dev)                           # (K, PW, LW)
    inside = ((rows < he[..., None])[:, :, None, :, None]
              & (cols < we[..., None])[:, None, :, None, :])        # (K, PH, PW, LH, LW)
    idx = (rois[:, 0].long()[:, None, None, None, None] * (h * w)
           + rows.clamp(max=h - 1)[:, :, None, :, None] * w
           + cols.clamp(max=w - 1)[:, None, :, None, :])            # (K, PH, PW, LH, LW)
    taps = _rows(input).index_select(0, idx.reshape(-1))            # (K·PH·PW·LH·LW, C)
    taps = taps.view(k, ph, pw, lh * lw, c)                         # window row-major: LH, LW
    taps = taps.masked_fill(~inside.reshape(k, ph, pw, lh * lw, 1), float("-inf"))
    best = taps.max(dim=3).values                                   # (K, PH, PW, C), 1st max
    empty = ~inside.flatten(3).any(3)                               # (K, PH, PW)
    out = torch.where(empty[..., None], torch.zeros_like(best), best)
    return out.permute(0, 3, 1, 2).contiguous()                     # (K, C, PH, PW)


class RoIAlign(nn.Module):
    """Module form of `roi_align` (torchvision's `RoIAlign`)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """Module form of `roi_pool` (torchvision's `RoIPool`)."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
