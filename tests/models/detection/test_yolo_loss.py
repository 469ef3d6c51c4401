"""YOLOv8's assigner and losses on hand-made cases: a box on a grid point, the top-k limit, no
objects, several objects sharing points, DFL by hand, the whole loss on exact predictions."""
import math

import torch

from cnnkit.models.detection.yolo_loss import (TaskAlignedAssigner, YOLOv8Loss, bbox2dist,
                                               dfl_expectation, dist2bbox,
                                               distribution_focal_loss, make_anchors)

STRIDE, GRID = 8, 8  # one 8 × 8 level of a 64-px image: points at 4, 12, ..., 60 px


def points_px():
    points, strides = make_anchors([(GRID, GRID)], [STRIDE])
    return points * strides  # (64, 2)


def cells(rows, cols):
    return sorted(r * GRID + c for r in rows for c in cols)


def assign(gt_boxes, gt_labels, pred_boxes=None, num_classes=2, topk=10, mask=None):
    """Batch of one image; predictions: every point's box = `pred_boxes` (default: the first
    object, so the IoU is 1), every class score 0.5."""
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float).view(1, -1, 4)  # (1, M, 4)
    gt_labels = torch.tensor(gt_labels, dtype=torch.long)[None]        # (1, M)
    if pred_boxes is None:  # the first object, or any box when there is none
        first = gt_boxes[0, 0] if gt_boxes.shape[1] else torch.tensor([16.0, 16, 40, 40])
        pred_boxes = first.expand(1, GRID * GRID, 4)
    scores = torch.full((1, GRID * GRID, num_classes), 0.5)
    mask = torch.ones_like(gt_labels, dtype=torch.bool) if mask is None else mask
    return TaskAlignedAssigner(num_classes, topk=topk)(scores, pred_boxes, points_px(),
                                                       gt_labels, gt_boxes, mask)


def test_anchor_points_are_cell_centres():
    points, strides = make_anchors([(2, 3), (1, 2)], [8, 16])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5],
                               [2.5, 1.5], [0.5, 0.5], [1.5, 0.5]]
    assert strides.flatten().tolist() == [8.0] * 6 + [16.0] * 2


def test_box_coding_round_trip_and_clamp():
    points = torch.tensor([[4.5, 3.5]])
    box = torch.tensor([[1.0, 2.0, 9.0, 5.0]])
    ltrb = bbox2dist(points, box, 15)
    assert ltrb.tolist() == [[3.5, 1.5, 4.5, 1.5]]
    assert torch.equal(dist2bbox(ltrb, points), box)
    far = bbox2dist(points, torch.tensor([[-30.0, 0.0, 40.0, 4.0]]), 15)
    torch.testing.assert_close(far, torch.tensor([[14.99, 3.5, 14.99, 0.5]]))  # reg_max-1-0.01


def test_box_centred_on_a_grid_point():
    # centred on the point (28, 28) px = cell (3, 3). 16 px wide: the neighbours at 20 and 36
    # lie on its edges, not strictly inside, so only the centre point qualifies
    result = assign([[20, 20, 36, 36]], [1])
    assert torch.where(result.foreground[0])[0].tolist() == [3 * GRID + 3]
    # 24 px wide: the 3 × 3 points 20, 28, 36 are inside, fewer than top-k = 10: all taken
    result = assign([[16, 16, 40, 40]], [1])
    fg = torch.where(result.foreground[0])[0]
    assert fg.tolist() == cells(range(2, 5), range(2, 5))
    assert result.labels[0, fg].tolist() == [1] * 9 and result.gt_index[0, fg].tolist() == [0] * 9
    assert (result.boxes[0, fg] == torch.tensor([16.0, 16, 40, 40])).all()
    # equal alignment everywhere and IoU 1: the soft target is 1 on class 1, 0 elsewhere
    expected = torch.zeros(GRID * GRID, 2)
    expected[fg, 1] = 1.0
    torch.testing.assert_close(result.scores[0], expected)


