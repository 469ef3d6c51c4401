"""Batches for pose estimation: affine crops, their heatmap targets, and the augmentation.

Two ways to cut the network's input out of an image (Xiao et al. 2018 / Sun et al. 2019 for the
first, Cao et al. 2017 for the second):

- top-down (HRNet): the person's box (its joints' extent, aspect ¾, ×1.25), warped to the input
  size; targets are one Gaussian per joint at 1/4 of the input (ops/heatmaps.py);
- bottom-up (OpenPose): the whole image at a fixed pixel scale (`scale` input pixels per image
  pixel), so people keep the size they have in the image and a canvas of several people is read
  the same way; targets are confidence maps and part affinity fields at 1/8 (ops/paf.py).

Training draws, per sample, the reference augmentation: box scale in [0.65, 1.35] and a rotation
(σ 45°, with probability 0.6), a horizontal flip with the left/right joint swap, and for top-down
the half-body box (probability 0.3, persons with more than 8 visible joints). Every draw comes
from the loader's per-(seed, epoch, rank) generator, so an epoch is reproducible and resumable.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from cnnkit.data.loader import _BatchPipeline
from cnnkit.data.lsp import UPPER_BODY, PoseDataset
from cnnkit.ops.heatmaps import (apply_affine, crop_matrix, gaussian_targets, half_body_box,
                                 random_scale_rotation, warp_crop)
from cnnkit.ops.paf import affinity_fields, confidence_maps

# ImageNet statistics, as HRNet's and OpenPose's references normalise.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PAF_WIDTH = 1.0  # limb half-width in map pixels (the authors' σ_l at stride 8)
MAP_SIGMA = 1.0  # confidence-map σ in map pixels at stride 8 (7 px input in the authors' 368)


def bottom_up_box(height: int, width: int, scale: float, size: tuple[int, int]
                  ) -> np.ndarray:
    """The box (cx, cy, w, h) that maps an image's top-left corner to the input's and
    `scale` input pixels to each image pixel, for an input of `size` (H, W)."""
    out_h, out_w = size
    return np.array([out_w / (2 * scale), out_h / (2 * scale), out_w / scale, out_h / scale])


def bottom_up_size(height: int, width: int, scale: float, stride: int = 8) -> tuple[int, int]:
    """The input size that holds a whole image at `scale`, rounded up to the stride."""
    return (int(np.ceil(height * scale / stride) * stride),
            int(np.ceil(width * scale / stride) * stride))


class PoseLoader(_BatchPipeline):
    """(inputs float (B, 3, H, W) normalised, targets dict) batches of a PoseDataset.

    top-down targets: {"heatmaps": (B, J, H/4, W/4), "weights": (B, J)};
    bottom-up: {"maps": (B, J, H/8, W/8), "fields": (B, 2L, H/8, W/8)}.
    """

    def __init__(self, ds: PoseDataset, batch_size: int, *, input_size: tuple[int, int],
                 bottom_up: bool = False, limbs: Sequence[tuple[int, int]] = (),
                 scale: float = 1.25, augment: bool = False, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=None, channels_last=False, rank=rank, world_size=world_size,
                         mean=MEAN, std=STD)
        self.dataset, self.input_size, self.bottom_up = ds, tuple(input_size), bottom_up
        self.limbs, self.scale, self.train_augment = list(limbs), scale, augment
        self.stride = 8 if bottom_up else 4
        self.map_size = (self.input_size[0] // self.stride, self.input_size[1] // self.stride)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        order = self.epoch_indices().tolist()
        generator = self._augment_generator()
        for start in self._batch_bounds(len(order)):
            seed = int(torch.randint(2 ** 31, (1,), generator=generator))
            rng = np.random.default_rng(seed)  # the reference draws are numpy's
            samples = [self.sample(i, rng if self.train_augment else None)
                       for i in order[start:start + self.batch_size]]
            crops = torch.stack([s[0] for s in samples])  # (B, 3, H, W) 0..255
            joints = torch.stack([s[1] for s in samples])  # (B, J, 2) map coordinates
            visible = self.dataset.visible.new_ones(joints.shape[:2])  # LSP labels every joint
            yield crops * self._scale + self._shift, self.targets(joints, visible)

    def sample(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One input crop (3, H, W) float 0..255 and its joints in map coordinates (J, 2);
        augmented with draws from `rng` when given."""
        ds = self.dataset
        if self.bottom_up:
            box = bottom_up_box(*ds.images[i].shape[-2:], self.scale, self.input_size)
            box[:2] = [ds.images[i].shape[-1] / 2, ds.images[i].shape[-2] / 2]  # centred
        else:
            box = ds.boxes[i].numpy().astype(np.float64)
        rotation, flip = 0.0, False
        if rng is not None:
            if not self.bottom_up and ds.visible[i].sum() > 8 and rng.random() < 0.3:
                half = half_body_box(ds.joints[i].numpy(), ds.visible[i].numpy(), UPPER_BODY, rng)
                box = half if half is not None else box
            factor, rotation = random_scale_rotation(rng)
            box = box * np.array([1, 1, factor, factor])
            flip = rng.random() < 0.5
        return self.crop(i, box, rotation, flip)

    def crop(self, i: int, box: np.ndarray, rotation: float = 0.0, flip: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample i cut out by `box` (cx, cy, w, h) turned by `rotation` degrees, mirrored
        with `flip` (joints then swap sides, ds.flip_index)."""
        ds = self.dataset
        matrix = crop_matrix(box, self.input_size, rotation)
        crop = warp_crop(ds.images[i], matrix, self.input_size)
        points = apply_affine(ds.joints[i].numpy().astype(np.float64), matrix)  # input pixels
        if flip:
            crop = crop.flip(-1)
            points = points[list(ds.flip_index)]
            points[:, 0] = self.input_size[1] - 1 - points[:, 0]
        # Input pixel x lies at map x / stride (the ops/heatmaps convention).
        return crop, torch.from_numpy(points / self.stride).to(torch.float32)

    def targets(self, joints: torch.Tensor, visible: torch.Tensor) -> dict:
        if not self.bottom_up:
            heatmaps, weights = gaussian_targets(joints, visible.float(), self.map_size)
            return {"heatmaps": heatmaps, "weights": weights}
        maps = torch.stack([confidence_maps(j[None], v[None], self.map_size, MAP_SIGMA)
                            for j, v in zip(joints, visible)])
        fields = torch.stack([affinity_fields(j[None], v[None], self.limbs, self.map_size,
                                              PAF_WIDTH) for j, v in zip(joints, visible)])
        return {"maps": maps, "fields": fields}
