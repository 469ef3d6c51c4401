"""RoI heads: losses by hand, mask pasting against a plain reference and round trips on real
mnist-det masks, keypoint decoding."""
import math

import pytest
import torch
import torch.nn.functional as F

from cnnkit.data import load_dataset
from cnnkit.models import create_model
from cnnkit.models.detection.mask_keypoint_heads import (heatmaps_to_keypoints,
                                                         keypointrcnn_loss, keypoints_to_heatmap,
                                                         maskrcnn_loss, paste_masks_in_image,
                                                         project_masks_on_boxes)
from cnnkit.models.detection.roi_heads import (FastRCNNPredictor, RoIHeads, TwoMLPHead,
                                               fastrcnn_loss)
from cnnkit.ops.poolers import MultiScaleRoIAlign


def _reference_paste(mask, box, im_h, im_w):
    """Detectron's recipe written plainly: pad by one pixel, grow the box by (M + 2) / M, resize
    to the integer box (corners inclusive), then place it on a canvas large enough to hold any
    box and crop the image out of it."""
    m = mask.shape[-1]
    padded = F.pad(mask, (1, 1, 1, 1))
    scale = (m + 2) / m
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
    x0, y0, x1, y1 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))  # toward zero
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(padded[None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0]
    margin = 200
    canvas = torch.zeros(im_h + 2 * margin, im_w + 2 * margin)
    canvas[margin + y0:margin + y0 + h, margin + x0:margin + x0 + w] = resized
    return canvas[margin:margin + im_h, margin:margin + im_w]


def test_paste_masks_matches_reference_including_boxes_off_the_image():
    torch.manual_seed(0)
    masks = torch.rand(5, 1, 28, 28)
    boxes = torch.tensor([[10.3, 5.7, 40.2, 30.9], [0.0, 0.0, 63.9, 47.5],
                          [-10.0, 20.0, 15.0, 60.0], [50.0, 40.0, 90.0, 70.0],
                          [30.0, 30.0, 30.5, 31.0]])  # the last three leave the image or are tiny
    pasted = paste_masks_in_image(masks, boxes, (48, 64))
    assert pasted.shape == (5, 1, 48, 64)
    for mk, box, out in zip(masks, boxes.tolist(), pasted):
        torch.testing.assert_close(out[0], _reference_paste(mk[0], box, 48, 64))
    assert paste_masks_in_image(masks[:0], boxes[:0], (48, 64)).shape == (0, 1, 48, 64)


def test_exact_paste_of_a_box_on_the_pixel_grid_is_the_mask_itself():
    torch.manual_seed(0)
    masks = torch.rand(2, 1, 8, 8)
    boxes = torch.tensor([[3.0, 5.0, 11.0, 13.0], [-4.0, 0.0, 4.0, 8.0]])  # the second leaves it
    pasted = paste_masks_in_image(masks, boxes, (20, 16), exact=True)[:, 0]
    torch.testing.assert_close(pasted[0, 5:13, 3:11], masks[0, 0])
    torch.testing.assert_close(pasted[1, 0:8, 0:4], masks[1, 0, :, 4:])
    inside = torch.zeros(20, 16, dtype=torch.bool)
    inside[5:13, 3:11] = True
    assert pasted[0][~inside].abs().max() < 1e-6  # zero outside the box


@pytest.fixture(scope="module")
def stroke_masks():
    """The true masks and boxes of 40 real mnist-det test canvases (digit strokes 2–4 px)."""
    from tests.conftest import DATASETS  # noqa: PLC0415
    ds = load_dataset("mnist-det", "test", data_dir=DATASETS, download=False)
    return [(t["masks"].float(), t["boxes"].float()) for t in ds.targets[:40]]


@pytest.mark.parametrize("exact, lowest, highest", [(False, 0.6, 0.8), (True, 0.98, 1.0)])
def test_mask_targets_pasted_back_keep_the_true_mask(stroke_masks, exact, lowest, highest):
    """Project each true mask on its own box at 28×28 (the training target), paste it back,
    threshold at 0.5 (inference): torchvision's half-pixel offsets lose ~30% of a stroke's IoU,
    the exact pair (Detectron2's) keeps it — an upper bound on any mask head's IoU."""
    ious = []
    for masks, boxes in stroke_masks:
        targets = project_masks_on_boxes(masks, boxes, torch.arange(len(boxes)), 28, exact)
        back = paste_masks_in_image(targets[:, None], boxes, masks.shape[-2:], exact=exact)
        found, truth = back[:, 0] >= 0.5, masks > 0
        ious += ((found & truth).sum((1, 2)) / (found | truth).sum((1, 2))).tolist()
    assert lowest < sum(ious) / len(ious) <= highest


def test_cpu_mask_rcnn_pastes_exactly_and_torchvision_s_layout_keeps_its_way():
    small = create_model("maskrcnn_resnet18_fpn", num_classes=3)
    reference = create_model("maskrcnn_resnet50_fpn", num_classes=3)
    assert small.roi_heads.exact_masks and small.transform.exact_masks
    assert not reference.roi_heads.exact_masks and not reference.transform.exact_masks


def test_heatmaps_to_keypoints_finds_a_known_peak():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 2, 5] = 3.0   # keypoint 0 at row 2, column 5
    maps[0, 1, 6, 1] = 2.0
    # an RoI of exactly the heatmap's size: no resampling, the cell centre is the keypoint
    kps, scores = heatmaps_to_keypoints(maps, torch.tensor([[10.0, 20.0, 18.0, 28.0]]))
    assert kps.shape == (1, 2, 3) and scores.shape == (1, 2)
    torch.testing.assert_close(kps[0], torch.tensor([[15.5, 22.5, 1.0], [11.5, 26.5, 1.0]]))
    torch.testing.assert_close(scores[0], torch.tensor([3.0, 2.0]))