def test_topk_keeps_the_best_aligned_points():
    # a box covering all 64 points; point p predicts the box shrunk by d_p on every side, so
    # the IoU falls with d_p (same centre and aspect: CIoU = IoU): the 10 smallest d_p win
    gen = torch.Generator().manual_seed(0)
    shrink = torch.randperm(64, generator=gen).float() * 0.25
    pred = torch.stack([shrink, shrink, 64 - shrink, 64 - shrink], -1)[None]  # (1, 64, 4)
    result = assign([[0, 0, 64, 64]], [0], pred_boxes=pred)
    assert sorted(torch.where(result.foreground[0])[0].tolist()) == \
        sorted(shrink.argsort()[:10].tolist())
    # the soft targets: alignment / best alignment · best IoU; the best point gets IoU 1
    iou = ((64 - 2 * shrink) / 64) ** 2
    align = 0.5 ** 0.5 * iou ** 6
    fg = result.foreground[0]
    torch.testing.assert_close(result.scores[0, fg, 0], align[fg] / align[fg].max())


def test_no_objects_all_background():
    for result in (assign(torch.zeros(0, 4).tolist(), []),  # no box at all (M = 0)
                   assign([[16, 16, 40, 40]], [1], mask=torch.zeros(1, 1, dtype=torch.bool))):
        assert not result.foreground.any()
        assert (result.scores == 0).all() and (result.boxes == 0).all()


def test_several_objects_sharing_points():
    # A covers points 4..36 (5 × 5), B 20..60 (6 × 6); they share the 3 × 3 points 20..36.
    # Points predict A inside A only, B elsewhere (so the shared ones overlap B best)
    a, b = [0.0, 0, 40, 40], [16.0, 16, 64, 64]
    xy = points_px()
    only_a = (xy < 40).all(1) & ~(xy > 16).all(1)
    pred = torch.where(only_a[:, None], torch.tensor(a), torch.tensor(b))[None]
    result = assign([a, b], [0, 1], pred_boxes=pred, topk=64)  # top-k large: no tie-breaking
    in_a, in_b = cells(range(5), range(5)), cells(range(2, 8), range(2, 8))
    shared = set(in_a) & set(in_b)
    assert len(shared) == 9
    assert sorted(torch.where(result.foreground[0])[0].tolist()) == sorted(set(in_a) | set(in_b))
    for p in set(in_a) | set(in_b):
        expected = 1 if p in in_b else 0  # the shared points go to B, overlapped exactly
        assert int(result.gt_index[0, p]) == expected and int(result.labels[0, p]) == expected


def test_many_objects_invariants():
    gen = torch.Generator().manual_seed(1)
    b, m, k = 3, 12, 5
    xy = torch.rand(b, m, 2, generator=gen) * 48
    wh = 4 + torch.rand(b, m, 2, generator=gen) * 40
    gt_boxes = torch.cat([xy, (xy + wh).clamp(max=64)], -1)
    gt_labels = torch.randint(0, k, (b, m), generator=gen)
    gt_mask = torch.ones(b, m, dtype=torch.bool)
    gt_mask[1, 7:] = False  # image 1 has 7 objects, padded to 12
    pred = gt_boxes[:, torch.randint(0, m, (64,), generator=gen)]      # (B, 64, 4)
    scores = torch.rand(b, 64, k, generator=gen)
    result = TaskAlignedAssigner(k)(scores, pred, points_px(), gt_labels, gt_boxes, gt_mask)
    assert result.foreground.any()
    for i in range(b):
        fg = torch.where(result.foreground[i])[0]
        idx = result.gt_index[i, fg]
        assert gt_mask[i, idx].all(), "a padded object got points"
        box = gt_boxes[i, idx]
        inside = (points_px()[fg] > box[:, :2]).all(1) & (points_px()[fg] < box[:, 2:]).all(1)
        assert inside.all(), "a point was assigned an object it is not inside"
        assert (result.labels[i, fg] == gt_labels[i, idx]).all()
        assert (torch.bincount(idx, minlength=m) <= 10).all(), "more than top-k per object"
        # soft targets only in the object's class column (zero when its alignment is 0)
        other = 1 - torch.nn.functional.one_hot(gt_labels[i, idx], k)
        assert (result.scores[i, fg] * other == 0).all()
        assert (result.scores[i][~result.foreground[i]] == 0).all()
    assert (result.scores >= 0).all() and (result.scores <= 1 + 1e-6).all()


