"""Whole-batch augmentation: every op acts on a (B, C, H, W) tensor at once, never sample by sample.

The random draws come from a generator passed in, so a batch's augmentation is a pure function of
(batch, generator state): the loaders seed that generator from (seed, epoch), which makes an
interrupted run resume with exactly the same augmented images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, radius: int) -> torch.Tensor:
    """Move image b by (dy[b], dx[b]) pixels (down/right positive), filling with zeros.

    |dy|, |dx| ≤ radius. The batch is zero-padded once, then each image's window is read with
    one gather over the flattened padded pixels: no loop over samples (2.5× faster than gathering
    rows, then columns).
    """
    b, c, h, w = x.shape
    wide = w + 2 * radius
    padded = F.pad(x, (radius, radius, radius, radius)).flatten(2)  # (B, C, (H+2r)*(W+2r))
    # Output pixel (i, j) of image b reads padded pixel (i + r - dy[b], j + r - dx[b]).
    rows = torch.arange(h).view(1, h, 1) + (radius - dy).view(b, 1, 1)  # (B, H, 1)
    cols = torch.arange(w).view(1, 1, w) + (radius - dx).view(b, 1, 1)  # (B, 1, W)
    index = (rows * wide + cols).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W)
    return padded.gather(2, index).view(b, c, h, w)


def flip_images(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images b with flip[b] True: one gather with per-sample columns."""
    b, c, h, w = x.shape
    j = torch.arange(w)
    cols = torch.where(flip.view(b, 1), (w - 1 - j).view(1, w), j.view(1, w))  # (B, W)
    return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


class BatchAugment:
    """Random crop after zero padding, random translation, random horizontal flip, per sample.

    `crop_padding=p` is the CIFAR recipe of He et al. 2015 (arXiv:1512.03385, section 4.2): pad by
    p, take a random H×W crop, i.e. shift by (dy, dx) uniform in [-p, p]². `translate=t` shifts
    again by an independent uniform integer in [-t, t]². `hflip` mirrors each image with
    probability 1/2; enable it only where the data set's hflip_ok says a flip keeps the label.
    Works on uint8 or float batches; returns the same dtype. Draw order: crop offsets (dy, dx),
    translation offsets (dy, dx), flip coins — the same generator state gives the same result.
    """

    def __init__(self, crop_padding: int = 0, translate: int = 0, hflip: bool = False):
        if crop_padding < 0 or translate < 0:
            raise ValueError(f"crop_padding and translate must be ≥ 0, got {crop_padding}, "
                             f"{translate}")
        self.crop_padding, self.translate, self.hflip = crop_padding, translate, hflip

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.translate or self.hflip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = len(x)
        for radius in (self.crop_padding, self.translate):
            if radius:
                dy = torch.randint(-radius, radius + 1, (b,), generator=generator)
                dx = torch.randint(-radius, radius + 1, (b,), generator=generator)
                x = shift_images(x, dy, dx, radius)
        if self.hflip:
            x = flip_images(x, torch.rand(b, generator=generator) < 0.5)
        return x

    def __repr__(self) -> str:
        return (f"BatchAugment(crop_padding={self.crop_padding}, translate={self.translate}, "
                f"hflip={self.hflip})")
