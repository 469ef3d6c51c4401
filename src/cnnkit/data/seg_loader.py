"""Batches for dense prediction: images and masks gathered, normalised and augmented together.

The same pipeline as the classification loaders (an epoch's permutation from (seed, epoch), each
rank its strided shard, one gather per batch, no per-sample Python), with two differences: the
augmentation moves the mask with the image (`JointAugment`: flips, scale/crop, elastic), and a
network with valid convolutions gets its images mirror-padded by its `margin`, so that its output
covers exactly the mask (the U-Net paper's extrapolation by mirroring, Fig. 2).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from cnnkit.data.loader import _BatchPipeline
from cnnkit.data.seg_augment import JointAugment
from cnnkit.data.segmentation import SegmentationDataset


class SegmentationLoader(_BatchPipeline):
    """(x float32 (B, C, H + 2·margin, W + 2·margin), y int64 (B, H, W)) batches, and with
    `weight_map` a third item: per-pixel loss weights float32 (B, H, W) of the augmented masks."""

    def __init__(self, ds: SegmentationDataset, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, augment: JointAugment | None = None,
                 margin: int = 0, weight_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=None, channels_last=channels_last, rank=rank,
                         world_size=world_size, mean=ds.mean, std=ds.std)
        self.dataset, self.joint, self.margin, self.weight_map = ds, augment, margin, weight_map

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.epoch_indices()
        generator = self._augment_generator()  # consumed batch after batch: resumable
        for start in self._batch_bounds(len(order)):
            index = order[start:start + self.batch_size]
            # Normalised before augmenting: padding from a crop or warp is then the mean colour.
            x = self.dataset.images[index].float().mul_(self._scale).add_(self._shift)
            y = self.dataset.masks[index]  # (B, H, W) int64
            if self.joint is not None:
                x, y = self.joint(x, y, generator)
            if self.margin:
                m = self.margin
                x = F.pad(x, (m, m, m, m), mode="reflect")  # (B, C, H + 2m, W + 2m)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield (x, y) if self.weight_map is None else (x, y, self.weight_map(y))
