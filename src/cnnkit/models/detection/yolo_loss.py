"""YOLOv8's training targets and losses (ultralytics `utils/tal.py`, `utils/loss.py`; mmyolo's
YOLOv8 docs): anchor points, the distribution-focal box coding, the task-aligned assigner and
the three-term loss. Pure tensor code, no parameters; the model lives in `yolo.py`.

* Anchor points: one per feature-map cell, at the cell centre ((i + 0.5) · stride px).
* Boxes are (l, t, r, b) distances from the point, in stride units, each predicted as a
  distribution over 16 bins 0..15 (`reg_max`); the distance is its expectation
  (Li et al. 2020, "Generalized Focal Loss", https://arxiv.org/abs/2006.04388, §3.3).
* Task-aligned assignment (Feng et al. 2021, "TOOD", https://arxiv.org/abs/2108.07755, §3.2):
  for each object, among the points inside it, the `topk` = 10 with the largest
  t = s^α · u^β (s: predicted score of the object's class, u: CIoU of the predicted box with the
  object, α = 0.5, β = 6) are positives; a point claimed by several objects takes the one its
  box overlaps most. Soft class targets: t normalised so each object's best point gets its best
  IoU.
* Loss: BCE on the classes against those soft targets, CIoU and DFL on the positives, each
  weighted by the point's target score and divided by the targets' sum; gains box 7.5, cls 0.5,
  dfl 1.5 (ultralytics `default.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.ops.boxes import complete_box_iou_loss


# --- anchor points and box coding ---

def make_anchors(shapes: list[tuple[int, int]], strides, offset: float = 0.5,
                 device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level in grid units, (A, 2) xy, and each one's stride (A, 1), in
    the order the head's outputs are flattened (level by level, row-major)."""
    points, stride_column = [], []
    for (h, w), stride in zip(shapes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) + offset
        xs = torch.arange(w, device=device, dtype=dtype) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), -1).view(-1, 2))  # (H·W, 2)
        stride_column.append(torch.full((h * w, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_column)


def dist2bbox(distance: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(…, 4) l, t, r, b distances from (…, 2) points → (…, 4) xyxy boxes."""
    lt, rb = distance.chunk(2, -1)
    return torch.cat((points - lt, points + rb), -1)


def bbox2dist(points: torch.Tensor, boxes: torch.Tensor, max_dist: float) -> torch.Tensor:
    """(…, 4) xyxy boxes → l, t, r, b from the points, clamped to [0, max_dist - 0.01] so the
    upper bin of the two a distance falls between always exists."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((points - x1y1, x2y2 - points), -1).clamp(0, max_dist - 0.01)


def dfl_expectation(pred_dist: torch.Tensor, reg_max: int = 16) -> torch.Tensor:
    """(…, 4·reg_max) bin logits → (…, 4) expected distances Σ_i i · softmax_i."""
    probs = pred_dist.unflatten(-1, (4, reg_max)).softmax(-1)       # (…, 4, reg_max)
    return probs @ torch.arange(reg_max, dtype=probs.dtype, device=probs.device)  # (…, 4)


def distribution_focal_loss(pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL (GFL paper eq. 6): (N, reg_max) logits, (N,) continuous targets y in bins
    y_l = ⌊y⌋, y_r = y_l + 1 → (N,) −((y_r − y)·log S_l + (y − y_l)·log S_r). Targets are
    clamped to reg_max − 1 − 0.01, as ultralytics' DFLoss, so y_r is a valid bin."""
    reg_max = pred_dist.shape[-1]
    target = target.clamp(0, reg_max - 1 - 0.01)
    left = target.long()
    weight_left = left + 1 - target
    return (F.cross_entropy(pred_dist, left, reduction="none") * weight_left
            + F.cross_entropy(pred_dist, left + 1, reduction="none") * (1 - weight_left))


# --- task-aligned assignment ---

@dataclass
class Assignment:
    labels: torch.Tensor     # (B, A) int64 class of the assigned object (0 where background)
    boxes: torch.Tensor      # (B, A, 4) its box, xyxy (zeros where background)
    scores: torch.Tensor     # (B, A, K) soft one-hot class targets, zero rows for background
    foreground: torch.Tensor  # (B, A) bool
    gt_index: torch.Tensor   # (B, A) int64 index of the assigned object (0 where background)


class TaskAlignedAssigner:
    """TOOD's task-aligned assignment as YOLOv8 uses it (top-k 10, α 0.5, β 6): see the module
    docstring. Everything in one coordinate frame (pixels of the network input)."""

    def __init__(self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9):
        self.num_classes, self.topk, self.alpha, self.beta, self.eps = (num_classes, topk, alpha,
                                                                         beta, eps)

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                 points: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                 gt_mask: torch.Tensor) -> Assignment:
        """pred_scores (B, A, K) probabilities, pred_boxes (B, A, 4) xyxy, points (A, 2) xy;
        gt_labels (B, M) in 0..K-1, gt_boxes (B, M, 4) xyxy, gt_mask (B, M) bool: real objects
        (the rest pads images with fewer than M)."""
        b, a, k = pred_scores.shape
        m = gt_boxes.shape[1]
        if m == 0:  # no object in the batch: every point is background
            return Assignment(torch.zeros(b, a, dtype=torch.long, device=pred_scores.device),
                              torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores),
                              torch.zeros(b, a, dtype=torch.bool, device=pred_scores.device),
                              torch.zeros(b, a, dtype=torch.long, device=pred_scores.device))
        # points strictly inside each object: the smallest of l, t, r, b is positive
        lt, rb = gt_boxes[:, :, None, :2], gt_boxes[:, :, None, 2:]   # (B, M, 1, 2) each
        deltas = torch.cat((points - lt, rb - points), -1)            # (B, M, A, 4)
        inside = (deltas.amin(-1) > self.eps) & gt_mask[:, :, None]   # (B, M, A)

        # alignment t = s^α · u^β over the inside pairs; u = CIoU, clamped at 0
        overlaps = torch.zeros(b, m, a, dtype=pred_boxes.dtype, device=pred_boxes.device)
        pairs_gt = gt_boxes[:, :, None, :].expand(-1, -1, a, -1)[inside]    # (P, 4)
        pairs_pred = pred_boxes[:, None, :, :].expand(-1, m, -1, -1)[inside]  # (P, 4)
        overlaps[inside] = (1 - complete_box_iou_loss(pairs_gt, pairs_pred)).clamp(0).to(
            overlaps.dtype)
        # each object's class score at every point: (B, K, A) gathered at the labels → (B, M, A)
        class_scores = pred_scores.transpose(1, 2).gather(
            1, gt_labels[:, :, None].expand(-1, -1, a).clamp(0, k - 1))
        align = class_scores.pow(self.alpha) * overlaps.pow(self.beta) * inside

        # the top-k points per object (ties broken by topk's order; zero-alignment points
        # outside the object drop out through `inside`)
        top = align.topk(min(self.topk, a), dim=-1).indices              # (B, M, topk)
        in_topk = torch.zeros_like(inside).scatter_(-1, top, True)
        positive = in_topk & inside                                       # (B, M, A)

        # a point claimed by several objects goes to the one it overlaps most, among those
        # claiming it (ultralytics takes the argmax over all objects, which picks object 0 —
        # possibly one the point is not even inside — when every CIoU is clamped to 0)
        claimed = positive.sum(1, keepdim=True) > 1                       # (B, 1, A)
        if claimed.any():
            best = overlaps.masked_fill(~positive, -1).argmax(1)           # (B, A)
            best = F.one_hot(best, m).transpose(1, 2).bool()              # (B, M, A)
            positive = torch.where(claimed, best, positive)
        foreground = positive.any(1)                                      # (B, A)
        gt_index = positive.to(torch.uint8).argmax(1)                     # (B, A)

        labels = gt_labels.gather(1, gt_index)                            # (B, A)
        boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)
        scores = F.one_hot(labels.clamp(0, k - 1), k).to(pred_scores.dtype)
        scores = scores * foreground[..., None]                           # (B, A, K)

        # soft targets: t / max_t(object) · max_IoU(object), the largest over a point's objects
        align = align * positive
        max_align = align.amax(-1, keepdim=True)                          # (B, M, 1)
        max_overlap = (overlaps * positive).amax(-1, keepdim=True)        # (B, M, 1)
        norm = (align * max_overlap / (max_align + self.eps)).amax(1)     # (B, A)
        return Assignment(labels * foreground, boxes * foreground[..., None],
                          scores * norm[..., None], foreground, gt_index * foreground)


# --- the loss ---

class YOLOv8Loss:
    """v8DetectionLoss: {loss_box, loss_cls, loss_dfl} from the head's flattened outputs.

    Each term is already multiplied by its gain (box 7.5, cls 0.5, dfl 1.5). Unlike ultralytics,
    the sum is not multiplied by the batch size: here, as for every cnnkit detector, the loss is
    a per-batch mean, so learning rates need no rescaling with the batch.
    """

    def __init__(self, num_classes: int, reg_max: int = 16, *, box: float = 7.5,
                 cls: float = 0.5, dfl: float = 1.5, topk: int = 10, alpha: float = 0.5,
                 beta: float = 6.0):
        self.num_classes, self.reg_max = num_classes, reg_max
        self.gains = {"loss_box": box, "loss_cls": cls, "loss_dfl": dfl}
        self.assigner = TaskAlignedAssigner(num_classes, topk, alpha, beta)

    def __call__(self, pred_dist: torch.Tensor, pred_logits: torch.Tensor, points: torch.Tensor,
                 strides: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                 gt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred_dist (B, A, 4·reg_max) bin logits, pred_logits (B, A, K); points (A, 2) in grid
        units and strides (A, 1); the objects as in TaskAlignedAssigner, in input pixels."""
        pred_boxes = dist2bbox(dfl_expectation(pred_dist, self.reg_max), points)  # grid units
        target = self.assigner(pred_logits.detach().sigmoid(), pred_boxes.detach() * strides,
                               points * strides, gt_labels, gt_boxes, gt_mask)
        score_sum = target.scores.sum().clamp(min=1)
        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, target.scores,
                                                      reduction="sum") / score_sum
        fg = target.foreground
        if fg.any():
            weight = target.scores.sum(-1)[fg]                            # (P,)
            target_boxes = target.boxes / strides                         # grid units
            loss_box = (complete_box_iou_loss(pred_boxes[fg], target_boxes[fg])
                        * weight).sum() / score_sum
            target_ltrb = bbox2dist(points, target_boxes, self.reg_max - 1)[fg]  # (P, 4)
            dfl = distribution_focal_loss(pred_dist[fg].reshape(-1, self.reg_max),
                                          target_ltrb.reshape(-1))        # (P·4,)
            loss_dfl = (dfl.view(-1, 4).mean(-1) * weight).sum() / score_sum
        else:  # no positive: zero, but still part of the graph
            loss_box = loss_dfl = pred_dist.sum() * 0.0
        losses = {"loss_box": loss_box, "loss_cls": loss_cls, "loss_dfl": loss_dfl}
        return {key: value * self.gains[key] for key, value in losses.items()}
