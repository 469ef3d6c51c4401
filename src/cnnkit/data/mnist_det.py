"""`mnist-det`: real MNIST digits scattered on black canvases, with boxes and instance masks.

A detection set small enough to train on a CPU in minutes, yet with what makes detection hard:
several objects per image, of different sizes, sometimes overlapping. Each 128 × 128 canvas holds
1–6 digits of one MNIST split; each digit's 28 × 28 frame is resized (PIL bilinear, antialiased
when shrinking) to a side of 20–48 px and pasted at a random position. The idea is the cluttered
and multi-digit MNIST of Ba, Mnih & Kavukcuoglu 2014 (https://arxiv.org/abs/1412.7755), here with
the objects' extents as targets.

Decisions, so that targets are exact and checkable:
* A digit's strokes are its resized pixels ≥ STROKE (half intensity). Canvases composite by the
  maximum, so a canvas pixel ≥ STROKE is a stroke of some digit.
* Later digits lie on top: a stroke pixel belongs to the last digit with a stroke there, so the
  instance masks never overlap and together are exactly the canvas pixels ≥ STROKE.
* The box is the tight extent of the *visible* mask (x2 = last column + 1): box and mask always
  agree, as a detector learning both needs.
* A placement is redrawn (up to TRIES times, then the digit is left out) if any two visible boxes
  would overlap by IoU > MAX_IOU, or any digit would keep less than MIN_VISIBLE of its strokes.
* Labels 1..10 are the digits 0..9 (0 is the background).

Everything comes from numpy's generator seeded per split (SEEDS): the same canvases on every
machine and call. The train split draws only MNIST training digits, the test split only test
digits, each digit image at most once per split (a permutation, read in order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cnnkit.data.detection import DetectionDataset
from cnnkit.utils import CnnkitError

CANVAS = 128
MIN_DIGITS, MAX_DIGITS = 1, 6
MIN_SIDE, MAX_SIDE = 20, 48  # side of the resized 28 × 28 MNIST frame, px
STROKE = 128  # a pixel at least half white is a stroke
MAX_IOU = 0.3
MIN_VISIBLE = 0.5
TRIES = 20
SIZES = {"train": 4000, "test": 500}
SEEDS = {"train": 20_240_101, "test": 20_240_102}
CLASSES = tuple(str(d) for d in range(10))


@dataclass
class Canvas:
    """One generated image: uint8 image (H, W); masks uint8 (n, H, W); boxes float32 (n, 4);
    placements int64 (n, 4): the MNIST index, side, top and left of each digit, in paste order."""

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    placements: np.ndarray


def _extent(mask: np.ndarray) -> np.ndarray | None:
    """x1, y1, x2, y2 (continuous) of a mask's pixels; None when it has none."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def box_iou(boxes: np.ndarray) -> np.ndarray:
    """(n, n) IoU between the rows of (n, 4) x1, y1, x2, y2."""
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])  # (n, n, 2)
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    return inter / (area[:, None] + area[None, :] - inter)


def _fits(owner: np.ndarray, boxes: np.ndarray, counts: list[int], new_box: np.ndarray
          ) -> np.ndarray | None:
    """The visible boxes (n + 1, 4) after the newest digit (box `new_box`, already written into
    ownership map `owner`) covered the others, if each earlier digit keeps MIN_VISIBLE of its
    `counts` strokes and no two visible boxes overlap by more than MAX_IOU; else None."""
    visible = [new_box]
    for j in range(len(boxes) - 1, -1, -1):
        x1, y1, x2, y2 = boxes[j].astype(int)
        if x1 >= new_box[2] or x2 <= new_box[0] or y1 >= new_box[3] or y2 <= new_box[1]:
            visible.append(boxes[j])  # untouched by the new digit
            continue
        # A digit's visible pixels only ever shrink: its previous box holds them all.
        region = owner[y1:y2, x1:x2] == j
        if region.sum() < MIN_VISIBLE * counts[j]:
            return None
        visible.append(_extent(region) + (x1, y1, x1, y1))
    visible = np.stack(visible[:0:-1] + visible[:1])  # back in paste order, the newest last
    iou = box_iou(visible)
    np.fill_diagonal(iou, 0)
    return visible if iou.max() <= MAX_IOU else None


