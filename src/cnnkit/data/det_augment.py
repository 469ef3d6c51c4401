"""Detection augmentation: every geometric change moves the boxes, masks and keypoints with the
image, per sample (detection images differ in size, so there is no batch tensor to warp at once).

The ops are pure functions of (image, target, parameters), tested one by one; `DetectionAugment`
draws the parameters from a generator passed in, so a sample's augmentation is a pure function of
(sample, generator state), as in augment.py and seg_augment.py. Order: scale jitter, random crop,
horizontal flip, colour jitter — torchvision's detection references (references/detection/
transforms.py: RandomHorizontalFlip with the COCO keypoint flip, ScaleJitter, RandomIoUCrop,
ColorJitter) do the same work one op per class. Coordinates are continuous (detection.py): a
flip maps x to W - x, a resize by s maps x to s·x, a crop at (top, left) maps x to x - left.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# A cropped object is dropped when its box keeps less than this share of its area, or is
# narrower or lower than MIN_SIZE px: a sliver of an object is no longer that object.
MIN_VISIBLE, MIN_SIZE = 0.25, 2.0
_PER_OBJECT = ("boxes", "labels", "iscrowd", "masks", "keypoints")


def _keep(target: dict, keep: torch.Tensor) -> dict:
    """`target` with only the objects where `keep` (bool (N,)) is True."""
    return {k: (v[keep] if k in _PER_OBJECT else v) for k, v in target.items()}


def hflip(image: torch.Tensor, target: dict, flip_index: Sequence[int] | None = None
          ) -> tuple[torch.Tensor, dict]:
    """Mirror left ↔ right. Boxes (x1, x2) → (W - x2, W - x1); keypoints x → W - x, then joints
    permuted by flip_index (a left wrist becomes the right wrist); unlabelled joints stay 0."""
    w = image.shape[-1]
    out = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    out["boxes"] = boxes
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        kp = target["keypoints"].clone()  # (N, J, 3)
        kp[..., 0] = w - kp[..., 0]
        if flip_index is not None:
            kp = kp[:, list(flip_index)]
        kp[kp[..., 2] == 0] = 0  # torchvision's _flip_coco_person_keypoints does the same
        out["keypoints"] = kp
    return image.flip(-1), out


def resize(image: torch.Tensor, target: dict, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Resample to `size` (H', W'): the image bilinearly (antialiased), masks by nearest pixel
    centre, boxes and keypoints scaled by (W'/W, H'/H)."""
    h, w = image.shape[-2:]
    new_h, new_w = size
    sx, sy = new_w / w, new_h / h
    x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                      antialias=True)[0]
    out = dict(target)
    out["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
    if "masks" in target:
        masks = target["masks"]
        # "nearest-exact" samples at pixel centres, so masks scale like the continuous boxes
        # (plain "nearest" is shifted by half a pixel).
        out["masks"] = (F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0]
                        .to(torch.uint8) if len(masks) else masks.new_zeros((0, new_h, new_w)))
    if "keypoints" in target:
        kp = target["keypoints"].clone()
        kp[..., 0] *= sx
        kp[..., 1] *= sy
        out["keypoints"] = kp
    return x.round_().clamp_(0, 255).to(image.dtype), out


def crop(image: torch.Tensor, target: dict, top: int, left: int, height: int, width: int, *,
         min_visible: float = MIN_VISIBLE, min_size: float = MIN_SIZE
         ) -> tuple[torch.Tensor, dict]:
    """The window (top, left, height, width), inside the image. Boxes are shifted and clipped;
    an object with a mask gets the extent of its cropped mask as its box (box = mask extent is
    kept where it held). Objects left with less than `min_visible` of their box area, less than
    `min_size` px of width or height, or an empty mask, are dropped. Keypoints are shifted; those
    now outside the window become unlabelled (0, 0, 0)."""
    out = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if "masks" in target:
        masks = target["masks"][:, top:top + height, left:left + width]
        out["masks"] = masks
        cols, rows = masks.bool().any(dim=1), masks.bool().any(dim=2)  # (N, W'), (N, H')
        keep &= cols.any(dim=1)
        for i in torch.nonzero(keep).flatten().tolist():
            xs, ys = torch.nonzero(cols[i]).flatten(), torch.nonzero(rows[i]).flatten()
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    size = boxes[:, 2:] - boxes[:, :2]
    keep &= (size >= min_size).all(dim=1) & (size.prod(dim=1) >= min_visible * area)
    out["boxes"] = boxes
    if "keypoints" in target:
        kp = target["keypoints"].clone()
        kp[..., 0] -= left
        kp[..., 1] -= top
        outside = ((kp[..., 0] < 0) | (kp[..., 0] > width) | (kp[..., 1] < 0)
                   | (kp[..., 1] > height))
        kp[outside | (kp[..., 2] == 0)] = 0
        out["keypoints"] = kp
    return image[:, top:top + height, left:left + width], _keep(out, keep)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) → (1, H, W) luma, ITU-R 601 weights (torchvision's rgb_to_grayscale)."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def colour_jitter(image: torch.Tensor, brightness: float, contrast: float, saturation: float
                  ) -> torch.Tensor:
    """torchvision's ColorJitter factors, in its order: brightness scales the pixels, contrast
    blends with the mean grey level, saturation with the grey image; 1 leaves each unchanged."""
    x = (image.float() * brightness).clamp_(0, 255)
    mean = _grey(x).mean()
    x = ((x - mean) * contrast + mean).clamp_(0, 255)
    grey = _grey(x)
    x = grey + (x - grey) * saturation
    return x.round_().clamp_(0, 255).to(image.dtype)


