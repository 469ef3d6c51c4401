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

Annotation files are read in two steps: a format reader (det_formats.py, det_coco.py) lists what
the file says, and det_annotations.assemble checks every entry (one CnnkitError line naming the
file and the entry, or, with skip_bad=True, the entry left out and the line kept in `skipped`);
`from_annotations` below then decodes the images into a DetectionDataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cnnkit.data.det_annotations import Annotations, ImageEntry, Problems
from cnnkit.data.imagefolder import read_pixels
from cnnkit.utils import CnnkitError

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

    def without(self, *keys: str) -> "DetectionDataset":
        """The same samples with `keys` (e.g. "masks") left out of every target."""
        return replace(self, targets=[{k: v for k, v in t.items() if k not in keys}
                                      for t in self.targets])

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image."""
        return [(int(im.shape[1]), int(im.shape[2])) for im in self.images]

    def num_objects(self) -> int:
        return sum(len(t["boxes"]) for t in self.targets)

    def annotations(self) -> Annotations:
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


# --- the pixels ---

def decode_rgb(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) of an image file; grey expanded, alpha dropped. CnnkitError if unreadable."""
    array = read_pixels(path)
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
