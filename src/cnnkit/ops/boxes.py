"""Box operations for detection, with torchvision's names and semantics (`torchvision.ops.boxes`).

Boxes are (N, 4) float tensors in (x1, y1, x2, y2) pixel coordinates with x1 <= x2, y1 <= y2, and
widths are x2 - x1 (no "+1", as in torchvision since 0.3; Detectron's old convention added one).

* Overlaps: `box_area`, `box_iou` and the pairwise (N, M) GIoU / DIoU / CIoU matrices; their
  elementwise loss forms `generalized_box_iou_loss`, `distance_box_iou_loss`,
  `complete_box_iou_loss` (the same formulas, with torchvision's eps placement).
* `nms` / `batched_nms`: exact greedy non-maximum suppression, vectorised (below).
* `BoxCoder`: Faster R-CNN's weighted deltas (torchvision `models/detection/_utils.py`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from cnnkit.utils import CnnkitError

__all__ = ["box_area", "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou",
           "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
           "box_convert", "clip_boxes_to_image", "remove_small_boxes", "nms", "batched_nms",
           "BoxCoder"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half precision to float32 and small ints to int32, so products of coordinates don't
    overflow (torchvision `ops/_utils._upcast`)."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise CnnkitError(f"{name} must have shape (N, 4) in (x1, y1, x2, y2) format, "
                          f"got {tuple(boxes.shape)}")


# --- overlaps ---

def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N,) areas of (N, 4) xyxy boxes."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_inter_union(boxes1: torch.Tensor, boxes2: torch.Tensor):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    # one (N, M) op per coordinate: ~10x faster on the CPU than broadcasting (N, 1, 2) pairs
    ax1, ay1, ax2, ay2 = (c[:, None] for c in boxes1.unbind(1))  # (N, 1) each
    bx1, by1, bx2, by2 = (c.contiguous() for c in boxes2.unbind(1))  # (M,) each
    w = _upcast(torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(min=0)  # (N, M)
    h = _upcast(torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(min=0)  # (N, M)
    inter = w * h
    # the operation order of torchvision's NMS kernel: (area_i + area_j) - inter
    union = area1[:, None] + area2[None, :] - inter
    return inter, union


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of every pair. 0/0 (two empty boxes) gives NaN, as in
    torchvision."""
    inter, union = _box_inter_union(boxes1, boxes2)
    return inter / union


def _enclosing_wh(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2) smallest enclosing box
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    return _upcast(rb - lt).clamp(min=0)                      # (N, M, 2)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, M) GIoU = IoU - (|C| - |A ∪ B|) / |C|, C the smallest enclosing box
    (Rezatofighi et al. 2019, https://arxiv.org/abs/1902.09630). In [-1, 1]."""
    inter, union = _box_inter_union(boxes1, boxes2)
    wh = _enclosing_wh(boxes1, boxes2)
    area_c = wh[..., 0] * wh[..., 1]
    return inter / union - (area_c - union) / area_c


def _box_diou_iou(boxes1, boxes2, eps):
    iou = box_iou(boxes1, boxes2)
    wh = _enclosing_wh(boxes1, boxes2)
    diagonal_sq = wh[..., 0] ** 2 + wh[..., 1] ** 2 + eps
    cx1, cy1 = (boxes1[:, 0] + boxes1[:, 2]) / 2, (boxes1[:, 1] + boxes1[:, 3]) / 2
    cx2, cy2 = (boxes2[:, 0] + boxes2[:, 2]) / 2, (boxes2[:, 1] + boxes2[:, 3]) / 2
    centres_sq = (_upcast(cx1[:, None] - cx2[None, :]) ** 2
                  + _upcast(cy1[:, None] - cy2[None, :]) ** 2)  # (N, M)
    return iou - centres_sq / diagonal_sq, iou


def distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor,
                     eps: float = 1e-7) -> torch.Tensor:
    """(N, M) DIoU = IoU - ρ²(centres) / c², c the enclosing box's diagonal
    (Zheng et al. 2019, https://arxiv.org/abs/1911.08287)."""
    return _box_diou_iou(_upcast(boxes1), _upcast(boxes2), eps)[0]


