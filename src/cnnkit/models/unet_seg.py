"""U-Net for segmentation after Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", https://arxiv.org/abs/1505.04597 (the DDPM denoiser is `unet.py`).

    x (N, C, H, W) → [two 3×3 convs + ReLU → 2×2 max-pool] × depth → two 3×3 convs (bottleneck)
    → [2×2 up-convolution (channels halved) → concatenate the encoder map → two 3×3 convs] × depth
    → 1×1 conv → logits (N, num_classes, H', W')

With the paper's settings (`base_channels=64`, `depth=4`: 64 → 1024 channels, in_chans=1, two
classes) it has 31,030,658 parameters. `padding="valid"` is the paper's network: every 3×3 conv
drops a one-pixel border, so a 572×572 tile gives a 388×388 map (H' = H − 184) and the encoder maps
are centre-cropped before concatenation; `overlap_tile_predict` then segments an image of any size
from mirror-padded tiles (the paper's Fig. 2). `padding="same"` keeps H' = H for any size, which is
what most later U-Nets do; `norm="batchnorm"` adds BatchNorm (Ioffe & Szegedy 2015) after every
3×3 conv, which the 2015 network predates but which lets it train at higher learning rates.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.init import init_cnn_
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError

_PADDINGS = ("valid", "same")


# --- valid-convolution geometry ---

def unet_margin(depth: int = 4) -> int:
    """Pixels a valid U-Net loses on each side: 92 at depth 4 (572 → 388).

    Each conv pair trims 4 px at its own scale 2^i: encoder and decoder levels i < depth trim
    2·4·2^i together, the bottleneck 4·2^depth; half of the total on each side.
    """
    return 6 * 2 ** depth - 4


def unet_output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output side length for an input side length (572 → 388 at depth 4). Raises if a max-pool
    would see an odd size, which would shift the crop-and-concatenate by half a pixel (the paper
    selects tile sizes so that every pooled map is even)."""
    if padding == "same":
        return input_size
    size = input_size
    for _ in range(depth):
        size -= 4  # the level's two 3×3 convs
        if size < 2 or size % 2:
            return _raise_invalid(input_size - 2 * unet_margin(depth), depth, "input", input_size)
        size //= 2
    if size <= 4:  # the bottleneck's convs would leave nothing
        return _raise_invalid(input_size - 2 * unet_margin(depth), depth, "input", input_size)
    return input_size - 2 * unet_margin(depth)


def unet_input_size(output_size: int, depth: int = 4) -> int:
    """Input tile side length that a valid U-Net maps to `output_size` (388 → 572 at depth 4).

    From depth 3 on the valid output sizes are those ≡ 4 (mod 2^depth): 4, 20, 36, ... at depth 4;
    any other size raises, naming the nearest valid ones.
    """
    if not _is_valid_output(output_size, depth):
        _raise_invalid(output_size, depth, "output", output_size)
    return output_size + 2 * unet_margin(depth)


def _is_valid_output(output_size: int, depth: int) -> bool:
    """Undo the decoder: each level's two convs (+4), then its up-convolution (÷2, exactly)."""
    size = output_size
    for _ in range(depth):
        size += 4
        if size % 2:
            return False
        size //= 2
    return output_size >= 1 and size >= 1  # `size`: the bottleneck's output


def _raise_invalid(output_size: int, depth: int, what: str, given: int):
    below = next((o for o in range(output_size - 1, 0, -1) if _is_valid_output(o, depth)), None)
    above = next(o for o in range(max(output_size, 0) + 1, 2 ** 31)
                 if _is_valid_output(o, depth))
    shift = 0 if what == "output" else 2 * unet_margin(depth)  # report inputs for inputs
    sizes = " or ".join(str(o + shift) for o in (below, above) if o is not None)
    raise CnnkitError(f"{given} px is not an {what} size of a valid U-Net of depth {depth} "
                      f"(every max-pool must see an even size); use {sizes}")


# --- model ---

