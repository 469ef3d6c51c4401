"""YOLO augmentation: mosaic views keep every box on its object; HSV jitter is exact."""
import colorsys

import pytest
import torch

from cnnkit.data.det_augment import _hsv_to_rgb, _rgb_to_hsv, hsv_jitter
from cnnkit.data.mosaic import Mosaic

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {1: (230, 20, 20), 2: (20, 220, 20), 3: (20, 20, 230)}


def _scene(seed: int) -> tuple[torch.Tensor, dict]:
    """A black image of random size with 1–3 rectangles, each painted in its class's colour."""
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randint(60, 140, (2,), generator=g).tolist()
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    boxes, labels = [], []
    count = int(torch.randint(1, 4, (1,), generator=g))
    for k in range(count):  # one rectangle per vertical band: they never overlap
        band = w // count
        bw, bh = int(torch.randint(10, band - 2, (1,), generator=g)), int(torch.randint(14, 40, (1,), generator=g))
        x0 = k * band + int(torch.randint(0, band - bw, (1,), generator=g))
        y0 = int(torch.randint(0, h - bh, (1,), generator=g))
        label = int(torch.randint(1, 4, (1,), generator=g))
        image[:, y0:y0 + bh, x0:x0 + bw] = torch.tensor(COLOURS[label]).view(3, 1, 1)
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        labels.append(label)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                   "labels": torch.tensor(labels), "image_id": seed}


def test_every_mosaic_box_lies_on_an_object_of_its_class():
    images, targets = zip(*(_scene(seed) for seed in range(12)))
    mosaic = Mosaic(96)
    checked = 0
    for seed in range(30):
        image, target = mosaic(list(images), list(targets), seed % 12, torch.Generator().manual_seed(seed))
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
        assert len(target["boxes"]) == len(target["labels"])
        for box, label in zip(target["boxes"], target["labels"]):
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            inner = image[:, round(y0) + 1:round(y1) - 1, round(x0) + 1:round(x1) - 1].float()
            if inner.shape[1] < 2 or inner.shape[2] < 2:
                continue
            # Inside the box (less its blurred rim) only the object's own colour may show.
            colour = torch.tensor(COLOURS[int(label)], dtype=torch.float32).view(3, 1, 1)
            match = ((inner - colour).abs().amax(dim=0) < 60).float().mean()
            assert match > 0.9, (seed, box, label)
            checked += 1
    assert checked > 40


def test_mosaic_is_a_pure_function_of_the_generator():
    images, targets = zip(*(_scene(seed) for seed in range(5)))
    a = Mosaic(64)(list(images), list(targets), 2, torch.Generator().manual_seed(7))
    b = Mosaic(64)(list(images), list(targets), 2, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_images_without_objects_give_an_empty_target():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    image, target = Mosaic(64)([torch.zeros(3, 50, 70, dtype=torch.uint8)], [empty], 0,
                               torch.Generator().manual_seed(0))
    assert image.shape == (3, 64, 64) and target["boxes"].shape == (0, 4)


def test_hsv_conversion_matches_colorsys_and_round_trips():
    pixels = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    hsv = _rgb_to_hsv(pixels)
    for y, x in [(0, 0), (3, 4), (6, 8)]:
        expected = colorsys.rgb_to_hsv(*pixels[:, y, x].tolist())
        assert hsv[:, y, x].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(_hsv_to_rgb(hsv), pixels, atol=1e-5)


def test_hsv_jitter_with_zero_gains_is_the_identity_and_otherwise_changes_colour():
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(hsv_jitter(image, (0.0, 0.0, 0.0), torch.Generator().manual_seed(0)), image)
    jittered = hsv_jitter(image, (0.015, 0.7, 0.4), torch.Generator().manual_seed(0))
    assert jittered.dtype == torch.uint8 and not torch.equal(jittered, image)
