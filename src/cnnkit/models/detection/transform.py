"""The detectors' input and output transform (torchvision `models/detection/transform.py`).

In: a list of (3, H, W) float images in 0..1 of any sizes (and their targets) → normalised,
resized so the short side is `min_size` unless the long side would pass `max_size`, then
zero-padded to a common size divisible by `size_divisible` (the backbone's total stride, so every
FPN level lines up). Out: the detections mapped back to each original image's pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.models.detection.mask_keypoint_heads import paste_masks_in_image
from cnnkit.utils import CnnkitError

__all__ = ["ImageList", "GeneralizedRCNNTransform", "resize_boxes", "resize_keypoints"]


class ImageList:
    """A padded batch `tensors` (N, C, Hmax, Wmax) and each image's size before padding,
    `image_sizes` [(h, w), ...]: the anchors and clipping need the true sizes."""

    def __init__(self, tensors: torch.Tensor, image_sizes: list[tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, device: torch.device | str) -> "ImageList":
        return ImageList(self.tensors.to(device), self.image_sizes)


def _ratios(original_size, new_size, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(height ratio, width ratio) new / original, in float32 as torchvision."""
    return tuple(torch.tensor(s, dtype=torch.float32, device=device)
                 / torch.tensor(s_orig, dtype=torch.float32, device=device)
                 for s, s_orig in zip(new_size, original_size))


def resize_boxes(boxes: torch.Tensor, original_size: Sequence[int],
                 new_size: Sequence[int]) -> torch.Tensor:
    """Scale (N, 4) xyxy boxes from an image of `original_size` (h, w) to `new_size`."""
    ratio_h, ratio_w = _ratios(original_size, new_size, boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def resize_keypoints(keypoints: torch.Tensor, original_size: Sequence[int],
                     new_size: Sequence[int]) -> torch.Tensor:
    """Scale the x, y of (N, K, 3) keypoints; visibility unchanged."""
    ratio_h, ratio_w = _ratios(original_size, new_size, keypoints.device)
    resized = keypoints.clone()
    resized[..., 0] *= ratio_w
    resized[..., 1] *= ratio_h
    return resized


def _resize_image_and_masks(image: torch.Tensor, min_size: float, max_size: float,
                            target: dict | None = None, fixed_size=None, *,
                            exact_masks: bool = False):
    if fixed_size is not None:  # (width, height), torchvision's order
        size, scale_factor, recompute = [fixed_size[1], fixed_size[0]], None, None
    else:
        im_shape = torch.tensor(image.shape[-2:])
        short, long = im_shape.min().float(), im_shape.max().float()
        # short side to min_size, unless that pushes the long side past max_size
        scale = torch.min(min_size / short, max_size / long)
        size, scale_factor, recompute = None, scale.item(), True
    image = F.interpolate(image[None], size=size, scale_factor=scale_factor, mode="bilinear",
                          recompute_scale_factor=recompute, align_corners=False)[0]
    if target is not None and "masks" in target:
        # nearest keeps the masks 0/1. torchvision's "nearest" takes source pixel floor(i / s),
        # the first of each output pixel's footprint: shrinking 120 → 48 moves masks 0.4 output
        # pixels off the pixel-centred bilinear image; "nearest-exact" (floor((i + ½) / s))
        # stays centred (tested), so exact masks use it.
        target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size,
                                        scale_factor=scale_factor,
                                        mode="nearest-exact" if exact_masks else "nearest",
                                        recompute_scale_factor=recompute)[:, 0].byte()
    return image, target


class GeneralizedRCNNTransform(nn.Module):
    """Normalise, resize and batch images and their targets; map detections back.

    `min_size` may be a sequence: training then draws one per image (multi-scale training, as
    torchvision's Keypoint R-CNN), evaluation uses the last. `fixed_size` (width, height) resizes
    to exactly that size instead (SSD). forward(images, targets) → (ImageList, targets).
    """

    def __init__(self, min_size, max_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], size_divisible: int = 32, fixed_size=None,
                 **kwargs):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible
        self.fixed_size = fixed_size
        self._skip_resize = kwargs.pop("_skip_resize", False)
        self.exact_masks = False  # MaskRCNN(exact_masks=...): paste masks at pixel centres
        if kwargs:
            raise CnnkitError(f"GeneralizedRCNNTransform: unknown arguments {sorted(kwargs)}")

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        images = list(images)
        if targets is not None:  # shallow copies: the caller's dicts stay as they were
            targets = [dict(t) for t in targets]
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise CnnkitError(f"images must be (C, H, W) tensors, got {tuple(image.shape)}")
            target = targets[i] if targets is not None else None
            image, target = self.resize(self.normalize(image), target)
            images[i] = image
            if target is not None:
                targets[i] = target
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch = self.batch_images(images, size_divisible=self.size_divisible)
        return ImageList(batch, image_sizes), targets

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise CnnkitError(f"images must be float tensors in 0..1, got {image.dtype} "
                              f"(divide uint8 images by 255)")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def torch_choice(self, k: Sequence[int]) -> int:
        """A uniform choice drawn from torch's generator (seeded with torch.manual_seed)."""
        return k[int(torch.empty(1).uniform_(0.0, float(len(k))).item())]

    def resize(self, image: torch.Tensor, target: dict | None = None):
        h, w = image.shape[-2:]
        if self.training:
            if self._skip_resize:
                return image, target
            size = self.torch_choice(self.min_size)
        else:
            size = self.min_size[-1]
        image, target = _resize_image_and_masks(image, size, self.max_size, target,
                                                self.fixed_size, exact_masks=self.exact_masks)
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], (h, w), image.shape[-2:])
        return image, target

    @staticmethod
    def batch_images(images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        """Zero-pad at the bottom and right to the largest size, rounded up to size_divisible."""
        c = max(img.shape[0] for img in images)
        h = int(math.ceil(max(img.shape[1] for img in images) / size_divisible) * size_divisible)
        w = int(math.ceil(max(img.shape[2] for img in images) / size_divisible) * size_divisible)
        batch = images[0].new_full((len(images), c, h, w), 0)
        for img, slot in zip(images, batch):
            slot[:img.shape[0], :img.shape[1], :img.shape[2]].copy_(img)
        return batch

    def postprocess(self, result: list[dict], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict]:
        """Boxes and keypoints back to the original pixels; masks pasted into full-size images."""
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["masks"] = paste_masks_in_image(pred["masks"], pred["boxes"], o_im_s,
                                                     exact=self.exact_masks)
            if "keypoints" in pred:
                pred["keypoints"] = resize_keypoints(pred["keypoints"], im_s, o_im_s)
        return result

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(normalize(mean={self.image_mean}, std={self.image_std}),"
                f" resize(min_size={self.min_size}, max_size={self.max_size}, "
                f"mode='bilinear'))")
