"""YOLOv1: the paper's loss on a hand-computed example, target building, the detector contract
and a short training run."""
import math

import pytest
import torch

from cnnkit.models import create_model
from cnnkit.models.detection.yolov1 import build_targets, decode_boxes, yolov1_loss
from cnnkit.utils import CnnkitError
from tests.models.detection.test_yolo import loss_history, scene

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_build_targets_responsible_cell():
    # a 100 × 100 image, S = 2: the box [10, 20, 40, 60] has its centre (25, 40) in cell (0, 0)
    t = [{"boxes": torch.tensor([[10.0, 20, 40, 60], [60, 60, 90, 80], [5, 5, 45, 35]]),
          "labels": torch.tensor([2, 1, 1])}]
    boxes, classes, has_obj = build_targets(t, [(100, 100)], 2, 3)
    assert has_obj[0].tolist() == [[True, False], [False, True]]
    torch.testing.assert_close(boxes[0, 0, 0], torch.tensor([0.1, 0.2, 0.4, 0.6]))
    # the third box also centres in cell (0, 0): one object per cell, the first one kept
    assert classes[0, 0, 0] == 1 and classes[0, 1, 1] == 0  # labels 2, 1 → indices 1, 0


def test_loss_by_hand():
    """S = 2, B = 2, C = 2, one object [0.1, 0.2, 0.4, 0.6] (fractions) of class index 1."""
    t = [{"boxes": torch.tensor([[10.0, 20, 40, 60]]), "labels": torch.tensor([2])}]
    boxes, classes, has_obj = build_targets(t, [(100, 100)], 2, 3)
    pred = torch.zeros(1, 2, 2, 12)
    pred[..., 4] = pred[..., 9] = 0.1  # every box's confidence 0.1
    # cell (0, 0): box 0 off by 0.1 in x (centre 0.3 instead of 0.25), exact elsewhere;
    # box 1 small and far (IoU 0); class scores (0.7, 0.2)
    pred[0, 0, 0, :5] = torch.tensor([0.6, 0.8, math.sqrt(0.3), math.sqrt(0.4), 0.6])
    pred[0, 0, 0, 5:10] = torch.tensor([0.2, 0.2, 0.3, 0.3, 0.4])
    pred[0, 0, 0, 10:] = torch.tensor([0.7, 0.2])
    losses = yolov1_loss(pred, boxes, classes, has_obj)
    # box 0 spans x 0.15..0.45, y 0.2..0.6: intersection 0.25 × 0.4 = 0.1, union 0.14 → 5/7
    iou = 0.1 / 0.14
    assert math.isclose(losses["loss_box"].item(), 5 * 0.1 ** 2, rel_tol=1e-5)  # λcoord · Δx²
    assert math.isclose(losses["loss_obj"].item(), (0.6 - iou) ** 2, rel_tol=1e-5)
    # λnoobj · (box 1 of cell (0, 0): 0.4² + the 6 boxes of the other cells: 0.1² each)
    assert math.isclose(losses["loss_noobj"].item(), 0.5 * (0.4 ** 2 + 6 * 0.1 ** 2),
                        rel_tol=1e-5)
    assert math.isclose(losses["loss_cls"].item(), 0.7 ** 2 + (0.2 - 1) ** 2, rel_tol=1e-5)
    # the other box is responsible when it overlaps more: box 1 made exact
    pred[0, 0, 0, 5:9] = torch.tensor([0.5, 0.8, math.sqrt(0.3), math.sqrt(0.4)])
    losses = yolov1_loss(pred, boxes, classes, has_obj)
    assert losses["loss_box"].item() < 1e-10
    assert math.isclose(losses["loss_obj"].item(), (0.4 - 1) ** 2, rel_tol=1e-5)
    assert math.isclose(losses["loss_noobj"].item(), 0.5 * (0.6 ** 2 + 6 * 0.1 ** 2),
                        rel_tol=1e-5)


def test_decode_boxes():
    pred = torch.zeros(2, 2, 1, 4)
    pred[1, 0, 0] = torch.tensor([0.5, 0.25, 0.5, 0.4])  # row 1, column 0: (0.25, 0.625)
    boxes = decode_boxes(pred, 2)
    torch.testing.assert_close(boxes[1, 0, 0], torch.tensor([0.125, 0.545, 0.375, 0.705]))


def test_train_step_and_eval_format():
    torch.manual_seed(0)
    model = create_model("yolov1_small", num_classes=3, img_size=64).train()
    images, targets = scene(0, n=3)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, targets)
    assert set(losses) == {"loss_box", "loss_obj", "loss_noobj", "loss_cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval().score_thresh = -math.inf  # every box and class
    with torch.no_grad():
        out = model(images)
    for pred, img in zip(out, images):
        n = len(pred["scores"])
        assert set(pred) == {"boxes", "scores", "labels"}
        assert n > 0 and pred["boxes"].shape == (n, 4)
        assert pred["labels"].min() >= 1 and pred["labels"].max() <= 2
        assert (pred["boxes"][:, 0::2] <= img.shape[-1]).all() and (pred["boxes"] >= 0).all()
    with pytest.raises(CnnkitError, match="labels start at 1"):
        model.train()(images[:1], [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0])}])


def test_training_smoke_loss_falls():
    torch.manual_seed(0)
    model = create_model("yolov1_small", num_classes=3, img_size=64, dropout=0.0).train()
    history = loss_history(model, steps=40, lr=1e-3)
    assert sum(history[-5:]) / 5 < 0.3 * sum(history[:5]) / 5
