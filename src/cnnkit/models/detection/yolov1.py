"""YOLOv1 (Redmon et al. 2016, "You Only Look Once: Unified, Real-Time Object Detection",
https://arxiv.org/abs/1506.02640), at a small scale, for teaching.

The image is divided into an S × S grid (S = 7). Each cell predicts B = 2 boxes — (x, y) of the
centre relative to the cell, (√w, √h) relative to the image, and a confidence meant to equal
Pr(object) · IoU(pred, truth) — and one set of C class probabilities, all as one linear
regression output of S·S·(5B + C) numbers (paper §2, Fig. 2).

The loss (paper eq. 3) is a sum of squared errors over the batch:

    λcoord Σ 1ᵒᵇʲᵢⱼ [(x - x̂)² + (y - ŷ)² + (√w - √ŵ)² + (√h - √ĥ)²]
    + Σ 1ᵒᵇʲᵢⱼ (C - Ĉ)² + λnoobj Σ 1ⁿᵒᵒᵇʲᵢⱼ (C - Ĉ)² + Σ 1ᵒᵇʲᵢ Σ_c (p(c) - p̂(c))²

with λcoord = 5, λnoobj = 0.5. The cell holding an object's centre is responsible for it, and
of its B boxes the one with the highest IoU with the object (1ᵒᵇʲᵢⱼ); the target confidence of
that box is that IoU. Here the sums are divided by the batch size, and a cell takes only the
first object whose centre falls in it (YOLOv1 predicts one class per cell, §2.4).

At test time each box scores Pr(class | object) · confidence per class (eq. 1), then per-class
NMS. Labels follow cnnkit's convention: `num_classes` counts the background, labels are
1..num_classes-1 in and out; C = num_classes - 1 inside.

Small-scale departures (the `yolov1_small` docstring): a 6-conv backbone with BatchNorm instead
of the 24-conv GoogLeNet-like one, 224-px inputs instead of 448, an adaptive pool to S × S so
any input size works, a 512-unit hidden layer instead of 4096.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.models.detection.retinanet import check_degenerate, check_targets
from cnnkit.ops.boxes import batched_nms, box_convert
from cnnkit.utils import CnnkitError


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)  # the paper's activation, φ(x) = max(x, 0.1x)


def decode_boxes(pred: torch.Tensor, s: int) -> torch.Tensor:
    """(..., S, S, B, 4) (x, y in the cell, √w, √h of the image) → (..., S, S, B, 4) xyxy in
    image fractions (0..1)."""
    cells = torch.arange(s, dtype=pred.dtype, device=pred.device)
    cx = (pred[..., 0] + cells.view(1, s, 1)) / s        # column index j on the last grid axis
    cy = (pred[..., 1] + cells.view(s, 1, 1)) / s        # row index i
    w, h = pred[..., 2].clamp(min=0) ** 2, pred[..., 3].clamp(min=0) ** 2
    return box_convert(torch.stack((cx, cy, w, h), -1), "cxcywh", "xyxy")


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matched xyxy boxes (..., 4), 0 for empty ones."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def build_targets(targets: list[dict], sizes, s: int, num_classes: int):
    """Per image: the responsible cells' object (box in image fractions, xyxy), class index and a
    mask. → boxes (N, S, S, 4), classes (N, S, S) long, has_obj (N, S, S) bool."""
    n = len(targets)
    boxes = torch.zeros(n, s, s, 4)
    classes = torch.zeros(n, s, s, dtype=torch.long)
    has_obj = torch.zeros(n, s, s, dtype=torch.bool)
    for k, (t, (h, w)) in enumerate(zip(targets, sizes)):
        scale = torch.tensor([w, h, w, h], dtype=torch.float)
        for box, label in zip(t["boxes"].float().cpu() / scale, t["labels"].tolist()):
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            i, j = min(int(cy * s), s - 1), min(int(cx * s), s - 1)
            if not has_obj[k, i, j]:  # one object per cell: the first
                boxes[k, i, j], classes[k, i, j], has_obj[k, i, j] = box, label - 1, True
    return boxes, classes, has_obj


def yolov1_loss(pred: torch.Tensor, gt_boxes: torch.Tensor, gt_classes: torch.Tensor,
                has_obj: torch.Tensor, num_boxes: int = 2, lambda_coord: float = 5.0,
                lambda_noobj: float = 0.5) -> dict[str, torch.Tensor]:
    """Paper eq. 3. pred (N, S, S, 5B + C): B × (x, y, √w, √h, conf), then C class scores;
    targets from `build_targets`. Each term summed and divided by N."""
    n, s = pred.shape[:2]
    box_pred = pred[..., :5 * num_boxes].unflatten(-1, (num_boxes, 5))  # (N, S, S, B, 5)
    class_pred = pred[..., 5 * num_boxes:]                              # (N, S, S, C)
    with torch.no_grad():
        ious = _pair_iou(decode_boxes(box_pred[..., :4], s), gt_boxes[..., None, :])  # (N,S,S,B)
        best = ious.argmax(-1)                                                    # (N, S, S)
        responsible = F.one_hot(best, num_boxes).bool() & has_obj[..., None]      # (N,S,S,B)
    # coordinates of the responsible box: x, y within the cell; √w, √h of the image
    cells = torch.arange(s, dtype=pred.dtype, device=pred.device)
    cx, cy = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2, (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2
    coord_target = torch.stack((cx * s - cells.view(1, s), cy * s - cells.view(s, 1),
                                (gt_boxes[..., 2] - gt_boxes[..., 0]).sqrt(),
                                (gt_boxes[..., 3] - gt_boxes[..., 1]).sqrt()), -1)  # (N, S, S, 4)
    coord_err = ((box_pred[..., :4] - coord_target[..., None, :]) ** 2).sum(-1)    # (N,S,S,B)
    conf = box_pred[..., 4]                                                         # (N,S,S,B)
    class_err = ((class_pred - F.one_hot(gt_classes, class_pred.shape[-1])) ** 2).sum(-1)
    zero = pred.sum() * 0.0  # keeps every output in the graph when a term is empty
    return {"loss_box": lambda_coord * coord_err[responsible].sum() / n + zero,
            "loss_obj": ((conf - ious) ** 2)[responsible].sum() / n,
            "loss_noobj": lambda_noobj * (conf ** 2)[~responsible].sum() / n,
            "loss_cls": class_err[has_obj].sum() / n + zero}


class YOLOv1(nn.Module):
    """A conv backbone → S × S pool → two fully connected layers → (S, S, 5B + C); images
    resized (not letterboxed, as in the paper) to img_size², values 0..1."""

    detector = True
    task = "detection"

    def __init__(self, num_classes: int = 21, *, grid: int = 7, num_boxes: int = 2,
                 img_size: int = 224, widths: tuple[int, ...] = (16, 32, 64, 128, 256, 256),
                 hidden: int = 512, dropout: float = 0.5, lambda_coord: float = 5.0,
                 lambda_noobj: float = 0.5, score_thresh: float = 0.001,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, in_chans: int = 3):
        super().__init__()
        if num_classes < 2:
            raise CnnkitError(f"YOLOv1: num_classes counts the background, so it must be ≥ 2 "
                              f"(one object class), got {num_classes}")
        self.num_classes, self.grid, self.num_boxes, self.img_size = (num_classes, grid,
                                                                      num_boxes, img_size)
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        layers, c = [], in_chans
        for k, width in enumerate(widths):  # 3×3 conv, 2×2 max-pool after all but the last
            layers.append(ConvNormAct(c, width, 3, norm="batchnorm", act=_leaky))
            if k < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        out = grid * grid * (5 * num_boxes + num_classes - 1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * grid * grid, hidden),
                                        _leaky(), nn.Dropout(dropout), nn.Linear(hidden, out))

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            check_targets(images, targets, self.num_classes)
            check_degenerate(targets)
            if any(t["labels"].numel() and int(t["labels"].min()) < 1 for t in targets):
                raise CnnkitError("YOLOv1: labels start at 1 (0 is cnnkit's background)")
        sizes = [tuple(img.shape[-2:]) for img in images]
        batch = torch.stack([F.interpolate(img[None], size=(self.img_size,) * 2,
                                           mode="bilinear", align_corners=False)[0]
                             for img in images])
        s = self.grid
        pred = self.classifier(self.pool(self.features(batch)))
        pred = pred.view(len(images), s, s, -1)  # (N, S, S, 5B + C)
        if self.training:
            boxes, classes, has_obj = build_targets(targets, sizes, s, self.num_classes)
            return yolov1_loss(pred, boxes.to(pred), classes.to(pred.device),
                               has_obj.to(pred.device), self.num_boxes, self.lambda_coord,
                               self.lambda_noobj)
        return self._detections(pred.detach(), sizes)

    def _detections(self, pred: torch.Tensor, sizes) -> list[dict]:
        b = self.num_boxes
        box_pred = pred[..., :5 * b].unflatten(-1, (b, 5))              # (N, S, S, B, 5)
        boxes = decode_boxes(box_pred[..., :4], self.grid)              # (N, S, S, B, 4)
        # class-specific confidence Pr(class | object) · confidence (paper eq. 1)
        scores = pred[..., None, 5 * b:] * box_pred[..., 4:5]           # (N, S, S, B, C)
        out = []
        for i, (h, w) in enumerate(sizes):
            flat = boxes[i].reshape(-1, 4) * torch.tensor([w, h, w, h], dtype=pred.dtype,
                                                          device=pred.device)
            flat[:, 0::2] = flat[:, 0::2].clamp(0, w)
            flat[:, 1::2] = flat[:, 1::2].clamp(0, h)
            box_idx, cls = torch.where(scores[i].reshape(flat.shape[0], -1) > self.score_thresh)
            s = scores[i].reshape(flat.shape[0], -1)[box_idx, cls]
            keep = batched_nms(flat[box_idx], s, cls, self.nms_thresh)[:self.detections_per_img]
            out.append({"boxes": flat[box_idx][keep], "scores": s[keep],
                        "labels": cls[keep] + 1})
        return out


# --- registered variants ---

@register_model(input_size=(3, 224, 224), test_input_size=(3, 64, 64),
                test_kwargs={"img_size": 64})
def yolov1_small(num_classes: int = 21, **kwargs) -> YOLOv1:
    """YOLOv1 at small scale (S 7, B 2, λcoord 5, λnoobj 0.5, √w √h as the paper; 21 = the
    20 VOC classes + background by default). Differs from the paper's network: six 3×3 conv
    layers (16..256 wide, BatchNorm, leaky ReLU 0.1) instead of 24, an adaptive average pool to
    7 × 7, a 512-unit hidden layer instead of 4096, 224-px inputs instead of 448."""
    return YOLOv1(num_classes, **kwargs)
