"""Detection figures on real Raccoon test photos, read back as PNGs and inspected."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.train.coco_eval import coco_evaluate
from cnnkit.utils import CnnkitError
from cnnkit.viz.detection import draw_detections, plot_detections, plot_pr_curves
from tests.conftest import DATASETS

RACCOON = DATASETS / "raccoon"


@pytest.fixture(scope="module")
def raccoons():
    """The first 3 test photos, (3, H, W) uint8 each, and their targets (VOC's 1-based pixel
    indices → x1y1x2y2 continuous coordinates)."""
    names = (RACCOON / "test.txt").read_text().split()[:3]
    images, targets = [], []
    for i, name in enumerate(names):
        picture = np.asarray(Image.open(RACCOON / "images" / name).convert("RGB"))
        images.append(torch.from_numpy(picture.copy()).permute(2, 0, 1))
        root = ET.parse(RACCOON / "annotations" / name.replace(".jpg", ".xml")).getroot()
        boxes = [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in root.iter("object")]
        boxes = torch.tensor(boxes) - torch.tensor([1.0, 1.0, 0.0, 0.0])
        targets.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
                        "image_id": i + 1})
    return images, targets


def _predictions(targets):
    """Each true box shifted by 10 % of its size (score 0.9), plus a false positive (0.3)."""
    out = []
    for target in targets:
        boxes = target["boxes"]
        shift = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) * 0.1
        out.append({"boxes": torch.cat([boxes + shift, torch.tensor([[5.0, 5.0, 60.0, 60.0]])]),
                    "labels": torch.ones(len(boxes) + 1, dtype=torch.int64),
                    "scores": torch.cat([torch.full((len(boxes),), 0.9), torch.tensor([0.3])])})
    return out


def test_draw_detections_marks_the_box_and_nothing_far_away():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=g)
    ys, xs = torch.meshgrid(torch.arange(60) + 0.5, torch.arange(80) + 0.5, indexing="ij")
    mask = (((xs - 35) / 15) ** 2 + ((ys - 40) / 15) ** 2 <= 1).float()  # inside the box
    before = image.permute(1, 2, 0).numpy().copy()
    drawn = draw_detections(image, torch.tensor([[20.0, 25.0, 50.0, 55.0], [60.0, 5.0, 75.0, 20.0]]),
                            torch.tensor([1, 2]), ["cat", "dog"], scores=torch.tensor([0.93, 0.1]),
                            masks=torch.stack([mask, mask])[:, None])
    assert drawn.dtype == np.uint8 and drawn.shape == (60, 80, 3)
    changed = (drawn != before).any(axis=2)
    assert changed[40, 20] and changed[40, 49] and changed[25, 35]  # the box's outline
    assert changed[40, 35]  # the mask's tint
    assert not changed[28, 22]  # in the box but outside the mask and the outline
    assert not changed[58, 78] and not changed[12, 68]  # far away; the 0.1-score dog
    assert changed[20, 22]  # the "cat 0.93" tab above the box
    assert np.array_equal(image.permute(1, 2, 0).numpy(), before)  # the input is untouched


def test_draw_detections_keypoints_and_errors():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    keypoints = torch.tensor([[[10.0, 40.0, 2.0], [40.0, 40.0, 2.0], [25.0, 10.0, 0.0]]])
    drawn = draw_detections(image, torch.tensor([[30.0, 5.0, 45.0, 20.0]]), torch.tensor([1]),
                            ["person"], keypoints=keypoints, skeleton=[(0, 1), (1, 2)])
    lit = drawn.any(axis=2)
    assert lit[40, 10] and lit[40, 25] and lit[40, 40]  # two joints and the bone between them
    assert not lit[25, 18]  # the bone to the unlabelled joint is not drawn
    with pytest.raises(CnnkitError, match=r"label 3 names no class; labels must be 1\.\.1"):
        draw_detections(image, torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([3]), ["a"])


def test_plot_detections_grid(tmp_path, raccoons):
    images, targets = raccoons
    path = plot_detections(images, _predictions(targets), targets, ["raccoon"],
                           tmp_path / "predictions.png")
    with Image.open(path) as png:
        assert png.size == (900, 300)  # 3 square cells in one row
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 20  # photos, not a blank canvas
    with pytest.raises(CnnkitError, match="3 images but 2 predictions"):
        plot_detections(images, _predictions(targets)[:2], None, ["raccoon"], tmp_path / "x.png")


def test_plot_pr_curves(tmp_path, raccoons):
    images, targets = raccoons
    sizes = [tuple(image.shape[1:]) for image in images]
    scores = coco_evaluate(targets, sizes, _predictions(targets), ["raccoon"])
    assert 0.5 < scores.stats["bbox"]["AP50"] <= 1.0
    path = plot_pr_curves(scores, tmp_path / "pr_curve.png")
    with Image.open(path) as png:
        assert png.size == (1200, 450)
        assert png.info.get("Title") == "bbox precision-recall curves"
    with pytest.raises(CnnkitError, match="no segm scores to plot; evaluated: bbox"):
        plot_pr_curves(scores, tmp_path / "x.png", iou_type="segm")
    assert not (tmp_path / "x.png").exists()
