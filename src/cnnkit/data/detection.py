"""Detection data: images with boxes and labels, and optionally instance masks and keypoints.

The common format is torchvision's detection contract (torchvision/models/detection/
generalized_rcnn.py, references/detection/coco_utils.py), so that every detector, the COCO
evaluator and the figures read the same thing. A sample is `(image, target)`:

    image      uint8 (3, H, W) RGB (grey photos expanded to three channels)
    boxes      float32 (N, 4) x1, y1, x2, y2 in continuous pixel coordinates: a box covering
               pixel columns 0..w-1 has x1 = 0, x2 = w (COCO's [x, y, w, h] without the change
               of corner); x2 > x1, y2 > y1, inside the image
    labels     int64 (N,) in 1..K, 0 being the background; class name: classes[label - 1]
    masks      uint8 (N, H, W) 0/1 instance masks          (only in a set with masks)
    keypoints  float32 (N, J, 3) x, y, visibility: 0 not labelled, 1 occluded, 2 visible
                                                           (only in a set with keypoints)
    image_id   int;  iscrowd  int64 (N,), 1 where the source marks a crowd (or VOC "difficult")

Annotation files are read in two steps: a format reader (det_formats.py) lists what the file says
as `ImageEntry` / `ObjectEntry` records, and `assemble` checks every one of them here, in one
place, whatever the format: an annotation for a missing image, an unknown category, a box outside
its image or of non-positive size, a mask of the wrong size. Each problem is one CnnkitError line
naming the file and the entry; with skip_bad=True the entry (or image) is left out instead and the
line goes into `skipped`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cnnkit.data.imagefolder import _pixels
from cnnkit.utils import CnnkitError

# How far (px) a box or polygon may stick out of its image and still be clipped rather than
# refused: annotation tools round corners outwards, and VOC's 1-based corners end at W.
BOX_TOLERANCE = 1.0
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
# The per-joint OKS falloffs of pycocotools (cocoeval.py, Params.setKpParams); a set with other
# joints gets 1/J each, as Ultralytics does for non-COCO poses (ultralytics/utils/metrics.py).
COCO_PERSON_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                               .87, .87, .89, .89]) / 10.0


@dataclass
class DetectionDataset:
    """A detection set decoded once into memory: `images[i]` and `targets[i]` as the module
    docstring describes. category_ids[l - 1] is the COCO category id of label l (1..K when not
    given); file_names name the images (messages, figures, written annotation files). Keypoint
    sets also carry keypoint_names, skeleton (pairs of 0-based joints), flip_index (the joint
    order after a horizontal flip: left ↔ right) and kpt_sigmas (COCO OKS sigmas). hflip_ok: a
    mirrored image is still a valid sample (photos yes, digits no). skipped: the one-line
    problems a skip_bad load left out."""

    images: list[torch.Tensor]
    targets: list[dict[str, Any]]
    classes: tuple[str, ...]
    name: str = "detection"
    category_ids: list[int] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)
    keypoint_names: tuple[str, ...] | None = None
    skeleton: list[tuple[int, int]] | None = None
    flip_index: list[int] | None = None
    kpt_sigmas: np.ndarray | None = None
    hflip_ok: bool = True
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.classes = tuple(self.classes)
        n, k = len(self.images), len(self.classes)
        if len(self.targets) != n:
            raise ValueError(f"{len(self.targets)} targets for {n} images")
        self.category_ids = [int(c) for c in self.category_ids] or list(range(1, k + 1))
        if len(self.category_ids) != k or len(set(self.category_ids)) != k:
            raise ValueError(f"category_ids must be {k} distinct ids, got {self.category_ids}")
        self.file_names = list(self.file_names) or [str(i) for i in range(n)]
        if len(self.file_names) != n:
            raise ValueError(f"{len(self.file_names)} file names for {n} images")
        self.targets = [_checked_target(image, target, i, k)
                        for i, (image, target) in enumerate(zip(self.images, self.targets))]
        kinds = {("masks" in t, "keypoints" in t) for t in self.targets}
        if len(kinds) > 1:
            raise ValueError("either every target has masks (keypoints) or none has")
        joints = {t["keypoints"].shape[1] for t in self.targets if "keypoints" in t}
        if len(joints) > 1:
            raise ValueError(f"targets have different keypoint counts {sorted(joints)}")
        if joints or self.keypoint_names is not None:
            self._keypoint_defaults(joints.pop() if joints else len(self.keypoint_names))

    def _keypoint_defaults(self, j: int) -> None:
        names = tuple(self.keypoint_names or (str(i) for i in range(j)))
        if len(names) != j:
            raise ValueError(f"{len(names)} keypoint names for {j} keypoints")
        self.keypoint_names = names
        self.skeleton = [tuple(int(a) for a in pair) for pair in (self.skeleton or [])]
        self.flip_index = list(self.flip_index) if self.flip_index is not None \
            else flip_index_from_names(names)
        if sorted(self.flip_index) != list(range(j)):
            raise ValueError(f"flip_index must be a permutation of 0..{j - 1}")
        if self.kpt_sigmas is None:
            self.kpt_sigmas = default_sigmas(names)
        self.kpt_sigmas = np.asarray(self.kpt_sigmas, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.images[i], self.targets[i]

    def subset(self, indices) -> "DetectionDataset":
        """The samples at `indices` (a tensor, list or range), same classes and metadata."""
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).tolist()
        return replace(self, images=[self.images[i] for i in index],
                       targets=[self.targets[i] for i in index],
                       file_names=[self.file_names[i] for i in index])

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image."""
        return [(int(im.shape[1]), int(im.shape[2])) for im in self.images]

    def num_objects(self) -> int:
        return sum(len(t["boxes"]) for t in self.targets)

    def annotations(self) -> "Annotations":
        """The annotations without the pixels, for the format writers (det_formats.py)."""
        entries = [ImageEntry(name, h, w, int(t["image_id"]), name)
                   for name, (h, w), t in zip(self.file_names, self.image_sizes(), self.targets)]
        return Annotations(self.classes, list(self.category_ids), entries, list(self.targets),
                           self.keypoint_names, self.skeleton, list(self.skipped))


