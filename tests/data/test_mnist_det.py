"""mnist-det: canvases of real MNIST digits, checked against the digits they were made from."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.formats import read_idx_pair
from cnnkit.data.mnist_det import (CANVAS, MAX_DIGITS, MAX_IOU, MAX_SIDE, MIN_SIDE, MIN_VISIBLE,
                                   SEEDS, STROKE, box_iou, build_mnist_det, generate)
from tests.conftest import DATASETS

MNIST = DATASETS / "mnist"


@pytest.fixture(scope="module")
def digits():
    """{split: (uint8 (M, 28, 28), int64 (M,))} of the real IDX files."""
    found = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = read_idx_pair(MNIST / f"{prefix}-images-idx3-ubyte.gz",
                                       MNIST / f"{prefix}-labels-idx1-ubyte.gz")
        found[split] = images[:, 0].numpy(), labels.numpy()
    return found


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("mnist-det", "test", data_dir=DATASETS, download=False)


def test_registered_splits_have_their_counts_and_digits(digits, test_split):
    info = get_dataset_info("mnist-det")
    train = load_dataset("mnist-det", "train", data_dir=DATASETS, download=False)
    assert (len(train), len(test_split)) == (info.train_size, info.test_size) == (4000, 500)
    assert info.task == "detect" and not train.hflip_ok and train.classes == tuple("0123456789")
    # Each split is made of its own MNIST digits: the loader's canvases are the builder's.
    for ds, split in ((train, "train"), (test_split, "test")):
        again = build_mnist_det(*digits[split], split, count=3)
        assert all(torch.equal(ds.images[i], again.images[i]) for i in range(3))
    per_canvas = [len(t["boxes"]) for t in train.targets]
    assert min(per_canvas) == 1 and max(per_canvas) == MAX_DIGITS
    assert 3.0 < np.mean(per_canvas) < 3.8  # 1..6 drawn uniformly, a few left out


def test_same_seed_same_tensors(digits):
    a = build_mnist_det(*digits["test"], "test", count=40)
    b = build_mnist_det(*digits["test"], "test", count=60)  # a longer draw starts the same
    for i in range(40):
        assert torch.equal(a.images[i], b.images[i])
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(a.targets[i][key], b.targets[i][key])
    other = generate(digits["test"][0], 5, SEEDS["test"] + 1)
    assert not all(np.array_equal(c.image, a.images[i][0].numpy()) for i, c in enumerate(other))


def test_targets_are_the_visible_strokes_of_the_digits_used(digits, test_split):
    images, labels = digits["test"]
    canvases = generate(images, len(test_split), SEEDS["test"])
    for canvas, image, target in zip(canvases, test_split.images, test_split.targets):
        assert image.shape == (3, CANVAS, CANVAS) and torch.equal(image[0], image[2])
        assert np.array_equal(image[0].numpy(), canvas.image)
        masks, boxes = target["masks"].numpy(), target["boxes"]
        # Labels 1..10 are the digits 0..9 of the MNIST images pasted.
        assert target["labels"].tolist() == (labels[canvas.placements[:, 0]] + 1).tolist()
        # Masks never overlap, and together are exactly the canvas pixels ≥ STROKE.
        assert masks.sum(axis=0).max() <= 1
        assert np.array_equal(masks.any(axis=0), canvas.image >= STROKE)
        for mask, box, (source, side, top, left) in zip(masks, boxes.tolist(),
                                                         canvas.placements):
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight
            assert MIN_SIDE <= side <= MAX_SIDE
            # The mask is made of the strokes of that digit, resized and placed, at least
            # MIN_VISIBLE of them left visible.
            frame = np.asarray(Image.fromarray(images[source]).resize((side, side),
                                                                      Image.BILINEAR))
            strokes = np.zeros_like(mask)
            strokes[top:top + side, left:left + side] = frame >= STROKE
            assert not (mask & ~strokes.astype(bool)).any()
            assert mask.sum() >= MIN_VISIBLE * strokes.sum()
        iou = box_iou(boxes.double().numpy())
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= MAX_IOU
