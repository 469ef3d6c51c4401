"""cnnkit.ops.boxes against references written here from the definitions: per-pair loops in float64
for the overlaps, hand-computed box codes, and a straightforward NumPy greedy NMS that replays
torchvision's CPU kernel (csrc/ops/cpu/nms_kernel.cpp) pair by pair."""
import math

import numpy as np
import pytest
import torch

from cnnkit.ops import boxes as B
from cnnkit.ops.boxes import (BoxCoder, batched_nms, box_area, box_convert, box_iou,
                              clip_boxes_to_image, complete_box_iou, complete_box_iou_loss,
                              distance_box_iou, distance_box_iou_loss, generalized_box_iou,
                              generalized_box_iou_loss, nms, remove_small_boxes)
from cnnkit.utils import CnnkitError


def random_boxes(n, gen, extent=100.0, max_size=30.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * max_size
    return torch.cat([xy, xy + wh], 1).to(dtype)  # (n, 4) xyxy


# --- overlaps: per-pair loops from the definitions ---

def pair_terms(a, b):
    """IoU, enclosing-box area and diagonal², centre distance² of two boxes, as Python floats."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    cw, ch = max(a[2], b[2]) - min(a[0], b[0]), max(a[3], b[3]) - min(a[1], b[1])
    centres = (((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2
               + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2)
    return inter / union, union, cw * ch, cw ** 2 + ch ** 2, centres


def pair_metrics(a, b):
    iou, union, area_c, diag, centres = pair_terms(a, b)
    giou = iou - (area_c - union) / area_c
    diou = iou - centres / diag
    v = 4 / math.pi ** 2 * (math.atan((a[2] - a[0]) / (a[3] - a[1]))
                            - math.atan((b[2] - b[0]) / (b[3] - b[1]))) ** 2
    alpha = v / (1 - iou + v) if v else 0.0  # identical shapes: no aspect term (0/0 otherwise)
    return iou, giou, diou, diou - alpha * v




@pytest.mark.parametrize("seed", range(3))
def test_pairwise_overlaps_match_definitions(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = random_boxes(7, g, dtype=torch.float64), random_boxes(5, g, dtype=torch.float64)
    b[0] = a[0]  # an identical pair
    want = torch.tensor([[pair_metrics(p.tolist(), q.tolist()) for q in b] for p in a],
                        dtype=torch.float64)  # (7, 5, 4)
    got = torch.stack([box_iou(a, b), generalized_box_iou(a, b), distance_box_iou(a, b),
                       complete_box_iou(a, b)], -1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # the eps = 1e-7 terms
    torch.testing.assert_close(box_area(a), (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))


def test_overlaps_by_hand():
    unit, shifted, apart = [0., 0, 2, 2], [1., 0, 3, 2], [4., 0, 6, 2]
    boxes = torch.tensor([unit, shifted, apart])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(2 / 6)  # overlap 2, union 6
    assert iou[0, 2].item() == 0 and torch.all(iou.diagonal() == 1)
    # disjoint: enclosing box [0, 6] x [0, 2] has area 12, union 8 -> GIoU = -(12 - 8)/12
    assert generalized_box_iou(boxes, boxes)[0, 2].item() == pytest.approx(-1 / 3)
    # centres 4 apart, enclosing diagonal² = 36 + 4 -> DIoU = -16/40; same shape -> CIoU = DIoU
    assert distance_box_iou(boxes, boxes)[0, 2].item() == pytest.approx(-0.4)
    assert complete_box_iou(boxes, boxes)[0, 2].item() == pytest.approx(-0.4)
    assert box_iou(torch.tensor([[1, 1, 3, 3]]), torch.tensor([[2, 2, 4, 4]])).item() == \
        pytest.approx(1 / 7)  # integer boxes are upcast, not floor-divided


def test_losses_are_one_minus_the_matched_metric():
    g = torch.Generator().manual_seed(3)
    a, b = random_boxes(9, g, dtype=torch.float64), random_boxes(9, g, dtype=torch.float64)
    for loss, metric in [(generalized_box_iou_loss, generalized_box_iou),
                         (distance_box_iou_loss, distance_box_iou),
                         (complete_box_iou_loss, complete_box_iou)]:
        want = 1 - metric(a, b).diagonal()
        torch.testing.assert_close(loss(a, b), want, atol=1e-6, rtol=0)  # eps placements differ
        torch.testing.assert_close(loss(a, b, reduction="mean"), want.mean(), atol=1e-6, rtol=0)
        torch.testing.assert_close(loss(a, b, reduction="sum"), want.sum(), atol=1e-5, rtol=0)
        assert loss(a[:0], b[:0], reduction="mean").item() == 0
        assert loss(a[0], b[0]).shape == ()                           # single (4,) boxes
    with pytest.raises(CnnkitError, match="reduction"):
        generalized_box_iou_loss(a, b, reduction="avg")


def test_giou_loss_pulls_disjoint_boxes_together():
    pred = torch.tensor([[4.0, 0, 6, 2]], requires_grad=True)
    target = torch.tensor([[0.0, 0, 2, 2]])
    for loss in (generalized_box_iou_loss, distance_box_iou_loss, complete_box_iou_loss):
        (grad,) = torch.autograd.grad(loss(pred, target).sum(), pred)
        # no overlap, yet a gradient: shifting the box right (away) would raise the loss
        assert grad[0, 0] > 0 and grad[0, 0] + grad[0, 2] > 0
        assert loss(target, target).item() == pytest.approx(0, abs=1e-6)


def test_ciou_alpha_carries_no_gradient():
    a = torch.tensor([[0.0, 0, 4, 2]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 0, 3, 3]], dtype=torch.float64)
    (got,) = torch.autograd.grad(complete_box_iou_loss(a, b).sum(), a)
    iou = pair_terms(a.detach()[0].tolist(), b[0].tolist())[0]
    w1, h1 = a[0, 2] - a[0, 0], a[0, 3] - a[0, 1]
    v = 4 / math.pi ** 2 * (math.atan(2 / 3) - torch.atan(w1 / h1)) ** 2  # b is 2 x 3
    alpha = v.detach() / (1 - iou + v.detach() + 1e-7)
    (want,) = torch.autograd.grad(distance_box_iou_loss(a, b).sum() + alpha * v, a)
    torch.testing.assert_close(got, want)


# --- formats and sanitising ---

def test_box_convert_by_hand_and_round_trip():
    xyxy = torch.tensor([[1.0, 2, 5, 8]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[1, 2, 4, 6]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[3, 5, 4, 6]]
    assert box_convert(torch.tensor([[3.0, 5, 4, 6]]), "cxcywh", "xyxy").tolist() == [[1, 2, 5, 8]]
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(20, g, dtype=torch.float64).view(4, 5, 4)  # any leading shape
    for a in B.BOX_FORMATS:
        for b in B.BOX_FORMATS:
            there = box_convert(box_convert(boxes, "xyxy", a), a, b)
            torch.testing.assert_close(box_convert(there, b, "xyxy"), boxes)
    with pytest.raises(CnnkitError, match="unknown box format 'yxyx'"):
        box_convert(xyxy, "yxyx", "xyxy")


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -1, 50, 30], [10, 10, 11, 40], [3, 4, 3.5, 5]])
    assert clip_boxes_to_image(boxes, (20, 40)).tolist() == [[0, 0, 40, 20], [10, 10, 11, 20],
                                                             [3, 4, 3.5, 5]]
    assert clip_boxes_to_image(boxes[None], (20, 40)).shape == (1, 3, 4)
    assert remove_small_boxes(boxes, 1.0).tolist() == [0, 1]  # widths 55, 1, 0.5
    assert remove_small_boxes(boxes, 1.01).tolist() == [0]


# --- box coding ---

def test_box_coder_by_hand():
    proposal = torch.tensor([[10.0, 20, 30, 60]])    # centre (20, 40), size 20 x 40
    target = torch.tensor([[12.0, 16, 52, 56]])      # centre (32, 36), size 40 x 40
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    (deltas,) = coder.encode([target], [proposal])
    want = [10 * 12 / 20, 10 * -4 / 40, 5 * math.log(2), 5 * math.log(1)]
    torch.testing.assert_close(deltas, torch.tensor([want]))
    torch.testing.assert_close(coder.decode(deltas, [proposal]), target[:, None])  # (1, 1, 4)


def test_box_coder_round_trip_classes_and_clip():
    g = torch.Generator().manual_seed(1)
    anchors = [random_boxes(5, g, dtype=torch.float64), random_boxes(3, g, dtype=torch.float64)]
    gts = [random_boxes(5, g, dtype=torch.float64), random_boxes(3, g, dtype=torch.float64)]
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        deltas = coder.encode(gts, anchors)
        assert [d.shape for d in deltas] == [(5, 4), (3, 4)]
        decoded = coder.decode(torch.cat(deltas), anchors)
        torch.testing.assert_close(decoded[:, 0], torch.cat(gts))
    # K classes: (N, K·4) deltas decode to (N, K, 4); zero deltas give the anchor back
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    codes = torch.zeros(8, 3 * 4, dtype=torch.float64)
    torch.testing.assert_close(coder.decode(codes, anchors),
                               torch.cat(anchors)[:, None].expand(8, 3, 4))
    # a wild dw is clamped at log(1000/16): the width grows at most 62.5x
    box = torch.tensor([[0.0, 0, 2, 2]])
    wild = torch.tensor([[0.0, 0, 5 * 100, 0]])
    assert coder.decode_single(wild, box)[0].tolist() == pytest.approx([1 - 62.5, 0, 1 + 62.5, 2])
    assert coder.bbox_xform_clip == pytest.approx(math.log(1000 / 16))
    assert coder.decode(torch.zeros(0, 4), [torch.zeros(0, 4)]).shape == (0, 4)


# --- NMS against a NumPy replay of torchvision's CPU kernel ---

def reference_nms(boxes, scores, iou_threshold):
    """Greedy NMS as nms_kernel.cpp: float32 IoU per pair, compared as a double (`ovr > thr`)."""
    b, s = boxes.numpy(), scores.numpy()
    if len(b) == 0:
        return []
    order = np.argsort(-s, kind="stable")  # equal scores: lower index first
    x1, y1, x2, y2 = b.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        j = order[rank + 1:]  # every lower-ranked box, in the boxes' own dtype throughout
        w = np.maximum(0, np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]))
        h = np.maximum(0, np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            ovr = inter / (areas[i] + areas[j] - inter)
        suppressed[j[ovr.astype(np.float64) > iou_threshold]] = True  # NaN (0/0) never does
    return keep


def grid_boxes(n, gen, extent=12, max_size=5):
    """Integer boxes on a small grid: many exact IoU ties and IoUs of exactly 1/2, 1/3, 0."""
    xy = torch.randint(0, extent, (n, 2), generator=gen)
    wh = torch.randint(0, max_size, (n, 2), generator=gen)  # zero widths included
    return torch.cat([xy, xy + wh], 1).float()


CASES = [  # name, n, box maker, scores rounded to (None: continuous)
    ("sparse", 60, lambda n, g: random_boxes(n, g, extent=300.0), None),
    ("dense", 200, lambda n, g: random_boxes(n, g, extent=60.0), None),
    ("dense_tied_scores", 300, lambda n, g: random_boxes(n, g, extent=80.0), 1),
    ("grid", 150, grid_boxes, 1),
    ("grid_all_tied", 40, grid_boxes, 0),
]


@pytest.mark.parametrize("name, n, make, decimals", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_reference(name, n, make, decimals, iou_threshold):
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        boxes = make(n, g)
        scores = torch.rand(n, generator=g)
        if decimals is not None:
            scores = torch.round(scores, decimals=decimals)
        if seed % 3 == 0:  # duplicates: identical boxes, some with identical scores
            boxes[n // 2:n // 2 + 5] = boxes[0]
            scores[n // 2:n // 2 + 3] = scores[0]
        got = nms(boxes, scores, iou_threshold)
        assert got.dtype == torch.int64
        assert got.tolist() == reference_nms(boxes, scores, iou_threshold), f"seed {seed}"


def test_nms_large_crosses_many_blocks():
    g = torch.Generator().manual_seed(7)
    boxes, scores = random_boxes(1000, g, extent=400.0), torch.rand(1000, generator=g)
    assert nms(boxes, scores, 0.5).tolist() == reference_nms(boxes, scores, 0.5)
    double = nms(boxes.double(), scores.double(), 0.5)
    assert double.tolist() == reference_nms(boxes.double(), scores.double(), 0.5)


def test_nms_edge_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    same = torch.tensor([[0.0, 0, 2, 2]] * 4)
    assert nms(same, torch.tensor([0.5, 0.9, 0.9, 0.1]), 0.5).tolist() == [1]  # tie: lower index
    assert nms(same, torch.tensor([0.5, 0.9, 0.9, 0.1]), 1.0).tolist() == [1, 2, 0, 3]  # IoU 1 !> 1
    # zero-area boxes: IoU 0/0 = NaN, never > threshold, so nothing suppresses them
    dots = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 3, 3]])
    assert nms(dots, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [0, 1, 2]
    # kept indices come by decreasing score, not by index
    apart = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]])
    assert nms(apart, torch.tensor([0.1, 0.9, 0.5]), 0.5).tolist() == [1, 2, 0]
    with pytest.raises(CnnkitError, match=r"\(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(CnnkitError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_nms_compares_the_threshold_as_a_double():
    # IoU 3/10 is float32(0.3) = 0.30000001 > 0.3: torchvision's kernel suppresses (float vs
    # double); a float32 comparison against the rounded threshold would not
    boxes = torch.tensor([[0.0, 0, 6, 1], [3, 0, 10, 1]])  # inter 3, union 6 + 7 - 3 = 10
    assert box_iou(boxes[:1], boxes[1:]).item() > 0.3
    assert nms(boxes, torch.tensor([1.0, 0.9]), 0.3).tolist() == [0]
    assert reference_nms(boxes, torch.tensor([1.0, 0.9]), 0.3) == [0]
    assert nms(boxes, torch.tensor([1.0, 0.9]), 0.30000002).tolist() == [0, 1]


def reference_batched_nms(boxes, scores, idxs, iou_threshold):
    keep = []
    for cls in idxs.unique().tolist():
        members = torch.where(idxs == cls)[0]
        keep += [members[k].item() for k in reference_nms(boxes[members], scores[members],
                                                          iou_threshold)]
    return sorted(keep, key=lambda i: (-scores[i].item(), i))


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_is_per_class_nms(seed):
    g = torch.Generator().manual_seed(seed)
    n = 250
    boxes = random_boxes(n, g, extent=60.0) if seed % 2 else grid_boxes(n, g)
    scores = torch.round(torch.rand(n, generator=g), decimals=2)
    idxs = torch.randint(0, 5, (n,), generator=g)
    got = batched_nms(boxes, scores, idxs, 0.5)
    assert got.tolist() == reference_batched_nms(boxes, scores, idxs, 0.5)
    if seed % 2 == 0:
        # integer coordinates: torchvision's offset trick is exact there and must agree
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        assert got.tolist() == nms(boxes + offsets[:, None], scores, 0.5).tolist()
    assert batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0,)
    with pytest.raises(CnnkitError, match="idxs"):
        batched_nms(boxes, scores, idxs[:-1], 0.5)