def _checked_target(image: torch.Tensor, target: dict, i: int, k: int) -> dict[str, Any]:
    """`target` with the format's dtypes, its shapes checked against `image` (a bug, not the
    user's input, when wrong: ValueError)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image {i} must be uint8 (3, H, W), got {image.dtype} "
                         f"{tuple(image.shape)}")
    h, w = image.shape[1:]
    out = dict(target)
    boxes = torch.as_tensor(out["boxes"], dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    labels = torch.as_tensor(out["labels"], dtype=torch.int64).reshape(-1)
    if len(labels) != n or (n and (labels.min() < 1 or labels.max() > k)):
        raise ValueError(f"target {i}: labels must be {n} values in 1..{k}, got {labels.tolist()}")
    if n and ((boxes[:, 2:] <= boxes[:, :2]).any() or boxes.min() < 0
              or (boxes[:, 2] > w).any() or (boxes[:, 3] > h).any()):
        raise ValueError(f"target {i}: boxes must lie inside the {w}×{h} image with x2 > x1 "
                         f"and y2 > y1, got {boxes.tolist()}")
    # image_id stays a plain int: pycocotools and JSON take it as a number, not a tensor.
    out.update(boxes=boxes, labels=labels, image_id=int(out.get("image_id", i + 1)),
               iscrowd=torch.as_tensor(out.get("iscrowd", torch.zeros(n)),
                                       dtype=torch.int64).reshape(n))
    if "masks" in out:
        out["masks"] = torch.as_tensor(out["masks"]).to(torch.uint8).reshape(n, h, w)
    if "keypoints" in out:
        kp = torch.as_tensor(out["keypoints"], dtype=torch.float32)
        if kp.dim() != 3 or kp.shape[0] != n or kp.shape[2] != 3:
            raise ValueError(f"target {i}: keypoints must be ({n}, J, 3), got {tuple(kp.shape)}")
        out["keypoints"] = kp
    return out


def flip_index_from_names(names: Sequence[str]) -> list[int]:
    """The joint permutation of a horizontal flip: `left_x` ↔ `right_x` (also Left/L_ forms
    that differ only in that word), every other joint onto itself."""
    position = {n: j for j, n in enumerate(names)}
    swaps = (("left", "right"), ("Left", "Right"), ("l_", "r_"), ("L_", "R_"))
    flip = []
    for j, name in enumerate(names):
        partner = j
        for a, b in swaps + tuple((b, a) for a, b in swaps):
            if a in name and name.replace(a, b, 1) in position:
                partner = position[name.replace(a, b, 1)]
                break
        flip.append(partner)
    return flip


def default_sigmas(names: Sequence[str]) -> np.ndarray:
    if tuple(names) == COCO_PERSON_KEYPOINTS:
        return COCO_PERSON_SIGMAS.copy()
    return np.full(len(names), 1.0 / max(len(names), 1))


# --- what an annotation file says, checked ---

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


# --- the pixels ---

def decode_rgb(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) of an image file; grey expanded, alpha dropped. CnnkitError if unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            array = _pixels(img)
    except FileNotFoundError:
        raise CnnkitError(f"image {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CnnkitError(f"cannot decode image {path} ({err})") from None
    # numpy, not torch, for the copy into (3, H, W): small torch ops per image stall on the
    # intra-op thread pool of a busy machine (segmentation.py's decode_pairs notes the same).
    chw = np.repeat(array[None], 3, axis=0) if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(chw.copy(order="C"))  # writable, unlike PIL's buffer


def from_annotations(ann: Annotations, images_dir: str | Path, *, name: str = "detection",
                     skip_bad: bool = False, hflip_ok: bool = True, quiet: bool = True
                     ) -> DetectionDataset:
    """Decode the image of every entry of `ann` from `images_dir` (file_name relative to it).

    A missing or unreadable image, or one whose size differs from what the annotations say, is
    a one-line CnnkitError naming the entry; with skip_bad the image and its objects are left out
    and the line recorded in `skipped`."""
    images_dir = Path(images_dir)
    problems = Problems(skip_bad)
    problems.skipped = list(ann.skipped)
    images, targets, names = [], [], []
    for entry, target in tqdm(list(zip(ann.images, ann.targets)), desc=f"decoding {name}",
                              unit="img", disable=quiet, leave=False):
        path = images_dir / entry.file_name
        if not path.is_file():
            problems(entry.where, f"annotations for a missing image: {path} does not exist")
            continue
        try:
            image = decode_rgb(path)
        except CnnkitError as err:
            problems(entry.where, str(err))
            continue
        # The boxes were drawn on an image of the listed size: a resized copy would silently
        # misplace every one of them.
        if tuple(image.shape[1:]) != (entry.height, entry.width):
            problems(entry.where, f"says the image is {entry.width}×{entry.height} but {path} "
                                  f"is {image.shape[2]}×{image.shape[1]}")
            continue
        images.append(image)
        targets.append(target)
        names.append(entry.file_name)
    return DetectionDataset(images, targets, ann.classes, name, list(ann.category_ids), names,
                            ann.keypoint_names, ann.skeleton, hflip_ok=hflip_ok,
                            skipped=problems.skipped)