def render_canvas(digits: np.ndarray, sources: list[int], rng: np.random.Generator) -> Canvas:
    """Paste the MNIST digits `sources` (indices into uint8 (M, 28, 28) `digits`) one by one,
    each at a random side and position that keeps the rules of the module docstring."""
    image = np.zeros((CANVAS, CANVAS), np.uint8)
    owner = np.full((CANVAS, CANVAS), -1, np.int8)  # which digit each stroke pixel shows
    counts, placed, boxes = [], [], np.zeros((0, 4))
    for source in sources:
        frame = Image.fromarray(digits[source])
        for _ in range(TRIES):
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
            pixels = np.asarray(frame.resize((side, side), Image.BILINEAR))  # (side, side)
            strokes = pixels >= STROKE
            box = _extent(strokes)
            if box is None:
                continue
            trial = owner.copy()
            trial[top:top + side, left:left + side][strokes] = len(counts)
            found = _fits(trial, boxes, counts, box + (left, top, left, top))
            if found is None:
                continue
            owner, boxes = trial, found
            window = image[top:top + side, left:left + side]
            np.maximum(window, pixels, out=window)  # composite by the maximum
            counts.append(int(strokes.sum()))
            placed.append((source, side, top, left))
            break
    masks = (owner[None] == np.arange(len(placed))[:, None, None]).astype(np.uint8)
    return Canvas(image, masks, boxes.astype(np.float32),
                  np.array(placed, dtype=np.int64).reshape(-1, 4))


def generate(digits: np.ndarray, count: int, seed: int) -> list[Canvas]:
    """`count` canvases from uint8 digits (M, 28, 28) (or (M, 1, 28, 28)), seeded by `seed`."""
    digits = np.ascontiguousarray(np.asarray(digits, dtype=np.uint8).reshape(-1, 28, 28))
    if not len(digits) or count < 0:
        raise CnnkitError(f"need digit images and count ≥ 0, got {len(digits)} digits, "
                          f"count {count}")
    rng = np.random.default_rng(seed)
    order, position, canvases = rng.permutation(len(digits)), 0, []
    for _ in range(count):
        n = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        sources = [int(order[(position + k) % len(order)]) for k in range(n)]
        position += n
        canvases.append(render_canvas(digits, sources, rng))
    return canvases


def build_mnist_det(digits, digit_labels, split: str, *, count: int | None = None
                    ) -> DetectionDataset:
    """The `split` canvases from that split's MNIST digits and labels; `count` defaults to
    SIZES[split], the seed is always SEEDS[split] (a smaller count is a prefix: canvases are
    drawn one after another)."""
    if split not in SEEDS:
        raise CnnkitError(f"unknown split '{split}' for mnist-det; choose train or test")
    labels = np.asarray(digit_labels, dtype=np.int64)
    canvases = generate(digits, SIZES[split] if count is None else count, SEEDS[split])
    images, targets = [], []
    for i, c in enumerate(canvases):
        grey = torch.from_numpy(c.image)
        # One grey plane seen as three channels: no copy (4000 canvases stay 65 MB).
        images.append(grey.expand(3, CANVAS, CANVAS))
        targets.append({"boxes": torch.from_numpy(c.boxes),
                        "labels": torch.from_numpy(labels[c.placements[:, 0]] + 1),
                        "masks": torch.from_numpy(c.masks), "image_id": i + 1,
                        "iscrowd": torch.zeros(len(c.boxes), dtype=torch.int64)})
    return DetectionDataset(images, targets, CLASSES, "mnist-det",
                            file_names=[f"{split}-{i:05d}" for i in range(len(images))],
                            hflip_ok=False)