def test_heatmaps_to_keypoints_scales_a_smooth_peak_to_a_larger_roi():
    ys, xs = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    peak = torch.exp(-((xs - 9) ** 2 + (ys - 4) ** 2) / 4.0)  # centred on cell (4, 9)
    roi = torch.tensor([[100.0, 50.0, 128.0, 78.0]])            # 28 × 28: twice the map
    kps, scores = heatmaps_to_keypoints(peak[None, None], roi)
    # cell (4, 9) spans x 118..120, y 58..60 in the RoI; the peak lies on its centre
    assert abs(kps[0, 0, 0] - 119.0) <= 1.0 and abs(kps[0, 0, 1] - 59.0) <= 1.0
    assert 0.9 < scores[0, 0] < 1.1


def test_keypoints_to_heatmap_by_hand():
    rois = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    kps = torch.tensor([[[1.0, 2.0, 2.0], [7.9, 0.5, 1.0], [8.0, 8.0, 2.0], [3.0, 3.0, 0.0],
                         [9.0, 1.0, 2.0]]])
    # 4×4 cells of 2 px: (1, 2) -> cell (row 1, col 0) = 4; far corner -> last cell 15;
    # invisible or outside -> invalid
    heatmaps, valid = keypoints_to_heatmap(kps, rois, 4)
    assert valid.tolist() == [[1, 1, 1, 0, 0]]
    assert heatmaps.tolist() == [[4, 3, 15, 0, 0]]


def test_mask_and_keypoint_losses_without_positives_are_zero_with_gradient():
    logits = torch.randn(0, 3, 28, 28, requires_grad=True)
    loss = maskrcnn_loss(logits, [torch.zeros(0, 4)], [torch.zeros(0, 32, 32, dtype=torch.uint8)],
                         [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)])
    assert loss.item() == 0 and loss.requires_grad
    kp_logits = torch.randn(2, 17, 56, 56, requires_grad=True)
    invisible = torch.zeros(1, 17, 3)  # visibility 0 everywhere: nothing valid
    loss = keypointrcnn_loss(kp_logits, [torch.tensor([[0., 0., 10., 10.]] * 2)], [invisible],
                             [torch.zeros(2, dtype=torch.int64)])
    loss.backward()
    assert loss.item() == 0 and torch.equal(kp_logits.grad, torch.zeros_like(kp_logits))


def test_mask_loss_uses_the_ground_truth_class_channel():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    gt_masks = torch.ones(2, 16, 16, dtype=torch.uint8)  # full masks: every target pixel is 1
    proposals = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0]])
    loss = maskrcnn_loss(logits, [proposals], [gt_masks], [torch.tensor([2, 1])],
                         [torch.tensor([0, 1])])
    picked = torch.stack([logits[0, 2], logits[1, 1]])
    expected = F.binary_cross_entropy_with_logits(picked, torch.ones_like(picked))
    torch.testing.assert_close(loss, expected)


def test_fastrcnn_loss_by_hand():
    class_logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    box_regression = torch.arange(24.0).reshape(2, 12) / 10
    labels, targets = [torch.tensor([1, 0])], [torch.full((2, 4), 0.4)]
    cls, box = fastrcnn_loss(class_logits, box_regression, labels, targets)
    torch.testing.assert_close(cls, F.cross_entropy(class_logits, labels[0]))
    # only RoI 0 (class 1) regresses: its class-1 deltas 0.4..0.7 against 0.4, β = 1/9, / 2 RoIs
    diffs = torch.tensor([0.0, 0.1, 0.2, 0.3])
    expected = torch.where(diffs < 1 / 9, 0.5 * diffs ** 2 * 9, diffs - 0.5 / 9).sum() / 2
    torch.testing.assert_close(box, expected)


def _heads(**kw):
    pool = MultiScaleRoIAlign(["0"], 7, sampling_ratio=2)
    params = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=16,
                  positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05,
                  nms_thresh=0.5, detections_per_img=100)
    params.update(kw)
    return RoIHeads(pool, TwoMLPHead(4 * 49, 32), FastRCNNPredictor(32, 3), **params)


def test_postprocess_detections_drops_background_low_scores_and_overlaps():
    heads = _heads()
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 11.0, 31.0, 31.0],
                               [40.0, 40.0, 60.0, 60.0]])]
    # RoI 0: class 1 (p ≈ .84); RoI 1: the same object, slightly lower; RoI 2: background
    class_logits = torch.tensor([[0.0, 2.0, -9.0], [0.0, 1.8, -9.0], [5.0, -9.0, -9.0]])
    boxes, scores, labels = heads.postprocess_detections(class_logits, torch.zeros(3, 12),
                                                         proposals, [(64, 64)])
    assert labels[0].tolist() == [1] and boxes[0].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    torch.testing.assert_close(scores[0], torch.softmax(class_logits[0], 0)[1:2])


def test_training_samples_include_ground_truth_and_background_only_images():
    torch.manual_seed(0)
    heads = _heads().train()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])] * 2
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 41.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    props, matched, labels, reg = heads.select_training_samples(proposals, targets)
    assert sorted(labels[0].tolist()) == [0, 2, 2]   # the ground truth itself joins as positive
    assert labels[1].tolist() == [0, 0]
    assert reg[0].shape == (3, 4) and torch.isfinite(reg[0]).all()
    features = {"0": torch.randn(2, 4, 16, 16)}
    _, losses = heads(features, proposals, [(64, 64)] * 2, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(math.isfinite(v.item()) for v in losses.values())
