"""Batches for detection: lists of images of any size, and their target dicts.

The same epoch plan as the other loaders (loader.py's `_BatchPipeline`: the permutation from
(seed, epoch), each rank its strided shard padded like DistributedSampler, `len`, `set_epoch`),
but no stacking: detection images differ in size and the detectors take a list of float images in
0..1 and resize, normalise and pad them inside (torchvision's GeneralizedRCNNTransform), so a
batch is `(list of float32 (3, H, W), list of target dicts)`, torchvision's collate_fn = zip.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from cnnkit.data.det_augment import DetectionAugment
from cnnkit.data.detection import DetectionDataset
from cnnkit.data.loader import _BatchPipeline
from cnnkit.data.mosaic import Mosaic


class DetectionLoader(_BatchPipeline):
    """(images, targets) batches of a DetectionDataset, augmented per sample by `augment`.

    The permutation and the augmentation draws derive only from (seed, epoch, rank) through
    private generators: the same (seed, epoch) gives identical batches, whatever the global RNG
    did. Targets are new dicts (augmented, or shallow copies), so a consumer may change them
    without touching the data set.
    """

    def __init__(self, ds: DetectionDataset, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, augment: DetectionAugment | None = None,
                 mosaic: Mosaic | None = None, rank: int = 0, world_size: int = 1):
        # mean/std are the identity: the detectors normalise inside.
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=augment, channels_last=False, rank=rank, world_size=world_size,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.dataset = ds
        # YOLO's mosaic comes before the per-sample augmentation; the task turns it off for the
        # last epochs (`mosaic = None`), as ultralytics' close_mosaic does.
        self.mosaic = mosaic

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
        order = self.epoch_indices().tolist()
        generator = self._augment_generator()  # consumed sample after sample: resumable
        for start in self._batch_bounds(len(order)):
            images, targets = [], []
            for i in order[start:start + self.batch_size]:
                image, target = self.dataset.images[i], self.dataset.targets[i]
                if self.mosaic is not None:
                    image, target = self.mosaic(self.dataset.images, self.dataset.targets, i,
                                                generator)
                if self.augment is not None:
                    image, target = self.augment(image, target, generator)
                images.append(image.float().div_(255))
                targets.append(dict(target))
            yield images, targets
