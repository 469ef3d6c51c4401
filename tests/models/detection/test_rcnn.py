"""Faster / Mask / Keypoint R-CNN end to end, on the CPU variants and tiny synthetic images.

The reference layouts and parameter counts of the torchvision-sized models are checked by
tests/models/test_zoo.py; here: the training and inference contract, gradients, images without
objects, that a few steps fit two images, checkpoints, the backbone's classification names.
"""
import io
import math

import pytest
import torch
from torch import nn

from cnnkit.models import create_model
from cnnkit.models.detection.backbones import FrozenBatchNorm2d
from cnnkit.models.detection.mask_keypoint_heads import maskness
from cnnkit.utils import CnnkitError

SMALL = ["fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn", "keypointrcnn_resnet18_fpn"]
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
EXTRA = {"fasterrcnn_resnet18_fpn": set(), "maskrcnn_resnet18_fpn": {"loss_mask"},
         "keypointrcnn_resnet18_fpn": {"loss_keypoint"}}
NUM_KP = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _build(name, **kw):
    torch.manual_seed(0)
    if name.startswith("keypoint"):
        kw.setdefault("num_keypoints", NUM_KP)
    return create_model(name, num_classes=3, **kw)


def _data(size=96):
    """Two dark images with two bright rectangles each (classes 1, 2), their masks and three
    keypoints per object (two corners and the centre)."""
    g = torch.Generator().manual_seed(1)
    all_boxes = [torch.tensor([[8.0, 12.0, 40.0, 44.0], [50.0, 40.0, 88.0, 80.0]]),
                 torch.tensor([[20.0, 50.0, 60.0, 90.0], [56.0, 8.0, 90.0, 36.0]])]
    images, targets = [], []
    for boxes in all_boxes:
        image = torch.rand(3, size, size, generator=g) * 0.2
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            image[:, y0:y1, x0:x1] = 0.9 if j == 0 else 0.6
            masks[j, y0:y1, x0:x1] = 1
        kps = torch.stack([boxes[:, :2], boxes[:, 2:] - 1, (boxes[:, :2] + boxes[:, 2:]) / 2], 1)
        kps = torch.cat([kps, torch.full((2, NUM_KP, 1), 2.0)], 2)     # (2, 3, 3) x, y, visible
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks,
                        "keypoints": kps})
    return images, targets


def _empty_target(size=96):
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, size, size, dtype=torch.uint8),
            "keypoints": torch.zeros(0, NUM_KP, 3)}


@pytest.mark.parametrize("name", SMALL)
def test_training_forward_gives_finite_losses_and_gradients_everywhere(name):
    model = _build(name).train()
    assert model.detector is True and model.num_classes == 3
    images, targets = _data()
    losses = model(images, targets)
    assert set(losses) == LOSSES | EXTRA[name]
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # weights=None: nothing frozen
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    # every head received a non-zero signal (mask / keypoint heads included)
    for head in ("rpn.head", "roi_heads.box_predictor", "roi_heads.mask_predictor",
                 "roi_heads.keypoint_predictor", "backbone.body.layer1"):
        grads = [p.grad.abs().sum() for n, p in trainable if n.startswith(head)]
        assert not grads or sum(grads) > 0, head


def test_mask_rois_per_image_caps_what_the_mask_head_trains_on():
    images, targets = _data()
    seen = {}
    for cap in (None, 3):
        model = _build("maskrcnn_resnet18_fpn", mask_rois_per_image=cap).train()
        model.roi_heads.mask_head.register_forward_hook(
            lambda _m, args, _out, cap=cap: seen.setdefault(cap, []).append(len(args[0])))
        losses = model(images, targets)
        assert math.isfinite(losses["loss_mask"].item())
        model.eval()(images)  # inference: every detection gets a mask, whatever the cap
    # The ground-truth boxes join the proposals, so each image has ≥ 2 positives; uncapped, the
    # head sees them all (more than the cap), capped at most 3 per image.
    assert seen[None][0] > 2 * 3 and seen[3][0] == 2 * 3
    assert len(seen[None]) == len(seen[3]) == 2
    with pytest.raises(ValueError, match="mask_rois_per_image must be ≥ 1"):
        _build("maskrcnn_resnet18_fpn", mask_rois_per_image=0)


def test_maskness_is_the_mean_foreground_probability():
    probs = torch.zeros(3, 1, 4, 4)
    probs[0, 0, :2] = 0.8          # 8 pixels at 0.8, the rest 0
    probs[1, 0, 0, 0], probs[1, 0, 1, 1] = 1.0, 0.6
    probs[2] = 0.4                 # nothing above ½: an empty mask
    assert maskness(probs).tolist() == pytest.approx([0.8, 0.8, 0.0])


