"""Detection augmentation moves boxes, masks and keypoints with the image: each op checked by
numbers on real samples (mnist-det canvases, an Oxford pet) and hand-made targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnkit.data import load_dataset
from cnnkit.data.det_augment import DetectionAugment, colour_jitter, crop, hflip, resize
from cnnkit.data.detection import COCO_PERSON_KEYPOINTS, flip_index_from_names
from cnnkit.data.formats import read_idx_pair
from cnnkit.data.mnist_det import build_mnist_det
from tests.conftest import DATASETS


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def canvases():
    mnist = DATASETS / "mnist"
    digits, labels = read_idx_pair(mnist / "t10k-images-idx3-ubyte.gz",
                                   mnist / "t10k-labels-idx1-ubyte.gz")
    return build_mnist_det(digits.numpy(), labels.numpy(), "test", count=40)


@pytest.fixture(scope="module")
def pet():
    return load_dataset("oxford-pets-det", "test", data_dir=DATASETS, quiet=True).subset([0])[0]


def _extent(mask: torch.Tensor) -> list[float]:
    ys, xs = np.nonzero(mask.numpy())
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _person(width=40, height=30):
    """One person: left shoulder visible at (10, 12), right shoulder occluded at (20, 12)."""
    kp = torch.zeros(1, 17, 3)
    kp[0, 5] = torch.tensor([10.0, 12, 2])
    kp[0, 6] = torch.tensor([20.0, 12, 1])
    image = torch.arange(3 * height * width).reshape(3, height, width).to(torch.uint8)
    return image, {"boxes": torch.tensor([[5.0, 6, 25, 28]]), "labels": torch.tensor([1]),
                   "keypoints": kp, "iscrowd": torch.zeros(1, dtype=torch.int64), "image_id": 1}


def _empty(h=20, w=30, joints=4):
    image = torch.full((3, h, w), 9, dtype=torch.uint8)
    return image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                   "masks": torch.zeros(0, h, w, dtype=torch.uint8),
                   "keypoints": torch.zeros(0, joints, 3),
                   "iscrowd": torch.zeros(0, dtype=torch.int64), "image_id": 3}


def _same(a, b):
    (image_a, ta), (image_b, tb) = a, b
    return torch.equal(image_a, image_b) and all(
        torch.equal(ta[k], tb[k]) if isinstance(ta[k], torch.Tensor) else ta[k] == tb[k]
        for k in ta)


# --- horizontal flip ---

def test_flip_moves_boxes_masks_and_swaps_left_and_right(pet):
    image, target = pet
    w = image.shape[2]
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    flipped, out = hflip(image, target)
    assert out["boxes"][0].tolist() == [w - x2, y1, w - x1, y2]
    assert torch.equal(flipped[:, :, 0], image[:, :, -1])
    assert out["boxes"][0].tolist() == _extent(out["masks"][0])  # still the mask's extent
    assert _same(hflip(flipped, out), pet)  # twice: the identity

    flip_index = flip_index_from_names(COCO_PERSON_KEYPOINTS)
    image, target = _person()
    _, out = hflip(image, target, flip_index)
    kp = out["keypoints"][0]
    # The left shoulder (joint 5) at x = 10 is now the right shoulder (joint 6) at 40 - 10.
    assert kp[6].tolist() == [30, 12, 2] and kp[5].tolist() == [20, 12, 1]
    assert (kp[[0, 1, 2, 3, 4] + list(range(7, 17))] == 0).all()  # unlabelled stay 0
    assert _same(hflip(*hflip(image, target, flip_index), flip_index), (image, target))


# --- scale jitter ---

@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_resize_scales_boxes_masks_and_keypoints_together(canvases, factor):
    image, target = canvases[3]
    size = (round(128 * factor), round(128 * factor))
    big, out = resize(image, target, size)
    assert big.shape == (3, *size) and big.dtype == torch.uint8
    assert torch.equal(out["boxes"], target["boxes"] * factor)
    assert out["masks"].shape == (len(target["boxes"]), *size)
    for box, mask in zip(out["boxes"].tolist(), out["masks"]):
        # Nearest-pixel masks: their extent is the scaled box, to a pixel.
        assert np.abs(np.subtract(_extent(mask), box)).max() <= 1
    _, kp_out = resize(*_person(), (60, 80))  # 40×30 → 80×60: both axes × 2
    assert kp_out["keypoints"][0, 5].tolist() == [20, 24, 2]
    flat = torch.full((3, 30, 40), 77, dtype=torch.uint8)
    assert (resize(flat, _person()[1], (13, 17))[0] == 77).all()


# --- random crop ---

def test_crop_keeps_box_equal_to_mask_extent(canvases):
    generator = torch.Generator().manual_seed(0)
    kept = dropped = 0
    for image, target in canvases:
        top, left = (int(v) for v in torch.randint(0, 65, (2,), generator=generator))
        out_image, out = crop(image, target, top, left, 64, 64)
        assert out_image.shape == (3, 64, 64)
        assert torch.equal(out_image, image[:, top:top + 64, left:left + 64])
        for box, mask in zip(out["boxes"].tolist(), out["masks"]):
            assert box == _extent(mask)
        n = len(out["boxes"])
        assert len(out["labels"]) == len(out["iscrowd"]) == len(out["masks"]) == n
        kept, dropped = kept + n, dropped + len(target["boxes"]) - n
    assert kept > 20 and dropped > 20  # both outcomes exercised


def test_crop_clips_and_drops_small_remainders():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 30, 30],    # fully inside
                          [0.0, 0, 22, 20],      # 8 of 22 columns left: 36% of its area: kept
                          [0.0, 30, 18, 40],     # 4 of 18 columns left: 22%: dropped
                          [40.0, 40, 41, 50]])   # 1 px wide: dropped
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3, 4]),
              "iscrowd": torch.tensor([0, 0, 0, 1]), "image_id": 7}
    _, out = crop(image, target, 5, 14, 40, 36)
    assert out["boxes"].tolist() == [[0, 5, 16, 25], [0, 0, 8, 15]]
    assert out["labels"].tolist() == [1, 2] and out["image_id"] == 7
    _, kp_out = crop(*_person(), 0, 15, 30, 25)  # the left shoulder (x = 10) is cut off
    assert kp_out["keypoints"][0, 5].tolist() == [0, 0, 0]
    assert kp_out["keypoints"][0, 6].tolist() == [5, 12, 1]


# --- colour, empty images, the random composition ---

def test_colour_jitter_changes_the_image_only():
    image, target = _person()
    assert torch.equal(colour_jitter(image, 1.0, 1.0, 1.0), image)
    darker = colour_jitter(image, 0.5, 1.0, 1.0)
    assert (darker.int() - (image.float() * 0.5).round().int()).abs().max() <= 1
    grey = colour_jitter(image, 1.0, 1.0, 0.0)  # no saturation: three equal channels
    assert (grey.int().diff(dim=0).abs() <= 1).all()
    augment = DetectionAugment(hflip=False, colour=0.4)
    out_image, out = augment(image, target, torch.Generator().manual_seed(1))
    assert not torch.equal(out_image, image) and _same((image, out), (image, target))


def test_images_without_objects_pass_through_every_op():
    image, target = _empty()
    for out_image, out in (hflip(image, target, [1, 0, 2, 3]), resize(image, target, (10, 15)),
                           crop(image, target, 2, 3, 10, 10)):
        h, w = out_image.shape[1:]
        assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, h, w)
        assert out["keypoints"].shape == (0, 4, 3) and out["image_id"] == 3
    augment = DetectionAugment(hflip=True, scale=(0.5, 2.0), crop_size=16, colour=0.3)
    out_image, out = augment(image, target, torch.Generator().manual_seed(0))
    assert out_image.shape[1:] == (16, 16) and out["boxes"].shape == (0, 4)


def test_augment_is_a_function_of_the_generator_state(canvases):
    augment = DetectionAugment(hflip=True, scale=(0.5, 2.0), crop_size=96, colour=0.2)
    sizes = set()
    for seed in range(6):
        first = augment(*canvases[seed], torch.Generator().manual_seed(seed))
        assert _same(first, augment(*canvases[seed], torch.Generator().manual_seed(seed)))
        h, w = first[0].shape[1:]
        sizes.add((h, w))
        assert 64 <= h <= 96 and (h, w) == (min(96, h), min(96, w))
        for box, mask in zip(first[1]["boxes"].tolist(), first[1]["masks"]):
            assert np.abs(np.subtract(_extent(mask), box)).max() <= 2
    assert len(sizes) > 1
    assert not DetectionAugment(hflip=False).active and DetectionAugment(scale=(1, 2)).active
    with pytest.raises(ValueError, match="scale must be a range"):
        DetectionAugment(scale=(2.0, 1.0))
