"""Batch loaders: shuffled, augmented, normalised batches, random only through (seed, epoch).

`InMemoryLoader` indexes the uint8 image tensor of an ArrayDataset with a slice of the epoch's
permutation: one gather per batch, no per-sample Python, no worker processes. `StreamingLoader`
gives the same interface (and, for the same files, the same batches) over a torch DataLoader that
decodes an image folder per item, for data that does not fit in memory.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from cnnkit.data.array_dataset import ArrayDataset
from cnnkit.data.augment import BatchAugment
from cnnkit.data.imagefolder import ImageFolderDataset
from cnnkit.utils import CnnkitError

_PERMUTATION, _AUGMENTATION = 0, 1  # independent random streams of an epoch


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """A private generator for one stream of one epoch, seeded from (seed, epoch, stream, rank).

    SeedSequence hashes the tuple into a well-mixed 64-bit seed, so neighbouring epochs or seeds
    give unrelated streams, and the global torch RNG is never touched.
    """
    entropy = [seed % 2**64, epoch, stream, rank]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class _BatchPipeline:
    """What both loaders share: the epoch's order for this rank, and the batch finishing steps."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int, augment: BatchAugment | None, channels_last: bool, rank: int,
                 world_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.augment = augment if augment is not None and augment.active else None
        self.channels_last, self.rank, self.world_size = channels_last, rank, world_size
        self.epoch = 0
        # (x/255 - mean)/std as one multiply-add: x * scale + shift, per channel.
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = epoch

    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        per_rank = self.samples_per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank /
                                                                            self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, int64 (samples_per_rank,)."""
        n = self.num_samples
        if self.shuffle:
            generator = epoch_generator(self.seed, self.epoch, _PERMUTATION)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            # Like DistributedSampler: pad the permutation with its own start to a multiple of
            # world_size, then rank r takes every world_size-th index from r: disjoint shards.
            total = self.samples_per_rank() * self.world_size
            order = order.repeat(math.ceil(total / max(n, 1)))[:total]
            order = order[self.rank::self.world_size]
        return order

    def _augment_generator(self) -> torch.Generator:
        return epoch_generator(self.seed, self.epoch, _AUGMENTATION, self.rank)

    def _finish(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, H, W) → augmented, normalised float32 (B, C, H, W)."""
        if self.augment is not None:
            x = self.augment(x, generator)  # on uint8: 4× less memory traffic than on float
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float().mul_(self._scale).add_(self._shift)  # in place: keeps the memory format

    def _batch_bounds(self, count: int) -> range:
        stop = count - count % self.batch_size if self.drop_last else count
        return range(0, stop, self.batch_size)


class InMemoryLoader(_BatchPipeline):
    """Batches (float32 normalised (B, C, H, W), int64 (B,)) from an ArrayDataset.

    The permutation and the augmentation draws derive only from (seed, epoch) through private
    generators: the same (seed, epoch) gives bit-identical batches, whatever the global RNG did.
    With world_size > 1, rank r sees a disjoint strided shard of the same permutation.
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, *, shuffle: bool, drop_last: bool = False,
                 seed: int = 0, augment: BatchAugment | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=augment, channels_last=channels_last, rank=rank,
                         world_size=world_size, mean=ds.mean, std=ds.std)
        self.dataset = ds

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.dataset.images, self.dataset.labels
        order = self.epoch_indices()
        generator = self._augment_generator()
        for start in self._batch_bounds(len(order)):
            index = order[start:start + self.batch_size]  # (B,)
            yield self._finish(images[index], generator), labels[index]


class StreamingLoader(_BatchPipeline):
    """InMemoryLoader's interface over a torch DataLoader that decodes one image file per item.

    For an image folder too large to decode into memory: `num_workers` processes decode in
    parallel, the DataLoader collates uint8 batches in the order of this rank's epoch indices,
    and the same BatchAugment and normalisation run on each whole batch. For the same folder,
    seed and epoch it yields the same batches as InMemoryLoader on load_imagefolder's result.

    A file that fails to decode in a worker comes back marked (label -1) rather than as the
    worker's multi-line traceback; this process decodes it again, so a strict data set (or any
    other error) stops with its one-line CnnkitError, and otherwise the file is warned about
    once and dropped from its batch. An evaluation pass (shuffle=False) then forgets it, so the
    data set's length is what was evaluated.
    """

    def __init__(self, ds: ImageFolderDataset, batch_size: int, *, shuffle: bool,
                 drop_last: bool = False, seed: int = 0, augment: BatchAugment | None = None,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        super().__init__(len(ds), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         augment=augment, channels_last=channels_last, rank=rank,
                         world_size=world_size, mean=ds.mean, std=ds.std)
        self.dataset, self.num_workers = ds, num_workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_indices().tolist()
        generator = self._augment_generator()
        loader = torch.utils.data.DataLoader(
            _Marked(self.dataset), batch_size=self.batch_size, sampler=order,
            drop_last=self.drop_last, num_workers=self.num_workers, persistent_workers=False)
        failed = []
        # The DataLoader batches `order` as _batch_bounds does: batch k is order[start:start+B].
        for start, (x, y) in zip(self._batch_bounds(len(order)), loader):
            # x: uint8 (B, C, H, W), y: int64 (B,)
            marked = (y < 0).nonzero().flatten().tolist()
            if marked:
                failed += self.dataset.unreadable([order[start + j] for j in marked])
                x, y = x[y >= 0], y[y >= 0]
                if len(y) == 0:
                    continue
            yield self._finish(x, generator), y
        if failed and not self.shuffle:
            self.dataset.forget(failed)
            self.num_samples = len(self.dataset)


class _Marked(torch.utils.data.Dataset):
    """ds[i], or (a blank image, -1) where decoding raised: StreamingLoader decides, in its own
    process, what the failure means."""

    def __init__(self, ds: ImageFolderDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.ds[i]
        except CnnkitError:
            return torch.zeros(self.ds.image_shape, dtype=torch.uint8), -1