def _aspect_penalty(w1, h1, w2, h2):
    # v of the CIoU paper: how far the two aspect ratios are apart, in [0, 1]
    return (4 / math.pi ** 2) * (torch.atan(w1 / h1) - torch.atan(w2 / h2)) ** 2


def complete_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor,
                     eps: float = 1e-7) -> torch.Tensor:
    """(N, M) CIoU = DIoU - α·v, v the aspect-ratio penalty and α = v / (1 - IoU + v), α held
    constant for the gradient as in the paper (https://arxiv.org/abs/1911.08287, eq. 11)."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    diou, iou = _box_diou_iou(boxes1, boxes2, eps)
    w1, h1 = boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1]
    w2, h2 = boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1]
    v = _aspect_penalty(w1[:, None], h1[:, None], w2[None, :], h2[None, :])  # (N, M)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


# --- elementwise losses (boxes1[i] against boxes2[i]) ---

def _loss_terms(boxes1, boxes2, eps):
    """IoU, union and the enclosing box of matched pairs, torchvision's `_loss_inter_union`."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    iw = torch.min(x2, x2g) - torch.max(x1, x1g)
    ih = torch.min(y2, y2g) - torch.max(y1, y1g)
    # the product only where both sides overlap, as torchvision's masked assignment
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    cw = torch.max(x2, x2g) - torch.min(x1, x1g)
    ch = torch.max(y2, y2g) - torch.min(y1, y1g)
    return inter / (union + eps), union, cw, ch


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise CnnkitError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def generalized_box_iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor,
                             reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU of matched pairs ((..., 4) each); never zero-gradient, even without overlap."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    iou, union, cw, ch = _loss_terms(boxes1, boxes2, eps)
    area_c = cw * ch
    return _reduce(1 - (iou - (area_c - union) / (area_c + eps)), reduction)


