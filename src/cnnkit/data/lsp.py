"""Leeds Sports Pose (Johnson & Everingham 2010, "Clustered Pose and Nonlinear Appearance Models
for Human Pose Estimation", BMVC, doi:10.5244/C.24.12): 2,000 single-person sports photos, 14
joints each, decoded once into a `PoseDataset`.

Files (data_dir/lsp, as ../shared/datasets/lsp holds them): images/im0001.jpg .. im2000.jpg and
joints.mat (float64 (3, 14, 2000) = (x, y, flag) × joint × image) or joints.csv (one row per
image: image, then <joint>_x, <joint>_y, <joint>_visible per joint).

The visibility flag is easy to get backwards: in joints.mat 0 means VISIBLE and 1 OCCLUDED
(92.7 % of the flags are 0; 1 is most frequent on the arm behind the body), while joints.csv's
<joint>_visible = 1 − flag; LSP-extended's joints.mat uses the opposite convention (1 = visible).
Occluded joints still carry an annotated (estimated) position, and the LSP protocol scores them.
Here `visible` is True for a visible joint, whichever file is read.

Standard split: im0001-im1000 train, im1001-im2000 test (bearpaw/eval_pose's LSP demo).
Joint positions are the files' values unchanged: pixel-index coordinates (cnnkit.ops.heatmaps).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cnnkit.data.detection import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, decode_rgb
from cnnkit.ops.heatmaps import joints_box
from cnnkit.utils import CnnkitError, suggest

# README.original.txt's order; snake_case as joints.csv's columns.
JOINT_NAMES = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
               "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
               "left_wrist", "neck", "head_top")
# 13 limbs, a tree over the 14 joints: legs, arms, shoulders and hips to the neck side, head.
SKELETON = ((0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11),
            (2, 8), (3, 9), (8, 12), (9, 12), (12, 13))
# A horizontal flip swaps left and right: joint j takes the place of FLIP_INDEX[j].
FLIP_INDEX = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13)
FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9))
UPPER_BODY = (6, 7, 8, 9, 10, 11, 12, 13)  # arms, neck and head, for the half-body augmentation
TORSO = (9, 2)  # PCK's torso size: left shoulder to right hip (bearpaw/eval_pose eval_pck.m)
TRAIN_IMAGES = 1000  # im0001-im1000 train, the rest test

# OKS falloffs. Twelve joints exist in COCO under the same name: their COCO sigma (pycocotools
# setKpParams). COCO has no neck and no head top; CrowdPose, whose 14 joints are LSP's, gives
# both 0.079 (the shoulder's) in its evaluation (Li et al. 2019, https://arxiv.org/abs/1812.00324;
# github:jin-s13/xtcocoapi demos/demo_crowdpose.py: sigmas .79 ... .79, .79 / 10), and so do we.
_CROWDPOSE_HEAD = {"neck": 0.079, "head_top": 0.079}
LSP_SIGMAS = tuple(float(COCO_PERSON_SIGMAS[COCO_PERSON_KEYPOINTS.index(name)])
                   if name in COCO_PERSON_KEYPOINTS else _CROWDPOSE_HEAD[name]
                   for name in JOINT_NAMES)

# A joint may sit on the border (im0126's right ankle is at y = 151.04 in a 151-pixel image);
# one further out than this fraction of the image side is an annotation error.
FAR_OUTSIDE = 0.1


@dataclass
class PoseDataset:
    """Single-person pose data decoded into memory: images[i] uint8 (3, H, W), joints (N, J, 2)
    float32 x, y in image pixels, visible (N, J) bool, boxes (N, 4) float32 person boxes
    (cx, cy, w, h) of aspect ¾ around all joints with 1.25 padding (joints_box), file_names;
    and the joint metadata: keypoint_names, skeleton (0-based pairs), flip_index, kpt_sigmas."""

    images: list[torch.Tensor]
    joints: torch.Tensor
    visible: torch.Tensor
    boxes: torch.Tensor
    file_names: list[str]
    name: str = "pose"
    keypoint_names: tuple[str, ...] = JOINT_NAMES
    skeleton: tuple[tuple[int, int], ...] = SKELETON
    flip_index: tuple[int, ...] = FLIP_INDEX
    kpt_sigmas: tuple[float, ...] = LSP_SIGMAS
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i], {"joints": self.joints[i], "visible": self.visible[i],
                                "box": self.boxes[i]}

    def subset(self, index: torch.Tensor) -> "PoseDataset":
        """The samples at `index` (int64), same metadata."""
        keep = index.tolist()
        return replace(self, images=[self.images[i] for i in keep], joints=self.joints[index],
                       visible=self.visible[index], boxes=self.boxes[index],
                       file_names=[self.file_names[i] for i in keep])

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image."""
        return [(int(im.shape[1]), int(im.shape[2])) for im in self.images]


