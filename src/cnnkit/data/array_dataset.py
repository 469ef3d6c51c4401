"""`ArrayDataset`, a data set decoded once into a uint8 tensor, and the helpers that make one.

Every loader in cnnkit.data ends here: images as uint8 (N, C, H, W), labels as int64 (N,) (or
(N, T) for a sequence of T tokens per image, as in mnist-seq). Keeping
uint8 in memory costs 4× less than float32; the batch pipeline converts each batch on the fly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from cnnkit.utils import CnnkitError

# ITU-R BT.601 luma weights: the ones PIL's convert("L") uses, so every RGB → grey path agrees.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CHUNK = 2048  # images converted per step, so a 50,000-image resize never holds all of it in float


@dataclass
class ArrayDataset:
    """A data set decoded once into memory.

    images: uint8 (N, C, H, W), contiguous; labels: int64 (N,), or (N, T) when each image is read
    as a sequence of T tokens; classes[label] is the class name.
    mean/std: per-channel statistics on the 0..1 scale, used by the loaders to normalise.
    hflip_ok: a horizontal flip preserves the label (photos yes; digits and characters no).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    hflip_ok: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dim() not in (1, 2) or len(self.labels) != len(self.images):
            raise ValueError(f"labels must be (N,) or (N, T) with N = {len(self.images)}, got "
                             f"{tuple(self.labels.shape)}")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, got "
                             f"{len(self.mean)}/{len(self.std)}")
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        """The images at `index` (a copy), with the same classes and normalisation."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return replace(self, images=self.images[index].contiguous(), labels=self.labels[index])

    def class_counts(self) -> list[int]:
        """How often each class occurs: per image, or per token for sequence labels."""
        return torch.bincount(self.labels.flatten(), minlength=len(self.classes)).tolist()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (len(index), C, H, W): the same call works on a streamed ImageFolderDataset."""
        return self.images[index]


# --- tensor helpers shared by every loader ---

def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images, on the 0..1 scale.

    Accumulated in float64 over chunks, so it is exact to ~1e-12 and never needs N×C×H×W floats.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK].to(torch.float64)  # (n, C, H, W)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test), each sorted: every class gives round(n_c × test_fraction) to test.

    Seeded with a private torch.Generator, so the split depends only on (labels, fraction, seed)
    and not on scikit-learn's version or the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    empty = torch.zeros(0, dtype=torch.int64)
    train, test = [empty], [empty]
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = math.floor(len(members) * test_fraction + 0.5)  # round half up, not to even
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size): bilinear with antialiasing, rounded."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK].float()
        # antialias=True low-pass filters when shrinking (as PIL does); growing is unaffected.
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)
        out[start:start + _CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) → uint8 (N, channels, H, W): grey is repeated; RGB → grey by luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        out = torch.empty(len(images), 1, *images.shape[2:], dtype=torch.uint8)
        weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
        for start in range(0, len(images), _CHUNK):
            grey = (images[start:start + _CHUNK].float() * weights).sum(1, keepdim=True)
            out[start:start + _CHUNK] = grey.round_().clamp_(0, 255).to(torch.uint8)
        return out
    raise CnnkitError(f"cannot convert {have}-channel images to {channels} channels; "
                      f"use channels=1 (grey) or channels=3 (RGB)")


def convert_stats(stats: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Statistics of a data set after convert_channels.

    Grey → RGB repeats the value. RGB → grey: the luma mean is exactly the weighted channel mean;
    the weighted std is exact only for perfectly correlated channels, a close bound for photos.
    """
    if len(stats) == channels:
        return tuple(stats)
    if len(stats) == 1:
        return tuple(stats) * channels
    return (sum(w * s for w, s in zip(LUMA_WEIGHTS, stats)),)


def convert_dataset(ds: ArrayDataset, image_size: int | None, channels: int | None) -> ArrayDataset:
    """Resize and/or change the channel count of `ds` where asked and different from native."""
    if image_size is not None and image_size < 1:
        raise CnnkitError(f"image_size must be a positive number of pixels, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise CnnkitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    images = ds.images
    if channels is not None and channels != images.shape[1]:
        images = convert_channels(images, channels)
        ds = replace(ds, images=images, mean=convert_stats(ds.mean, channels),
                     std=convert_stats(ds.std, channels))
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        ds = replace(ds, images=resize_images(images, image_size))
    return ds
