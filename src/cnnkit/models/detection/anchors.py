"""Anchor boxes over feature maps (torchvision `models/detection/anchor_utils.py`).

Each feature map gets a set of cell anchors (one per size × aspect ratio, centred on 0), copied
to every grid position at the map's stride (Ren et al., Faster R-CNN §3.1.1,
https://arxiv.org/abs/1506.01497). Ordering, as torchvision's: level, then position row-major,
then the cell anchors (aspect ratio outer, size inner) — the heads' outputs are flattened the same
way, so the i-th anchor and the i-th prediction belong together.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cnnkit.utils import CnnkitError

__all__ = ["AnchorGenerator"]


class AnchorGenerator(nn.Module):
    """`sizes[i]` and `aspect_ratios[i]` (height / width) give the anchors of feature map i.

    forward(image_list, feature_maps) → one (sum over levels of H·W·A, 4) xyxy tensor per image,
    in the padded batch's pixel coordinates. The stride of a level is image size // map size.
    """

    def __init__(self, sizes: Sequence = ((128, 256, 512),),
                 aspect_ratios: Sequence = ((0.5, 1.0, 2.0),)):
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):  # one size per level
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):  # the same ratios on every level
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise CnnkitError(f"AnchorGenerator: {len(sizes)} levels of sizes but "
                              f"{len(aspect_ratios)} of aspect ratios")
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [self.generate_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]

    @staticmethod
    def generate_anchors(scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(ratios)·len(scales), 4) zero-centred anchors of area scale² and h/w = ratio."""
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # (R·S,) ratio-major
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base_anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        # rounded to whole pixels, as Detectron and torchvision do (a 45.25-wide anchor is 46 wide)
        return base_anchors.round()

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        self.cell_anchors = [a.to(dtype=dtype, device=device) for a in self.cell_anchors]

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes: list[tuple[int, int]],
                     strides: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per level, (H·W·A, 4): the cell anchors shifted to every grid position."""
        if len(grid_sizes) != len(self.cell_anchors):
            raise CnnkitError(f"AnchorGenerator has anchors for {len(self.cell_anchors)} feature "
                              f"maps but got {len(grid_sizes)}; give one sizes/aspect_ratios "
                              f"entry per map")
        anchors = []
        for (gh, gw), (sh, sw), base in zip(grid_sizes, strides, self.cell_anchors):
            device = base.device
            shifts_x = torch.arange(0, gw, dtype=torch.int32, device=device) * sw
            shifts_y = torch.arange(0, gh, dtype=torch.int32, device=device) * sh
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)          # (H·W,)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)    # (H·W, 4)
            # (H·W, 1, 4) + (1, A, 4) -> (H·W·A, 4): position-major, cell anchor inner
            anchors.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        image_size = image_list.tensors.shape[-2:]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [(image_size[0] // g[0], image_size[1] // g[1]) for g in grid_sizes]
        self.set_cell_anchors(dtype, device)
        levels = self.grid_anchors(grid_sizes, strides)
        # the same anchors for every image (padded-batch coordinates), each its own tensor
        return [torch.cat(levels) for _ in image_list.image_sizes]  # (sum H·W·A, 4) each
