"""What an annotation file says, checked: the layer between the format readers and the pixels.

A format reader (det_formats.py, det_coco.py) lists what its file says as `ImageEntry` /
`ObjectEntry` records, and `assemble` checks every one of them here, in one place, whatever the
format: an annotation for a missing image, an unknown category, a box outside its image or of
non-positive size, a mask of the wrong size, malformed keypoints. Each problem goes to a
`Problems`: one CnnkitError line naming the file and the entry, or, with skip_bad=True, the entry
(or image) is left out and the line goes into `skipped`. The result, `Annotations`, holds one
target per image in detection.py's common format, without the pixels; detection.from_annotations
then decodes the images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch

from cnnkit.utils import CnnkitError

# How far (px) a box or polygon may stick out of its image and still be clipped rather than
# refused: annotation tools round corners outwards, and VOC's 1-based corners end at W.
BOX_TOLERANCE = 1.0


@dataclass
class ImageEntry:
    """One image as an annotation file lists it; `where` names it in messages."""

    file_name: str
    height: int
    width: int
    image_id: int
    where: str


@dataclass
class ObjectEntry:
    """One object as an annotation file gives it, not yet checked.

    image / category: keys into `assemble`'s images and labels (a COCO id, a class name, a YOLO
    index); box: x1, y1, x2, y2 in continuous pixels; mask: a uint8 (H, W) array, or what
    `assemble`'s decode_mask turns into one (a COCO polygon or RLE); keypoints: (J, 3)."""

    image: Hashable
    category: Hashable
    box: Sequence[float]
    where: str
    iscrowd: int = 0
    mask: Any = None
    keypoints: Any = None


@dataclass
class Annotations:
    """An annotation file's content after `assemble`: `targets[i]` (the common format, without
    the pixels) belongs to `images[i]`."""

    classes: tuple[str, ...]
    category_ids: list[int]
    images: list[ImageEntry]
    targets: list[dict[str, Any]]
    keypoint_names: tuple[str, ...] | None = None
    skeleton: list[tuple[int, int]] | None = None
    skipped: list[str] = field(default_factory=list)

    def num_objects(self) -> int:
        return sum(len(t["boxes"]) for t in self.targets)


class Problems:
    """Where a reader sends each bad entry: raised as one line, or recorded under skip_bad."""

    def __init__(self, skip_bad: bool = False):
        self.skip_bad, self.skipped = skip_bad, []

    def __call__(self, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if not self.skip_bad:
            raise CnnkitError(line)
        self.skipped.append(line)


def check_box(box: Sequence[float], height: int, width: int) -> tuple[list[float] | None, str]:
    """(the box clipped to the image, "") or (None, what is wrong with it)."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, f"box {box!r} is not four numbers"
    shown = f"box (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, f"{shown} has a coordinate that is not a finite number"
    if x2 <= x1 or y2 <= y1:
        return None, f"{shown} has non-positive size ({x2 - x1:g} × {y2 - y1:g} px)"
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return None, f"{shown} lies outside the {width}×{height} image"
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, f"{shown} lies outside the {width}×{height} image"
    return clipped, ""


def assemble(images: dict[Hashable, ImageEntry], objects: Sequence[ObjectEntry],
             labels: dict[Hashable, int], *, classes: Sequence[str], category_ids: Sequence[int],
             problems: Problems, decode_mask: Callable[[Any, int, int], np.ndarray] | None = None,
             keypoint_names: Sequence[str] | None = None,
             skeleton: Sequence[tuple[int, int]] | None = None) -> Annotations:
    """Check every object against its image and the categories (see the module docstring) and
    gather them into one target per image, in the order of `images`. labels: category key →
    1..K. decode_mask(raw, H, W) → uint8 (H, W), raising ValueError on a bad mask. In a set
    where some objects have masks, an object without one gets its box as its mask."""
    per_image: dict[Hashable, list] = {key: [] for key in images}
    j = len(keypoint_names) if keypoint_names is not None else None
    # Checked in the order a user would fix them: the image, the class, then the geometry.
    for obj in objects:
        entry = images.get(obj.image)
        if entry is None:
            problems(obj.where, f"annotation for a missing image ({obj.image!r} is not among "
                                f"the images)")
            continue
        if obj.category not in labels:
            known = ", ".join(map(repr, list(labels)[:10]))
            problems(obj.where, f"unknown category {obj.category!r}; known: {known}")
            continue
        box, why = check_box(obj.box, entry.height, entry.width)
        if box is None:
            problems(obj.where, why)
            continue
        mask, why = _object_mask(obj, entry, decode_mask)
        if why:
            problems(obj.where, why)
            continue
        keypoints, why = _object_keypoints(obj.keypoints, j)
        if why:
            problems(obj.where, why)
            continue
        per_image[obj.image].append((box, labels[obj.category], int(bool(obj.iscrowd)), mask,
                                     keypoints))
    has_masks = any(o[3] is not None for found in per_image.values() for o in found)
    targets = [_target(per_image[key], entry, has_masks, j) for key, entry in images.items()]
    return Annotations(tuple(classes), list(category_ids), list(images.values()), targets,
                       tuple(keypoint_names) if keypoint_names is not None else None,
                       [tuple(p) for p in skeleton] if skeleton is not None else None,
                       problems.skipped)


def _object_mask(obj: ObjectEntry, entry: ImageEntry, decode_mask) -> tuple[Any, str]:
    if obj.mask is None:
        return None, ""
    try:
        mask = decode_mask(obj.mask, entry.height, entry.width) if decode_mask else obj.mask
    except ValueError as err:
        return None, str(err)
    mask = np.asarray(mask)
    if mask.shape != (entry.height, entry.width):
        shape = "×".join(map(str, mask.shape[::-1]))
        return None, (f"mask is {shape} but the image {entry.file_name} is "
                      f"{entry.width}×{entry.height}")
    return (mask != 0).astype(np.uint8), ""


def _object_keypoints(raw, j: int | None) -> tuple[np.ndarray | None, str]:
    if j is None:
        return None, ""
    if raw is None:  # an object of a category without joints: none labelled
        return np.zeros((j, 3), np.float32), ""
    try:
        kp = np.asarray(raw, dtype=np.float32).reshape(j, 3)
    except ValueError:
        return None, f"keypoints must be {j} × (x, y, v) = {3 * j} numbers, got {np.size(raw)}"
    if not np.isin(kp[:, 2], (0, 1, 2)).all() or not np.isfinite(kp).all():
        return None, "keypoint visibility must be 0 (not labelled), 1 (occluded) or 2 (visible)"
    return kp, ""


def _target(found: list, entry: ImageEntry, has_masks: bool, j: int | None) -> dict[str, Any]:
    h, w = entry.height, entry.width
    target = {"boxes": torch.tensor([o[0] for o in found], dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor([o[1] for o in found], dtype=torch.int64),
              "image_id": entry.image_id,
              "iscrowd": torch.tensor([o[2] for o in found], dtype=torch.int64)}
    if has_masks:
        masks = np.zeros((len(found), h, w), np.uint8)
        for i, (box, _, _, mask, _) in enumerate(found):
            if mask is None:  # the box, to the pixels it covers more than half of
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                masks[i, y1:y2, x1:x2] = 1
            else:
                masks[i] = mask
        target["masks"] = torch.from_numpy(masks)
    if j is not None:
        target["keypoints"] = torch.from_numpy(
            np.stack([o[4] for o in found]) if found else np.zeros((0, j, 3), np.float32))
    return target