# --- colour: HSV gains (ultralytics RandomHSV, hgain 0.015, sgain 0.7, vgain 0.4) ---

def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] → HSV, hue in [0, 1)."""
    r, g, b = x
    value, _ = x.max(dim=0)
    low, _ = x.min(dim=0)
    delta = value - low
    sat = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    d = delta.clamp(min=1e-12)
    hue = torch.where(value == r, (g - b) / d, torch.where(value == g, 2 + (b - r) / d, 4 + (r - g) / d))
    hue = torch.where(delta > 0, (hue / 6) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, sat, value])


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of _rgb_to_hsv (the standard six-sector formula)."""
    hue, sat, value = x
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6])  # R, G, B
    return value - value * sat * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def hsv_jitter(image: torch.Tensor, gains: tuple[float, float, float],
               generator: torch.Generator) -> torch.Tensor:
    """Multiply saturation and value by random factors in [1 - g, 1 + g] and shift the hue by
    up to ± g_h of the colour circle, as ultralytics does with OpenCV's lookup tables."""
    r = (2 * torch.rand(3, generator=generator) - 1) * torch.tensor(gains)
    hsv = _rgb_to_hsv(image.float() / 255)
    hsv[0] = (hsv[0] + r[0]) % 1.0
    hsv[1] = (hsv[1] * (1 + r[1])).clamp_(0, 1)
    hsv[2] = (hsv[2] * (1 + r[2])).clamp_(0, 1)
    return (_hsv_to_rgb(hsv) * 255).round_().to(image.dtype)


class DetectionAugment:
    """Random scale jitter, crop, horizontal flip and colour jitter of (image, target).

    scale: (low, high) resize factor, drawn log-uniformly (so (1/s, s) is symmetric); (1, 1) off.
    crop_size: a window of this side (int) or (height, width) at a uniform integer position,
    shrunk to the image where the image is smaller; None off. hflip: mirror with probability ½
    (flip_index: the keypoints' left/right permutation). colour: brightness, contrast and
    saturation factors drawn from [1 - colour, 1 + colour]; 0 off. hsv: YOLO's (hue, saturation,
    value) gains (ultralytics RandomHSV, see hsv_jitter); None off.

    Draw order (one generator): scale, crop position (2), flip coin, colour factors (3), HSV
    gains (3) — only those of the enabled ops.
    """

    def __init__(self, *, hflip: bool = True, scale: tuple[float, float] = (1.0, 1.0),
                 crop_size: int | tuple[int, int] | None = None, colour: float = 0.0,
                 flip_index: Sequence[int] | None = None, min_visible: float = MIN_VISIBLE,
                 min_size: float = MIN_SIZE, hsv: tuple[float, float, float] | None = None):
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range 0 < low ≤ high, got {scale}")
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if crop_size is not None and min(crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 <= colour < 1:
            raise ValueError(f"colour must be in [0, 1), got {colour}")
        self.hflip, self.scale, self.crop_size, self.colour = hflip, \
            (float(scale[0]), float(scale[1])), crop_size, float(colour)
        self.flip_index = list(flip_index) if flip_index is not None else None
        self.min_visible, self.min_size = min_visible, min_size
        self.hsv = tuple(hsv) if hsv is not None and any(hsv) else None

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.crop_size or self.colour or self.hsv
                    or self.scale != (1.0, 1.0))

    def __call__(self, image: torch.Tensor, target: dict[str, Any], generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """uint8 image (3, H, W) and its target → the augmented pair (a new target dict)."""
        target = dict(target)
        low, high = self.scale
        if high > low or low != 1.0:
            u = float(torch.rand(1, generator=generator)) if high > low else 0.0
            s = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            h, w = image.shape[-2:]
            image, target = resize(image, target, (max(1, round(h * s)), max(1, round(w * s))))
        if self.crop_size is not None:
            h, w = image.shape[-2:]
            ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
            u = torch.rand(2, generator=generator)
            top, left = int(u[0] * (h - ch + 1)), int(u[1] * (w - cw + 1))
            image, target = crop(image, target, min(top, h - ch), min(left, w - cw), ch, cw,
                                 min_visible=self.min_visible, min_size=self.min_size)
        if self.hflip and float(torch.rand(1, generator=generator)) < 0.5:
            image, target = hflip(image, target, self.flip_index)
        if self.colour:
            b, c, s = (1 + self.colour * (2 * torch.rand(3, generator=generator) - 1)).tolist()
            image = colour_jitter(image, b, c, s)
        if self.hsv is not None:
            image = hsv_jitter(image, self.hsv, generator)
        return image, target

    def __repr__(self) -> str:
        return (f"DetectionAugment(hflip={self.hflip}, scale={self.scale}, "
                f"crop_size={self.crop_size}, colour={self.colour}, hsv={self.hsv})")