class DoubleConv(nn.Sequential):
    """Two 3×3 conv (→ norm) → ReLU: one level of the paper's contracting or expanding path."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, norm):
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, padding=padding, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, padding=padding, norm=norm),
        )


class UNet(nn.Module):
    """Encoder of `depth` levels (`base_channels`·2^i channels), bottleneck, mirrored decoder.

    Returns logits (N, num_classes, H', W'); `output_size(H, W)` says H', W'. Encoder maps are
    centre-cropped to the decoder's size (valid) or the up-sampled map padded to the encoder's
    (same, where a max-pool floored an odd size), then concatenated [encoder, decoder].
    """

    dense_output = True  # per-pixel logits (tests/models/test_zoo.py)

    def __init__(self, *, num_classes: int = 2, in_chans: int = 1, base_channels: int = 64,
                 depth: int = 4, padding: str = "valid", norm: str | None = None):
        super().__init__()
        if padding not in _PADDINGS:
            raise CnnkitError(f"unknown padding '{padding}'; choose valid or same")
        if depth < 1:
            raise CnnkitError(f"U-Net depth must be at least 1, got {depth}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.depth, self.padding = depth, padding
        pad = 0 if padding == "valid" else 1
        widths = [base_channels * 2 ** i for i in range(depth + 1)]  # 64, 128, ..., 1024
        self.encoder = nn.ModuleList(DoubleConv(cin, cout, padding=pad, norm=norm)
                                     for cin, cout in zip([in_chans] + widths[:-2], widths[:-1]))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], padding=pad, norm=norm)
        # "2x2 convolution ("up-convolution") that halves the number of feature channels" (§2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], padding=pad, norm=norm)
                                     for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # the paper's §3: Gaussian with std √(2/N), N the inputs of one neuron (He et al. 2015):
        # k·k·C_in for a conv; for the stride-2 2×2 up-convolution each output pixel meets one
        # tap per input channel, so N = C_in (PyTorch's fan_in would count C_out·4 = 2·C_in)
        init_cnn_(self, conv_mode="fan_in")
        for up in self.up:
            nn.init.normal_(up.weight, 0.0, math.sqrt(2.0 / up.in_channels))
            nn.init.zeros_(up.bias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (unet_output_size(height, self.depth, self.padding),
                unet_output_size(width, self.depth, self.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "valid":
            self.output_size(*x.shape[-2:])  # one clear error instead of a mis-aligned crop
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)  # (N, base·2^depth, ≈H/2^depth, ≈W/2^depth)
        for up, level, skip in zip(self.up, self.decoder, reversed(skips)):
            x = up(x)
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if self.padding == "valid":  # "cropping is necessary due to the loss of border pixels"
                skip = skip[..., dh // 2:dh // 2 + x.shape[-2], dw // 2:dw // 2 + x.shape[-1]]
            else:  # a floored odd size lost the last row/column: pad there, keeping alignment
                x = F.pad(x, (0, dw, 0, dh))
            x = level(torch.cat([skip, x], dim=1))  # (N, 2·C, h, w) → (N, C, h − 4 or h, ...)
        return self.head(x)


# --- overlap-tile inference ---

def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) by any amount; torch's "reflect" needs pad < size, so larger pads
    reflect the already padded image again ("the missing context is extrapolated by mirroring")."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            raise CnnkitError(f"cannot mirror-pad a {h}×{w} image: it needs at least 2×2 pixels")
        dt, db, dl, dr = min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1)
        x = F.pad(x, (dl, dr, dt, db), mode="reflect")
        top, bottom, left, right = top - dt, bottom - db, left - dl, right - dr
    return x


@torch.no_grad()
def overlap_tile_predict(model: UNet, image: torch.Tensor, tile: int | tuple[int, int] = 388, *,
                         margin: int | None = None, tiles_per_batch: int = 4) -> torch.Tensor:
    """Segment an image of any size tile by tile (the paper's overlap-tile strategy, Fig. 2).

    `image` (N, C, H, W) or (C, H, W) is mirror-padded by the network's margin (92 px at depth 4),
    then cut into input tiles that overlap by twice the margin; each gives `tile` output pixels
    (388 → 572 at depth 4). Returns logits (N, num_classes, H, W) (or (num_classes, H, W)).

    Tiles step by a multiple of 2^depth (384 for 388: the last 4 pixels of each tile are dropped),
    so every tile meets the max-pool grid at the same phase as one pass over the whole padded
    image: for an image of a valid output size, a valid U-Net gives exactly that pass's logits,
    whatever `tile` is (tests/models/test_segmentation.py checks it in float64).
    A "same" U-Net gets `margin` pixels of context, cropped off after; the default, the valid
    margin + 2^depth, bounds its receptive field (7·2^depth − 5 px each side), so its tiles are
    exact too: no tile border is near enough to a kept pixel for the zero padding to reach it.
    Call `model.eval()` first: BatchNorm in training mode would normalise each tile differently.
    `tiles_per_batch` tiles go through the network together: fewer, larger calls (2.3× faster for
    small tiles on CPU), at ~0.45 GB per 572² tile of the paper's network in float32.
    """
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    height, width = x.shape[-2:]
    tiles = (tile, tile) if isinstance(tile, int) else tuple(tile)
    grid = 2 ** model.depth
    if model.padding == "valid":
        if margin is not None:
            raise CnnkitError("a valid U-Net's margin follows from its depth; drop `margin`")
        margin, crop = unet_margin(model.depth), 0
        inputs = tuple(unet_input_size(t, model.depth) for t in tiles)
    else:
        margin = unet_margin(model.depth) + grid if margin is None else margin
        crop = margin  # a same U-Net returns the whole window: keep its centre
        inputs = tuple(t + 2 * margin for t in tiles)
    steps = tuple(t - t % grid for t in tiles)
    if min(steps) < 1:
        raise CnnkitError(f"tile {tile} is smaller than the U-Net's pooling grid ({grid} px)")
    # the last tile may run past the image: pad enough mirrored context for its whole window
    last_y, last_x = (height - 1) // steps[0] * steps[0], (width - 1) // steps[1] * steps[1]
    padded = mirror_pad(x, margin, last_y + inputs[0] - height - margin,
                        margin, last_x + inputs[1] - width - margin)
    corners = [(y, x0) for y in range(0, height, steps[0]) for x0 in range(0, width, steps[1])]
    out = None
    for first in range(0, len(corners), tiles_per_batch):
        batch = corners[first:first + tiles_per_batch]
        windows = torch.cat([padded[..., y:y + inputs[0], x0:x0 + inputs[1]] for y, x0 in batch])
        logits = model(windows)[..., crop:crop + tiles[0], crop:crop + tiles[1]]  # (k·N, K, th, tw)
        if out is None:
            out = logits.new_empty(x.shape[0], logits.shape[1], height, width)
        for (y, x0), part in zip(batch, logits.split(x.shape[0])):
            h, w = min(steps[0], height - y), min(steps[1], width - x0)
            out[..., y:y + h, x0:x0 + w] = part[..., :h, :w]
    return out[0] if squeeze else out


def _build_unet(num_classes: int, in_chans: int, **kwargs) -> UNet:
    return UNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


# --- registered variants ---

@register_model(input_size=(1, 572, 572), test_input_size=(1, 188, 188),
                test_kwargs={"base_channels": 8})
def unet(num_classes: int = 2, in_chans: int = 1, **kwargs) -> UNet:
    """The paper's network: 64 → 1024 channels, valid convs, no BatchNorm (572 → 388)."""
    return _build_unet(num_classes, in_chans, **{"padding": "valid", **kwargs})


@register_model(input_size=(3, 256, 256), test_input_size=(3, 64, 64),
                test_kwargs={"base_channels": 8})
def unet_same(num_classes: int = 2, in_chans: int = 3, **kwargs) -> UNet:
    """The paper's widths with padded convs and BatchNorm: output size = input size."""
    return _build_unet(num_classes, in_chans, **{"padding": "same", "norm": "batchnorm", **kwargs})


@register_model(input_size=(3, 240, 240), test_input_size=(3, 64, 64))
def unet_small(num_classes: int = 2, in_chans: int = 3, **kwargs) -> UNet:
    """A quarter of the width (16 → 256 channels, 1/16 of the parameters) for CPU training."""
    return _build_unet(num_classes, in_chans, **{"base_channels": 16, "padding": "same",
                                                 "norm": "batchnorm", **kwargs})
