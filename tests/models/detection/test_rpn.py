"""Region proposal network: prediction order against the anchors, targets, proposals, losses."""
import math

import torch

from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from cnnkit.models.detection.transform import ImageList


def test_flattened_predictions_follow_the_anchor_order():
    # level maps whose value encodes (level, row, column, anchor): the flattened order must be
    # image, level, position (row-major), anchor — the AnchorGenerator's order
    n, a = 2, 3
    cls, reg = [], []
    for level, (h, w) in enumerate([(2, 3), (1, 2)]):
        code = (level * 1000 + torch.arange(h)[:, None, None] * 100
                + torch.arange(w)[None, :, None] * 10 + torch.arange(a)[None, None, :])  # (H, W, A)
        cls.append(code.permute(2, 0, 1)[None].expand(n, a, h, w).float())          # (N, A, H, W)
        reg.append(code.permute(2, 0, 1)[None, :, None].expand(n, a, 4, h, w)
                   .reshape(n, a * 4, h, w).float())                                 # (N, 4A, H, W)
    flat_cls, flat_reg = concat_box_prediction_layers(cls, reg)
    expected = [lvl * 1000 + y * 100 + x * 10 + k
                for lvl, (h, w) in enumerate([(2, 3), (1, 2)])
                for y in range(h) for x in range(w) for k in range(a)]
    assert flat_cls.shape == (n * 24, 1) and flat_reg.shape == (n * 24, 4)
    assert flat_cls[:24, 0].tolist() == expected and flat_cls[24:, 0].tolist() == expected
    assert (flat_reg == flat_cls).all()  # all four deltas of an anchor stay together


def _rpn(**kw):
    anchors = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    params = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=32,
                  positive_fraction=0.5, pre_nms_top_n={"training": 50, "testing": 40},
                  post_nms_top_n={"training": 20, "testing": 10}, nms_thresh=0.7)
    params.update(kw)
    return RegionProposalNetwork(anchors, RPNHead(8, 3), **params)


def _inputs(n=2):
    images = ImageList(torch.zeros(n, 3, 64, 64), [(64, 60)] * n)
    features = {"0": torch.randn(n, 8, 16, 16), "1": torch.randn(n, 8, 8, 8)}
    return images, features


def test_anchor_targets_and_background_only_images():
    rpn = _rpn()
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 12.0, 10.0],
                             [30.0, 30.0, 40.0, 40.0], [0.0, 0.0, 20.0, 20.0]])]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [31.0, 31.0, 50.0, 50.0]])}]
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    # IoU 1, 0.83 -> positive; gt 1's best anchor (IoU 0.23) kept anyway; IoU 0.25 -> background
    assert labels[0].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert matched[0][2].tolist() == [31.0, 31.0, 50.0, 50.0]
    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0.0] * 4 and matched[0].shape == (4, 4)


def test_eval_proposals_are_clipped_and_capped():
    torch.manual_seed(0)
    rpn = _rpn().eval()
    images, features = _inputs()
    boxes, losses = rpn(images, features)
    assert losses == {} and len(boxes) == 2
    for b in boxes:
        assert 0 < b.shape[0] <= 10 and b.shape[1] == 4
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 60).all()  # the true width, not 64
        assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= 64).all()
        assert (b[:, 2:] > b[:, :2]).all()


def test_training_losses_with_and_without_objects():
    torch.manual_seed(0)
    rpn = _rpn().train()
    images, features = _inputs()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 26.0]])}, {"boxes": torch.zeros(0, 4)}]
    boxes, losses = rpn(images, features, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert all(b.shape[0] <= 20 for b in boxes)
    sum(losses.values()).backward()
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_rpn_box_reg"].item() > 0  # the first image has positives
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rpn.parameters())
    # only background: the objectness loss alone, the box loss an exact zero
    rpn.zero_grad()
    _, losses = rpn(images, features, [{"boxes": torch.zeros(0, 4)}] * 2)
    assert losses["loss_rpn_box_reg"].item() == 0
    assert math.isfinite(losses["loss_objectness"].item())


def test_rpn_head_shapes_and_depth():
    head = RPNHead(8, 3, conv_depth=2)
    assert sorted(k for k in head.state_dict() if k.startswith("conv")) == [
        "conv.0.0.bias", "conv.0.0.weight", "conv.1.0.bias", "conv.1.0.weight"]
    logits, deltas = head([torch.randn(2, 8, 5, 7), torch.randn(2, 8, 3, 4)])
    assert [tuple(t.shape) for t in logits] == [(2, 3, 5, 7), (2, 3, 3, 4)]
    assert [tuple(t.shape) for t in deltas] == [(2, 12, 5, 7), (2, 12, 3, 4)]