# --- DFL ---

def test_dfl_by_hand():
    # bin 2 has logit ln 3, the other 15 logit 0: softmax 3/18 there, 1/18 elsewhere
    logits = torch.zeros(2, 16)
    logits[:, 2] = math.log(3)
    loss = distribution_focal_loss(logits, torch.tensor([2.3, 20.0]))
    # y = 2.3 lies between bins 2 and 3 with weights 0.7, 0.3
    expected0 = -(0.7 * math.log(3 / 18) + 0.3 * math.log(1 / 18))
    # y = 20 is clamped to 14.99: bins 14 and 15, weights 0.01 and 0.99, both 1/18
    expected1 = -math.log(1 / 18)
    torch.testing.assert_close(loss, torch.tensor([expected0, expected1]))


def test_dfl_expectation():
    uniform = torch.zeros(1, 64)
    assert dfl_expectation(uniform).tolist() == [[7.5] * 4]  # mean of 0..15
    peaked = torch.full((1, 64), -1e4)
    peaked[0, [3, 16 + 0, 32 + 15, 48 + 7]] = 0.0
    assert dfl_expectation(peaked).tolist() == [[3.0, 0.0, 15.0, 7.0]]


# --- the whole loss ---

def exact_logits(ltrb: torch.Tensor) -> torch.Tensor:
    """(A, 4) distances of the form n + 0.5 → bin logits whose expectation is exactly them:
    half the mass on bin n, half on n + 1."""
    logits = torch.full((ltrb.shape[0], 4, 16), -1e4)
    low = ltrb.floor().long()
    logits.scatter_(-1, low[..., None], 0.0)
    logits.scatter_(-1, (low + 1)[..., None], 0.0)
    return logits.flatten(1)  # (A, 64)


def test_loss_on_exact_predictions():
    # box [1, 1, 6, 6] in grid units = [8, 8, 48, 48] px; every point predicts its exact
    # distances to it (n + 0.5: points at cell centres, edges on integers), class logit 0
    points, strides = make_anchors([(GRID, GRID)], [STRIDE])
    box = torch.tensor([1.0, 1, 6, 6])
    ltrb = torch.cat([points - box[:2], box[2:] - points], -1).abs()  # exact inside the box
    pred_dist = exact_logits(ltrb)[None]
    pred_logits = torch.zeros(1, 64, 1)
    losses = YOLOv8Loss(1)(pred_dist, pred_logits, points, strides, torch.tensor([[0]]),
                           (box * STRIDE)[None, None], torch.ones(1, 1, dtype=torch.bool))
    # 25 points inside, all aligned equally: 10 positives with target score 1, sum 10
    assert losses["loss_box"].abs() < 1e-5                      # CIoU 1 everywhere
    # the DFL of a 50/50 prediction against a target halfway between two bins: ln 2
    torch.testing.assert_close(losses["loss_dfl"], torch.tensor(1.5 * math.log(2)))
    # BCE at logit 0 is ln 2 whatever the target: 64 points × 1 class / score sum 10
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(0.5 * 64 * math.log(2) / 10))


def test_loss_without_objects():
    points, strides = make_anchors([(GRID, GRID)], [STRIDE])
    pred_dist = torch.randn(2, 64, 64, requires_grad=True)
    pred_logits = torch.zeros(2, 64, 3, requires_grad=True)
    for m in (0, 2):  # no column at all, or only padding
        losses = YOLOv8Loss(3)(pred_dist, pred_logits, points, strides,
                               torch.zeros(2, m, dtype=torch.long), torch.zeros(2, m, 4),
                               torch.zeros(2, m, dtype=torch.bool))
        assert losses["loss_box"] == 0 and losses["loss_dfl"] == 0
        # every point a negative, the score sum clamped to 1
        torch.testing.assert_close(losses["loss_cls"], torch.tensor(0.5 * 2 * 64 * 3 * math.log(2)))
        sum(losses.values()).backward()
        assert pred_dist.grad is not None and pred_logits.grad.abs().sum() > 0