def resolve_skeleton(pairs, names: tuple[str, ...] = JOINT_NAMES) -> tuple[tuple[int, int], ...]:
    """A skeleton given as pairs of joint names or 0-based indices → index pairs, checked: an
    unknown name or an index out of range is a one-line CnnkitError naming the limb."""
    out = []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise CnnkitError(f"skeleton limb {k} {tuple(pair)}: a limb joins exactly 2 joints")
        ends = []
        for end in pair:
            if isinstance(end, str):
                if end not in names:
                    raise CnnkitError(f"skeleton limb {k} {tuple(pair)}: "
                                      f"{suggest(end, names, 'joint')}")
                ends.append(names.index(end))
            elif not 0 <= int(end) < len(names):
                raise CnnkitError(f"skeleton limb {k} {tuple(pair)}: joint index {end} is not "
                                  f"in 0..{len(names) - 1}")
            else:
                ends.append(int(end))
        out.append((ends[0], ends[1]))
    return tuple(out)


def read_joints(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """joints (N, 14, 2) float64 and visible (N, 14) bool from LSP's joints.mat or joints.csv."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"{path} does not exist; LSP needs joints.mat or joints.csv")
    if path.suffix == ".mat":
        return _read_mat(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    raise CnnkitError(f"{path}: LSP joints come as joints.mat or joints.csv, not "
                      f"'{path.suffix}'")


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # noqa: PLC0415  (scipy only where a .mat is read)
    try:
        data = loadmat(path)
    except Exception as err:  # scipy raises several types for a corrupt file
        raise CnnkitError(f"{path}: not a readable MATLAB file ({err})") from None
    if "joints" not in data:
        raise CnnkitError(f"{path}: no variable 'joints' (LSP's joints.mat has one)")
    a = np.asarray(data["joints"], dtype=np.float64)
    if a.ndim == 3 and a.shape[:2] == (14, 3):
        raise CnnkitError(f"{path}: joints of shape {a.shape} is LSP-extended's layout "
                          f"(14 × 3 × N, 1 = visible); this reader takes LSP's 3 × 14 × N")
    if a.ndim != 3 or a.shape[:2] != (3, len(JOINT_NAMES)):
        raise CnnkitError(f"{path}: joints must be 3 × 14 × N (x, y, flag), got {a.shape}")
    _check_values(path, a[:2].transpose(2, 1, 0), a[2].T, "flag")
    # (3, 14, N) → (N, 14, 2); flag 0 = visible (README.txt of the data set).
    return a[:2].transpose(2, 1, 0).copy(), a[2].T == 0


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = [f"{n}_{c}" for n in JOINT_NAMES for c in ("x", "y", "visible")]
    if not rows or rows[0] != ["image", *header]:
        raise CnnkitError(f"{path}: the header must be 'image' and then <joint>_x, <joint>_y, "
                          f"<joint>_visible for the 14 LSP joints in order")
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header) + 1:
            raise CnnkitError(f"{path} line {line}: {len(row)} columns, expected "
                              f"{len(header) + 1}")
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError:
            raise CnnkitError(f"{path} line {line}: a value is not a number") from None
    a = np.asarray(values, dtype=np.float64).reshape(-1, len(JOINT_NAMES), 3)
    _check_values(path, a[..., :2], a[..., 2], "visible")
    return a[..., :2].copy(), a[..., 2] == 1  # joints.csv's visible = 1 − the .mat's flag


def _check_values(path: Path, xy: np.ndarray, flag: np.ndarray, what: str) -> None:
    bad = np.argwhere(~np.isfinite(xy).all(axis=-1))
    if len(bad):
        i, j = bad[0]
        raise CnnkitError(f"{path}: image {i + 1} {JOINT_NAMES[j]} has a non-finite position")
    bad = np.argwhere((flag != 0) & (flag != 1))
    if len(bad):
        i, j = bad[0]
        raise CnnkitError(f"{path}: image {i + 1} {JOINT_NAMES[j]} has {what} "
                          f"{flag[i, j]:g}; it must be 0 or 1")


def load_lsp(root: str | Path, split: str = "train", *, quiet: bool = True) -> PoseDataset:
    """The `split` ("train": im0001-im1000, "test": im1001 on) of the LSP folder `root`.

    joints.mat is read when present, else joints.csv. One-line CnnkitError when the joint
    entries and the images differ in number, or a joint lies further outside its image than
    FAR_OUTSIDE × the image side."""
    root = Path(root)
    path = root / "joints.mat" if (root / "joints.mat").is_file() else root / "joints.csv"
    joints, visible = read_joints(path)
    names = sorted(p.name for p in (root / "images").glob("im*.jpg"))
    if len(names) != len(joints):
        raise CnnkitError(f"{path} has {len(joints)} joint entries but {root / 'images'} holds "
                          f"{len(names)} im*.jpg images; they must match one to one")
    expected = [f"im{i + 1:04d}.jpg" for i in range(len(joints))]
    if names != expected:
        missing = sorted(set(expected) - set(names))[0]
        raise CnnkitError(f"{root / 'images'}: {missing} is missing (images must be "
                          f"im0001.jpg .. im{len(joints):04d}.jpg)")
    index = range(0, min(TRAIN_IMAGES, len(names))) if split == "train" else \
        range(TRAIN_IMAGES, len(names))
    images, sizes = [], []
    for i in tqdm(index, desc=f"decoding lsp {split}", unit="img", disable=quiet, leave=False):
        images.append(decode_rgb(root / "images" / names[i]))
        sizes.append(images[-1].shape[1:])
        _check_inside(path, names[i], joints[i], *sizes[-1])
    sel = list(index)
    boxes = np.stack([joints_box(joints[i]) for i in sel]) if sel else np.zeros((0, 4))
    return PoseDataset(images, torch.as_tensor(joints[sel], dtype=torch.float32),
                       torch.as_tensor(visible[sel]), torch.as_tensor(boxes, dtype=torch.float32),
                       [names[i] for i in sel], name="lsp")


def _check_inside(path: Path, name: str, joints: np.ndarray, height: int, width: int) -> None:
    """A joint beyond the image by more than FAR_OUTSIDE of its side: a one-line error."""
    margin = FAR_OUTSIDE * np.array([width, height])
    low, high = -margin, np.array([width, height]) - 1 + margin
    bad = np.argwhere((joints < low) | (joints > high))
    if len(bad):
        j, axis = bad[0]
        raise CnnkitError(f"{path}: {name} {JOINT_NAMES[j]} at ({joints[j, 0]:.1f}, "
                          f"{joints[j, 1]:.1f}) lies far outside the {width}×{height} image "
                          f"({'xy'[axis]} beyond {FAR_OUTSIDE:.0%} of its side)")


# --- lsp-multi: several LSP people on one canvas, for bottom-up assembly ---

@dataclass
class MultiPersonCanvas:
    """image uint8 (3, H, W); joints (P, J, 2) per person in canvas pixels; tiles: each
    person's [left, right) columns; sources: the test images used."""
    image: torch.Tensor
    joints: torch.Tensor
    tiles: list[tuple[int, int]]
    sources: list[str]


def lsp_multi(ds: PoseDataset, *, count: int = 100, seed: int = 0) -> list[MultiPersonCanvas]:
    """`count` canvases, each 2 or 3 distinct images of `ds` (drawn with `seed`) placed side by
    side at their own size, top-aligned, black below the shorter ones. LSP photos hold one
    annotated person each, so a canvas holds 2–3 people whose joints are known exactly and
    whose limbs never cross a tile border: an assembled skeleton is right when all its joints
    come from one tile. (Unannotated bystanders in a photo are possible, as in LSP itself.)"""
    generator = torch.Generator().manual_seed(seed)
    canvases = []
    for _ in range(count):
        people = 2 + int(torch.randint(2, (1,), generator=generator))
        picks = torch.randperm(len(ds), generator=generator)[:people].tolist()
        height = max(ds.images[i].shape[1] for i in picks)
        width = sum(ds.images[i].shape[2] for i in picks)
        image = torch.zeros(3, height, width, dtype=torch.uint8)
        joints, tiles, left = [], [], 0
        for i in picks:
            h, w = ds.images[i].shape[1:]
            image[:, :h, left:left + w] = ds.images[i]
            joints.append(ds.joints[i] + torch.tensor([left, 0.0]))
            tiles.append((left, left + w))
            left += w
        canvases.append(MultiPersonCanvas(image, torch.stack(joints), tiles,
                                          [ds.file_names[i] for i in picks]))
    return canvases