def test_mask_scoring_ranks_masks_and_leaves_boxes_alone():
    """The CPU variant adds mask_scores = scores × maskness; torchvision's layout does not."""
    images = [torch.rand(3, 96, 80)]
    model = _build("maskrcnn_resnet18_fpn", box_score_thresh=0.0).eval()
    with torch.no_grad():
        pred = model(images)[0]
        plain = _build("maskrcnn_resnet18_fpn", box_score_thresh=0.0,
                       mask_scoring="class").eval()(images)[0]
    assert "mask_scores" not in plain and torch.equal(plain["scores"], pred["scores"])
    assert pred["mask_scores"].shape == pred["scores"].shape
    assert (pred["mask_scores"] <= pred["scores"]).all()
    assert create_model("maskrcnn_resnet50_fpn").roi_heads.mask_scoring == "class"
    with pytest.raises(ValueError, match="mask_scoring must be 'class' or 'maskness'"):
        _build("maskrcnn_resnet18_fpn", mask_scoring="iou")


@pytest.mark.parametrize("name", SMALL)
def test_eval_output_contract(name):
    model = _build(name, box_score_thresh=0.0).eval()
    images = [torch.rand(3, 96, 80), torch.rand(3, 50, 70)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    task = {"fasterrcnn": "detection", "maskrcnn": "instance-segmentation",
            "keypointrcnn": "keypoints"}[name.split("_")[0]]
    assert model.task == task
    for pred, image in zip(out, images):
        n = pred["boxes"].shape[0]
        assert 0 < n <= 100
        assert pred["labels"].dtype == torch.int64 and pred["labels"].shape == (n,)
        assert ((pred["labels"] >= 1) & (pred["labels"] < 3)).all()
        assert pred["scores"].shape == (n,) and (pred["scores"][:-1] >= pred["scores"][1:]).all()
        h, w = image.shape[-2:]
        boxes = pred["boxes"]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w + 1e-3).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h + 1e-3).all()
        if task == "instance-segmentation":
            assert pred["masks"].shape == (n, 1, h, w)
            assert pred["masks"].min() >= 0 and pred["masks"].max() <= 1
        if task == "keypoints":
            assert model.num_keypoints == NUM_KP
            assert pred["keypoints"].shape == (n, NUM_KP, 3)
            assert pred["keypoints_scores"].shape == (n, NUM_KP)


@pytest.mark.parametrize("name", SMALL)
def test_images_without_objects_train_without_nan(name):
    model = _build(name).train()
    images, targets = _data()
    for batch_targets in ([targets[0], _empty_target()], [_empty_target(), _empty_target()]):
        model.zero_grad()
        losses = model(images, batch_targets)
        assert set(losses) == LOSSES | EXTRA[name]
        total = sum(losses.values())
        total.backward()
        assert math.isfinite(total.item())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # nothing to find at all: no box, mask or keypoint loss, only "background" to learn
    for key in ("loss_rpn_box_reg", "loss_box_reg", *EXTRA[name]):
        assert losses[key].item() == 0, key


@pytest.mark.parametrize("name", SMALL)
def test_a_few_steps_fit_two_images(name):
    model = _build(name).train()
    images, targets = _data()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    history = []
    for _ in range(15):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.6 * history[0], [round(v, 3) for v in history]


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_round_trip_and_backbone_names(name):
    model = _build(name)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_model(name, num_classes=3,
                         **({"num_keypoints": NUM_KP} if name.startswith("keypoint") else {}))
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 fresh.state_dict().values()))
    # a ResNet-18 classification checkpoint (minus its fc) loads strictly into the body
    classifier = create_model("resnet18", num_classes=10).state_dict()
    body = {k: v for k, v in classifier.items() if not k.startswith("fc.")}
    model.backbone.body.load_state_dict(body, strict=True)


def test_frozen_backbone_norm_loads_a_batchnorm_checkpoint():
    model = _build("fasterrcnn_resnet18_fpn", backbone_norm="frozen")
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 20
    state = _build("fasterrcnn_resnet18_fpn").state_dict()  # has num_batches_tracked
    model.load_state_dict(state, strict=True)
    # frozen: the statistics stay put in training mode
    model.train()
    before = body.bn1.running_mean.clone()
    images, targets = _data()
    model(images, targets)
    assert torch.equal(body.bn1.running_mean, before)
    with pytest.raises(CnnkitError, match="backbone norm"):
        _build("fasterrcnn_resnet18_fpn", backbone_norm="group")


def test_bad_targets_raise_one_line_errors():
    model = _build("maskrcnn_resnet18_fpn").train()
    images, targets = _data()
    with pytest.raises(CnnkitError, match="needs targets"):
        model(images)
    with pytest.raises(CnnkitError, match="non-positive"):
        bad = torch.tensor([[10.0, 10, 5, 20], [0, 0, 4, 4]])  # x2 < x1
        model(images[:1], [{**targets[0], "boxes": bad}])
    no_masks = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    with pytest.raises(CnnkitError, match="masks"):
        model(images, no_masks)


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_fpn",
                                  "fasterrcnn_resnet50_fpn_v2"])
def test_reference_sized_variants_run(name):
    # torchvision's models, run at a tiny size with few RoIs to stay fast
    model = create_model(name, num_classes=5, min_size=64, max_size=64,
                         box_batch_size_per_image=16, rpn_post_nms_top_n_test=50)
    assert model.task == "detection"
    images, targets = _data()
    model.train()
    losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    assert set(losses) == LOSSES and all(math.isfinite(v.item()) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images[:1])
    assert set(out[0]) == {"boxes", "labels", "scores"}
