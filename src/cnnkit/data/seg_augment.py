"""Joint augmentation of images and masks: one sampling grid per sample, applied to both.

Every geometric op (flips, random scale and crop, the U-Net paper's elastic deformation) is a map
from output pixels to input coordinates, so they compose into one grid (B, H', W', 2) and each
batch is resampled once: the image bilinearly, the mask by nearest neighbour, so that a mask never
gains a label it did not have and the two stay aligned pixel for pixel. Pixels read from outside
the input become 0 in the image (the mean colour of a normalised batch) and `ignore_index` in the
mask. As in augment.py the random draws come from a generator passed in: a batch's augmentation
is a pure function of (batch, generator state).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Ronneberger, Fischer, Brox 2015, "U-Net" (arXiv:1505.04597), §3.1: "random displacement
# vectors on a coarse 3 by 3 grid ... sampled from a Gaussian distribution with 10 pixels standard
# deviation. Per-pixel displacements are then computed using bicubic interpolation."
ELASTIC_GRID, ELASTIC_SIGMA = 3, 10.0


class JointAugment:
    """Random flips, scale + crop to a fixed size, and elastic deformation of (images, masks).

    crop_size: output side (int) or (height, width); None keeps the input size. The crop window
    has an integer offset drawn uniformly, so at scale 1 it copies pixels exactly. scale: (low,
    high) range of the zoom factor, drawn uniformly per sample (> 1 enlarges; (1, 1) is off); a
    window larger than the scaled image reaches outside it, which is padded. hflip / vflip: mirror
    each sample with probability ½. elastic: the U-Net paper's deformation, displacements
    N(0, elastic_sigma²) px on an elastic_grid × elastic_grid grid, upsampled bicubically.

    Draw order (one generator, per batch): scales (B,), window offsets (B, 2), displacements
    (B, 2, g, g), h-flip coins (B,), v-flip coins (B,) — only those of the enabled ops.
    """

    def __init__(self, crop_size: int | tuple[int, int] | None = None, *, hflip: bool = True,
                 vflip: bool = False, scale: tuple[float, float] = (1.0, 1.0),
                 elastic: bool = False, elastic_sigma: float = ELASTIC_SIGMA,
                 elastic_grid: int = ELASTIC_GRID, ignore_index: int = 255):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if crop_size is not None and min(crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range 0 < low ≤ high, got {scale}")
        if elastic and (elastic_grid < 2 or elastic_sigma < 0):
            raise ValueError(f"elastic needs elastic_grid ≥ 2 and elastic_sigma ≥ 0, got "
                             f"{elastic_grid}, {elastic_sigma}")
        self.crop_size, self.hflip, self.vflip = crop_size, hflip, vflip
        self.scale, self.elastic = (float(scale[0]), float(scale[1])), elastic
        self.elastic_sigma, self.elastic_grid = float(elastic_sigma), elastic_grid
        self.ignore_index = ignore_index

    @property
    def active(self) -> bool:
        return bool(self.crop_size or self.hflip or self.vflip or self.elastic
                    or self.scale != (1.0, 1.0))

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) float (or uint8), masks (B, H, W) int64 → the augmented pair,
        (B, C, H', W') of the same dtype and (B, H', W') int64."""
        if not self.active:
            return images, masks
        grid = self.sample_grid(images.shape, generator).to(images.device)
        return warp(images, masks, grid, self.ignore_index)

    def sample_grid(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator
                    ) -> torch.Tensor:
        """The sampling grid of one batch of `shape` (B, C, H, W): float32 (B, H', W', 2), each
        entry the input (x, y) an output pixel reads, normalised as grid_sample wants
        (align_corners=False: -1 and 1 are the outer edges of the border pixels)."""
        b, _, h, w = shape
        out_h, out_w = self.crop_size or (h, w)
        # Output pixel centres, in output pixels.
        ys = torch.arange(out_h, dtype=torch.float32).view(1, out_h, 1).expand(b, out_h, out_w)
        xs = torch.arange(out_w, dtype=torch.float32).view(1, 1, out_w).expand(b, out_h, out_w)
        low, high = self.scale
        s = low + (high - low) * torch.rand(b, generator=generator) if high > low else \
            torch.ones(b)
        # The window's top-left corner in the scaled image: an integer from the full range of
        # positions (negative when the window is larger: it then overhangs both sides at random).
        room_y, room_x = h * s - out_h, w * s - out_w  # (B,) each
        u = torch.rand(b, 2, generator=generator)
        off_y = room_y.clamp(max=0).ceil() + (u[:, 0] * (room_y.abs().floor() + 1)).floor()
        off_x = room_x.clamp(max=0).ceil() + (u[:, 1] * (room_x.abs().floor() + 1)).floor()
        if self.elastic:
            g = self.elastic_grid
            coarse = self.elastic_sigma * torch.randn(b, 2, g, g, generator=generator)
            # align_corners=True puts the coarse points on the corners and evenly between them.
            field = F.interpolate(coarse, size=(out_h, out_w), mode="bicubic",
                                  align_corners=True)  # (B, 2, H', W') displacement in pixels
            ys, xs = ys + field[:, 0], xs + field[:, 1]
        # Output → scaled image → input pixel coordinates (pixel centres at integers).
        y = (ys + off_y.view(b, 1, 1) + 0.5) / s.view(b, 1, 1) - 0.5  # (B, H', W')
        x = (xs + off_x.view(b, 1, 1) + 0.5) / s.view(b, 1, 1) - 0.5
        if self.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1)
            x = torch.where(flip, (w - 1) - x, x)
        if self.vflip:
            flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1)
            y = torch.where(flip, (h - 1) - y, y)
        return torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)  # (B, H', W', 2)

    def __repr__(self) -> str:
        return (f"JointAugment(crop_size={self.crop_size}, hflip={self.hflip}, "
                f"vflip={self.vflip}, scale={self.scale}, elastic={self.elastic}, "
                f"elastic_sigma={self.elastic_sigma}, ignore_index={self.ignore_index})")


def warp(images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor, ignore_index: int = 255
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images (bilinear, zeros outside) and masks (nearest, ignore_index outside) at
    `grid` (B, H', W', 2), as JointAugment.sample_grid makes it."""
    dtype = images.dtype
    x = images if dtype.is_floating_point else images.float()
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (B, C, H', W')
    if not dtype.is_floating_point:
        out = out.round_().clamp_(0, 255).to(dtype)
    # Labels shifted up by one, so that the zeros grid_sample reads outside the mask mark void.
    # float32 holds every integer up to 2^24 exactly, and nearest sampling never mixes values.
    shifted = (masks + 1).unsqueeze(1).to(grid.dtype)  # (B, 1, H, W)
    labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].long() - 1  # (B, H', W')
    return out, labels.masked_fill_(labels < 0, ignore_index)