def _diou_loss(boxes1, boxes2, eps):
    iou, _, cw, ch = _loss_terms(boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    centres_sq = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    return 1 - iou + centres_sq / (cw ** 2 + ch ** 2 + eps), iou


def distance_box_iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor,
                          reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """1 - DIoU of matched pairs: also pulls the centres together."""
    return _reduce(_diou_loss(_upcast(boxes1), _upcast(boxes2), eps)[0], reduction)


def complete_box_iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor,
                          reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """1 - CIoU of matched pairs: DIoU loss plus α·v for the aspect ratio."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    loss, iou = _diou_loss(boxes1, boxes2, eps)
    w1, h1 = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
    w2, h2 = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
    v = _aspect_penalty(w2, h2, w1, h1)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(loss + alpha * v, reduction)


# --- formats and sanitising ---

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert (..., 4) boxes between 'xyxy' (corners), 'xywh' (top-left corner, size) and
    'cxcywh' (centre, size)."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise CnnkitError(f"unknown box format {fmt!r}; choose from {', '.join(BOX_FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def clip_boxes_to_image(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clamp (..., 4) xyxy boxes into an image of `size` = (height, width): x into [0, width],
    y into [0, height] (the far edge is a coordinate, not a pixel index)."""
    height, width = size
    xs = boxes[..., 0::2].clamp(min=0, max=width)             # (..., 2)
    ys = boxes[..., 1::2].clamp(min=0, max=height)            # (..., 2)
    return torch.stack((xs, ys), dim=-1).reshape(boxes.shape)  # (..., 2, 2) -> (..., 4) x1y1x2y2


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose width and height are both >= min_size."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


# --- non-maximum suppression ---
#
# Greedy NMS (torchvision csrc/ops/cpu/nms_kernel.cpp): visit boxes by decreasing score; keep a box
# unless a kept, higher-ranked box overlaps it with IoU > threshold (strictly). Vectorised in
# blocks of _NMS_BLOCK ranks: the boxes of a block that no earlier block suppressed are resolved
# among themselves (below), then the block's kept boxes suppress every later box with tensor ops.
# Each IoU is computed at most once and a Python loop runs over blocks, never over boxes.
#
# Every op stays single-threaded: under torch's parallel grain (32768 elements,
# at::internal::GRAIN_SIZE), and index_select / comparisons instead of 2-D advanced indexing and
# triu, which go parallel at any size. NMS is many small ops, and on a busy CPU each
# multi-threaded op can wait a scheduler slice for its second thread: 1,000 boxes took 1.2 s that
# way on 2 loaded cores, and take ~3 ms now.
_NMS_BLOCK = 128    # ranks resolved together: a (128, 128) slab stays under the grain
_NMS_SERIAL = 32767  # the most elements one op may touch and still run on one thread


def _resolve_block(inner: torch.Tensor) -> torch.Tensor:
    """Greedy survivors of a block. inner[a, b] (a < b): a would suppress b if a is kept.

    keep[b] = not any(keep[a] & inner[a, b] for a < b) defines keep uniquely (by induction on b),
    so iterating it from all-True reaches exactly the greedy answer; iteration t fixes at least
    rank t, and in practice it stops after the longest suppression chain, a handful of steps.
    """
    keep = torch.ones(inner.shape[0], dtype=torch.bool, device=inner.device)
    if not inner.any():
        return keep
    while True:
        new = ~(inner & keep[:, None]).any(0)
        if torch.equal(new, keep):
            return keep
        keep = new


def _float_threshold(iou_threshold: float, dtype: torch.dtype) -> float:
    """The threshold t' in `dtype` with iou > t' exactly when float(iou) > iou_threshold.

    torchvision compares the float IoU against the *double* threshold; torch would round the
    threshold to float first. 0.3 rounds up in float32 (0.3000000119), so an IoU of exactly
    float32(0.3) — 3/10 — must suppress and would not. Rounding the threshold down fixes it.
    """
    t = torch.tensor(iou_threshold, dtype=dtype)
    if t.item() > iou_threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return t.item()


def _nms(boxes, scores, iou_threshold, groups=None) -> torch.Tensor:
    _check_boxes(boxes)
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise CnnkitError(f"scores must have shape ({boxes.shape[0]},) to match boxes, "
                          f"got {tuple(scores.shape)}")
    if not boxes.is_floating_point():
        raise CnnkitError(f"nms needs floating-point boxes, got {boxes.dtype}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    with torch.no_grad():
        # stable: equal scores rank the lower index first. torchvision's CPU kernel calls
        # scores.sort(0, true), the unstable overload, and this torch's CPU sort (x86-simd-sort)
        # does reorder ties, so torchvision leaves the order among equal scores unspecified.
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes = _upcast(boxes).index_select(0, order)                # (N, 4) by rank
        x1, y1, x2, y2 = (c.contiguous() for c in boxes.unbind(1))  # (N,) each
        area = (x2 - x1) * (y2 - y1)
        groups = None if groups is None else groups.index_select(0, order)
        threshold = _float_threshold(iou_threshold, boxes.dtype)

        table = torch.stack((x1, y1, x2, y2, area), 1)              # (N, 5)

        def iou_slab(ranks, c0, c1):
            """(R, c1 - c0) IoU of the boxes ranked `ranks` against ranks c0..c1-1, by the
            kernel's formula and operation order, so comparisons agree with it bit for bit.
            0/0 (empty boxes) and pairs of different classes read -inf: never > threshold."""
            rx1, ry1, rx2, ry2, rarea = table.index_select(0, ranks).unbind(1)  # (R,) each
            w = torch.min(rx2[:, None], x2[c0:c1])                  # (R, c1 - c0)
            w.sub_(torch.max(rx1[:, None], x1[c0:c1])).clamp_(min=0)
            h = torch.min(ry2[:, None], y2[c0:c1])
            h.sub_(torch.max(ry1[:, None], y1[c0:c1])).clamp_(min=0)
            inter = w.mul_(h)
            iou = inter.div_((rarea[:, None] + area[c0:c1]).sub_(inter))
            iou.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
            if groups is not None:  # batched: only boxes of the same class suppress each other
                iou.masked_fill_(groups.index_select(0, ranks)[:, None] != groups[c0:c1],
                                 -math.inf)
            return iou

        r = torch.arange(_NMS_BLOCK, device=boxes.device)
        earlier = r[:, None] < r[None, :]                          # (B, B) strict upper triangle
        removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        kept = []
        for start in range(0, n, _NMS_BLOCK):
            stop = min(start + _NMS_BLOCK, n)
            cand = torch.where(~removed[start:stop])[0]      # (A,) ranks within the block
            a = cand.numel()
            if a == 0:
                continue
            inner = iou_slab(start + cand, start, stop).index_select(1, cand) > threshold  # (A, A)
            keep = start + cand[_resolve_block(inner & earlier[:a, :a])]  # (K,) ranks kept
            kept.append(keep)
            step = max(_NMS_SERIAL // keep.numel(), 1)
            for c0 in range(stop, n, step):                 # later boxes, in serial-sized slabs
                c1 = min(c0 + step, n)
                removed[c0:c1] |= iou_slab(keep, c0, c1).amax(0) > threshold
        return order[torch.cat(kept)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, by decreasing score.

    A box is dropped when a kept, higher-scored box overlaps it with IoU > iou_threshold
    (strictly). Equal scores rank the lower index first. Boxes with zero area have IoU 0/0 = NaN
    with an identical box and are never suppressed by it, as in torchvision.
    """
    return _nms(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each category `idxs` (N,) independently; kept indices by decreasing score.

    Exactly per-class NMS merged by score. torchvision gets the same effect by offsetting each
    class's boxes by idx·(max coordinate + 1) so classes cannot overlap; here the IoU matrix is
    already in hand, so the class condition is a mask on it instead — no float32 rounding of
    shifted coordinates (an offset of 90 classes × 1000 px leaves float32 a step of 0.008 px).
    """
    if idxs.shape != scores.shape:
        raise CnnkitError(f"idxs must have the shape of scores {tuple(scores.shape)}, "
                          f"got {tuple(idxs.shape)}")
    return _nms(boxes, scores, iou_threshold, groups=idxs)


# --- Faster R-CNN box coding ---

class BoxCoder:
    """Encode boxes as deltas (dx, dy, dw, dh) relative to reference boxes, and decode them back.

    dx = wx·(gx - px)/pw, dy = wy·(gy - py)/ph, dw = ww·log(gw/pw), dh = wh·log(gh/ph) for
    centres (gx, gy), (px, py) and sizes (Girshick et al., R-CNN appendix C,
    https://arxiv.org/abs/1311.2524). The weights rescale the deltas to unit-ish variance:
    (10, 10, 5, 5) for Faster R-CNN's box head, (1, 1, 1, 1) for its RPN. Decoding clamps dw, dh
    at log(1000/16) so exp() cannot overflow on a wild prediction (Detectron's bbox_xform_clip).
    Widths are x2 - x1, with no +1 (torchvision's convention since 0.3).
    """

    def __init__(self, weights: tuple[float, float, float, float],
                 bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: Sequence[torch.Tensor],
               proposals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per image: the deltas that move each proposal onto its matched reference box."""
        boxes_per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(list(reference_boxes)), torch.cat(list(proposals)))
        return targets.split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=reference_boxes.dtype,
                                         device=reference_boxes.device)
        pw = proposals[:, 2] - proposals[:, 0]
        ph = proposals[:, 3] - proposals[:, 1]
        px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
        gw = reference_boxes[:, 2] - reference_boxes[:, 0]
        gh = reference_boxes[:, 3] - reference_boxes[:, 1]
        gx, gy = reference_boxes[:, 0] + 0.5 * gw, reference_boxes[:, 1] + 0.5 * gh
        return torch.stack((wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=1)  # (N, 4)

    def decode(self, rel_codes: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """(sum Ni, K, 4) boxes from (sum Ni, K·4) deltas (K = classes, or 1) and per-image
        (Ni, 4) reference boxes."""
        concat = torch.cat(list(boxes))
        box_sum = concat.shape[0]
        if box_sum > 0:
            rel_codes = rel_codes.reshape(box_sum, -1)                # (B, K·4)
        pred = self.decode_single(rel_codes, concat)
        return pred.reshape(box_sum, -1, 4) if box_sum > 0 else pred  # (B, K, 4)

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(N, K·4) deltas applied to (N, 4) reference boxes -> (N, K·4) xyxy boxes."""
        boxes = boxes.to(rel_codes.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx                                   # (N, K) each
        dy = rel_codes[:, 1::4] / wy
        dw = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        pred = torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h,
                            pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)  # (N, K, 4)
        return pred.flatten(1)                                                 # (N, K·4)
