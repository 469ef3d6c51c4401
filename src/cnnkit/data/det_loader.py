"""Batches for detection: lists of images of any size, and their target dicts.

The same epoch plan as the other loaders (loader.py's `_BatchPipeline`: the permutation from
(seed, epoch), each rank its strided shard padded like DistributedSampler, `len`, `set_epoch`),
but no stacking: detection images differ in size and the detectors take a list of float images in
0..1 and resize, normalise and pad them inside (torchvision's GeneralizedRCNNTransform), so a
batch is `(list of float32 (3, H, W), list of target dicts)`, torchvision's collate_fn = zip.
"""
from __future__ import annotations

import os
import queue
import threading
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
                 mosaic: Mosaic | None = None, rank: int = 0, world_size: int = 1,
                 prefetch: int = 0):
        # mean/std are the identity: the detectors normalise inside.
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=augment, channels_last=False, rank=rank, world_size=world_size,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.dataset = ds
        # YOLO's mosaic comes before the per-sample augmentation; the task turns it off for the
        # last epochs (`mosaic = None`), as ultralytics' close_mosaic does.
        self.mosaic = mosaic
        # batches a background thread prepares ahead of the training step (0: none)
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
        batches = self._batches()
        return prefetched(batches, self.prefetch) if self.prefetch else batches

    def _batches(self) -> Iterator[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
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


def spare_core() -> bool:
    """Whether a prefetching thread has a core of its own: torch computes on one thread and the
    process may use more than one core. (torch's thread count is process-wide, so with more
    intra-op threads the loader's small ops would compete with the step's.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return torch.get_num_threads() == 1 and (cores or 1) > 1


_END = object()


def prefetched(items: Iterator, depth: int) -> Iterator:
    """`items` in order, produced up to `depth` ahead by a background thread: the per-sample
    augmentation (mosaic, crops, HSV) runs while the main thread trains — torch's kernels release
    the GIL. Same items, same order, same random draws as without it; an exception in the
    producer is raised here; leaving the loop early stops the producer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, raised there)
            put((_END, exc))

    producer = threading.Thread(target=produce, name="cnnkit-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        producer.join()
