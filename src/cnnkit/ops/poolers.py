"""Multi-scale RoIAlign over an FPN: each RoI is pooled from the one pyramid level its size calls
for (torchvision `ops/poolers.py`, with its names, so the detection heads wire up the same way).

Level of a box of area w·h (Lin et al., FPN, https://arxiv.org/abs/1612.03144, eq. 1):

    k = floor(k0 + log2(sqrt(w·h) / s0) + eps),   clamped to [k_min, k_max]

with k0 = 4 and s0 = 224 (an ImageNet-sized box pools from P4, stride 16); eps = 1e-6 keeps a box of
exactly s0·2^j on level k0 + j despite log2 rounding. Level k has stride 2^k; the strides are not
configured but inferred from the feature maps' sizes against the largest image, as torchvision does.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from cnnkit.ops.boxes import box_area
from cnnkit.ops.roi_align import convert_boxes_to_roi_format, roi_align
from cnnkit.utils import CnnkitError

__all__ = ["LevelMapper", "MultiScaleRoIAlign"]


class LevelMapper:
    """Map per-image (Li, 4) boxes to 0-based indices into the levels k_min..k_max."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224,
                 canonical_level: int = 4, eps: float = 1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxlists: Sequence[torch.Tensor]) -> torch.Tensor:
        s = torch.sqrt(torch.cat([box_area(b) for b in boxlists]))    # (K,)
        # eps added after the log, as torchvision >= 0.8 (maskrcnn-benchmark had it inside)
        levels = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps,
                                                                                 dtype=s.dtype))
        levels = torch.clamp(levels, min=self.k_min, max=self.k_max)
        return levels.to(torch.int64) - self.k_min


def _infer_scale(feature: torch.Tensor, original_size: Sequence[int]) -> float:
    # the scale is assumed to be 2^-k: the nearest power of two to feature size / image size
    # (in float32, as torchvision; only the heights are used)
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _setup_scales(features: Sequence[torch.Tensor], image_shapes: Sequence[tuple[int, int]],
                  canonical_scale: int, canonical_level: int):
    if not image_shapes:
        raise CnnkitError("MultiScaleRoIAlign needs the image sizes; got an empty list")
    original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [_infer_scale(f, original) for f in features]
    # the network halves the resolution from one level to the next
    lvl_min, lvl_max = -math.log2(scales[0]), -math.log2(scales[-1])
    return scales, LevelMapper(int(lvl_min), int(lvl_max), canonical_scale=canonical_scale,
                               canonical_level=canonical_level)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign each box from its FPN level (torchvision's `MultiScaleRoIAlign`).

    forward(x, boxes, image_shapes): `x` maps names to (N, C, Hk, Wk) feature maps (only
    `featmap_names` are used, finest first), `boxes` are per-image (Li, 4) xyxy boxes in image
    coordinates, `image_shapes` the (height, width) of each image before the backbone. Returns
    (sum Li, C, oh, ow). The scales are inferred on the first call and then kept.
    """

    def __init__(self, featmap_names: Sequence[str], output_size, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: list[float] | None = None
        self.map_levels: LevelMapper | None = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                image_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        features = [v for name, v in x.items() if name in self.featmap_names]
        if not features:
            raise CnnkitError(f"none of the feature maps {self.featmap_names} is in the input "
                              f"(it has {list(x)})")
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes,
                                                         self.canonical_scale, self.canonical_level)
        rois = convert_boxes_to_roi_format(boxes)                     # (K, 5)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0],
                             self.sampling_ratio)
        levels = self.map_levels(boxes)                                # (K,) 0-based
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1]) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            # levels may differ in dtype under autocast; the result keeps the first's
            result[idx] = pooled.to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")
