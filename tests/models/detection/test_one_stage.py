"""One-stage detectors (RetinaNet, FCOS, SSDlite): their pure pieces on hand-made cases, then
each small variant trained and evaluated for real on synthetic images with bright rectangles."""
import math

import pytest
import torch

from cnnkit.models import create_model
from cnnkit.models.detection.fcos import BoxLinearCoder
from cnnkit.models.detection.retinanet import RetinaNetHead
from cnnkit.models.detection.ssd import DefaultBoxGenerator
from cnnkit.models.detection.transform import ImageList
from cnnkit.utils import CnnkitError
from tests.models.test_zoo import PARAM_COUNTS

# the CPU-sized configurations the model tests train: ≤ 128 px inputs, kept at their size
SMALL = {"retinanet_resnet18_fpn": {"min_size": 96, "max_size": 128},
         "fcos_resnet18_fpn": {"min_size": 96, "max_size": 128},
         "ssdlite320_mobilenet_v3_large": {"size": 128}}
LOSS_KEYS = {"retinanet_resnet18_fpn": {"classification", "bbox_regression"},
             "fcos_resnet18_fpn": {"classification", "bbox_regression", "bbox_ctrness"},
             "ssdlite320_mobilenet_v3_large": {"classification", "bbox_regression"}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def scene(seed: int, n: int = 2, h: int = 96, w: int = 128):
    """n dark noisy images, each with one or two bright rectangles (labels 1, 2) as targets."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        img = torch.rand(3, h, w, generator=gen) * 0.2
        boxes, labels = [], []
        for k in range(1 + i % 2):
            bw, bh = 24 + 10 * k + 4 * i, 30 + 4 * i
            x0, y0 = 8 + 60 * k + 3 * i, 10 + 30 * k + 5 * i
            img[k % 3, y0:y0 + bh, x0:x0 + bw] = 0.95  # a different colour per class
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(k + 1)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
    return images, targets


def small_model(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, num_classes=3, **{**SMALL[name], **kwargs})


# --- default boxes, box coding, matching, losses: hand-made cases ---

def test_default_boxes_ssdlite320():
    model = create_model("ssdlite320_mobilenet_v3_large").eval()
    with torch.no_grad():
        maps = list(model.backbone(torch.zeros(1, 3, 320, 320)).values())
    assert [m.shape[-1] for m in maps] == [20, 10, 5, 3, 2, 1]
    assert [m.shape[1] for m in maps] == [672, 480, 512, 256, 256, 128]
    gen = model.anchor_generator
    assert gen.num_anchors_per_location() == [6] * 6
    torch.testing.assert_close(torch.tensor(gen.scales),
                               torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]))
    boxes = gen(ImageList(torch.zeros(2, 3, 320, 320), [(320, 320)] * 2), maps)
    assert len(boxes) == 2 and boxes[0].shape == (6 * (400 + 100 + 25 + 9 + 4 + 1), 4) == (3234, 4)
    centres = (boxes[0][:, :2] + boxes[0][:, 2:]) / 2
    sizes = boxes[0][:, 2:] - boxes[0][:, :2]
    assert (centres > 0).all() and (centres < 320).all()
    assert (sizes > 0).all() and (sizes <= 320 + 1e-3).all()
    # the first location of the 20×20 map: centre 8 px, square of 0.2·320 = 64 px
    torch.testing.assert_close(boxes[0][0], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    # the 1×1 map: centred; its second box sqrt(0.95·1)·320, its 2:1 box clipped to the image
    last = boxes[0][-6:]
    torch.testing.assert_close(last[1], torch.full((4,), 160.0) + 160 * math.sqrt(0.95)
                               * torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.allclose(last[2, [0, 2]], torch.tensor([0.0, 320.0]))  # w = min(0.95·√2, 1)


def test_default_boxes_hand_values():
    gen = DefaultBoxGenerator([[2]], min_ratio=0.25, max_ratio=0.5)  # one map: scales .25, .5
    boxes = gen(ImageList(torch.zeros(1, 3, 40, 80), [(40, 80)]), [torch.zeros(1, 1, 1, 2)])[0]
    assert boxes.shape == (2 * 4, 4)
    s2 = math.sqrt(0.25 * 0.5)
    w2, h2 = 0.25 * math.sqrt(2), 0.25 / math.sqrt(2)
    # location (0, 0): centre (0.25, 0.5) of the image, i.e. (20, 20) px
    expected = [(0.25, 0.25), (s2, s2), (w2, h2), (h2, w2)]
    for box, (bw, bh) in zip(boxes[:4], expected):
        torch.testing.assert_close(box, torch.tensor([20 - 40 * bw, 20 - 20 * bh,
                                                      20 + 40 * bw, 20 + 20 * bh]))
    torch.testing.assert_close(boxes[4:, 0] - boxes[:4, 0], torch.full((4,), 40.0))


def test_box_linear_coder():
    coder = BoxLinearCoder(normalize_by_size=True)
    anchor = torch.tensor([[8.0, 8.0, 16.0, 16.0]])          # a point at (12, 12), stride 8
    box = torch.tensor([[2.0, 10.0, 30.0, 14.0]])
    code = coder.encode(anchor, box)
    torch.testing.assert_close(code, torch.tensor([[10.0, 2.0, 18.0, 2.0]]) / 8)
    torch.testing.assert_close(coder.decode(code, anchor), box)
    raw = BoxLinearCoder(normalize_by_size=False)
    torch.testing.assert_close(raw.encode(anchor, box), torch.tensor([[10.0, 2.0, 18.0, 2.0]]))
    batch = torch.rand(2, 5, 4) * 3                            # (N, HWA, 4) shapes pass through
    anchors = torch.tensor([0.0, 0.0, 8.0, 8.0]).expand(2, 5, 4)
    torch.testing.assert_close(coder.encode(anchors, coder.decode(batch, anchors)), batch)


def test_fcos_assignment_hand_made():
    model = small_model("fcos_resnet18_fpn")

    def point(cx, cy, stride):
        return [cx - stride / 2, cy - stride / 2, cx + stride / 2, cy + stride / 2]
    anchors = torch.tensor([point(4, 4, 8),      # inside the big box, too far from its centre
                            point(28, 28, 8),    # near the centre, reach 36 < 64: level 0 takes it
                            point(60, 60, 8),    # outside both boxes
                            point(20, 20, 8),    # inside both boxes: the smaller one wins
                            point(24, 40, 16),   # near the centre but reach 40 < 4·16: too small
                            point(96, 96, 16)])  # last level, no upper bound (outside these boxes)
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0], [14.0, 14.0, 26.0, 26.0]])
    matched = model._match(gt, anchors, num_anchors_per_level=[4, 2])
    assert matched.tolist() == [-1, 0, -1, 1, -1, -1]
    far = torch.tensor([[0.0, 0.0, 200.0, 200.0]])  # reach 104 > 4·16, centred on the last
    assert model._match(far, anchors, [4, 2]).tolist() == [-1] * 5 + [0]


def test_ssd_hard_negative_mining():
    model = small_model("ssdlite320_mobilenet_v3_large")
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 10)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    logits = torch.zeros(1, 10, 3)
    logits[0, :, 1] = torch.tensor([0.0, 1.0, 5.0, 2.0, 4.0, 3.0, 0.5, 0.0, 0.0, 6.0])
    outputs = {"cls_logits": logits, "bbox_regression": torch.zeros(1, 10, 4)}
    matched = torch.tensor([0] + [-1] * 9)  # anchor 0 positive, the rest background
    losses = model.compute_loss([target], outputs, [anchors], [matched])
    ce = torch.nn.functional.cross_entropy(logits[0], torch.tensor([2] + [0] * 9),
                                           reduction="none")
    # 3 negatives per positive: the three hardest, anchors 9, 2 and 4
    torch.testing.assert_close(losses["classification"], ce[0] + ce[9] + ce[2] + ce[4])
    torch.testing.assert_close(losses["bbox_regression"], torch.tensor(0.0))  # exact anchor


def test_retinanet_head_prior_and_shapes():
    torch.manual_seed(0)
    head = RetinaNetHead(32, num_anchors=9, num_classes=5)
    torch.testing.assert_close(head.classification_head.cls_logits.bias,
                               torch.full((45,), -math.log(99)))
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    out = head(features)
    assert out["cls_logits"].shape == (2, 9 * 80, 5)
    assert out["bbox_regression"].shape == (2, 9 * 80, 4)
    # every anchor starts near the 0.01 prior (paper §4.1)
    assert abs(torch.sigmoid(out["cls_logits"]).mean().item() - 0.01) < 0.003


# --- the registered models ---

@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large"])
def test_reference_models_defaults_and_eval(name):
    model = create_model(name)
    assert model.detector and model.task == "detection" and model.num_classes == 91
    ref = PARAM_COUNTS[name]["postprocess"]
    assert {k: getattr(model, k) for k in ref} == ref
    ssd = name.startswith("ssd")
    assert model.transform.image_mean == ([0.5] * 3 if ssd else [0.485, 0.456, 0.406])
    assert model.transform.fixed_size == ((320, 320) if ssd else None)
    if not ssd:
        assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
        model.transform.min_size, model.transform.max_size = (64,), 96  # a cheap forward
    with torch.no_grad():
        out = model.eval()([torch.rand(3, 48, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    n = len(out[0]["scores"])
    assert out[0]["boxes"].shape == (n, 4) and out[0]["labels"].shape == (n,)
    assert n <= model.detections_per_img


@pytest.mark.parametrize("name", list(SMALL))
def test_train_forward_backward_and_eval(name):
    model = small_model(name, score_thresh=0.0, detections_per_img=20).train()
    images, targets = scene(0)
    images[1] = images[1][:, :, :80]  # two sizes in one batch
    targets[1]["boxes"][:, 0::2] = targets[1]["boxes"][:, 0::2].clamp(max=79)
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[name]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]

    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape == (20, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64 and det["labels"].min() >= 1 - ("ssd" not in name)
        assert det["labels"].max() < 3
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted by score
        h, w = img.shape[-2:]  # in the original image's pixels
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= w + 1e-3).all()
        assert (det["boxes"][:, 1::2] <= h + 1e-3).all()


@pytest.mark.parametrize("name", list(SMALL))
def test_images_without_boxes_train(name):
    model = small_model(name).train()
    images, targets = scene(1)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for batch in ([targets[0], empty], [empty, dict(empty)]):
        model.zero_grad()
        losses = model(images, batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert losses["bbox_regression"] == 0  # nothing to regress without boxes


@pytest.mark.parametrize("name", list(SMALL))
def test_few_steps_lower_the_loss(name):
    model = small_model(name).train()
    images, targets = scene(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    totals = []
    for _ in range(25):
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
        if len(totals) == 1:
            first = {k: v.item() for k, v in losses.items()}
    assert all(math.isfinite(t) for t in totals)
    # FCOS's centerness BCE cannot fall below the entropy of its targets (~0.6), hence 0.6
    assert max(totals[-3:]) < 0.6 * totals[0], totals
    assert losses["classification"].item() < 0.7 * first["classification"]


def test_state_dict_round_trip_strict():
    a = small_model("fcos_resnet18_fpn", seed=0, score_thresh=0.0).eval()
    b = small_model("fcos_resnet18_fpn", seed=1, score_thresh=0.0).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    images, _ = scene(3, n=1)
    with torch.no_grad():
        pa, pb = a(images)[0], b(images)[0]
    torch.testing.assert_close(pa["boxes"], pb["boxes"])
    torch.testing.assert_close(pa["scores"], pb["scores"])
    for name in ("retinanet_resnet18_fpn", "ssdlite320_mobilenet_v3_large"):
        state = small_model(name, seed=0).state_dict()
        small_model(name, seed=1).load_state_dict(state, strict=True)


def test_fine_tuning_options():
    ssd = create_model("ssdlite320_mobilenet_v3_large", trainable_backbone_layers=0)
    assert not any(p.requires_grad for p in ssd.backbone.features.parameters())
    assert all(p.requires_grad for p in ssd.backbone.extra.parameters())
    part = create_model("ssdlite320_mobilenet_v3_large", trainable_backbone_layers=2)
    frozen = {int(n.split(".")[0]) for n, p in part.backbone.features[0].named_parameters()
              if not p.requires_grad}
    assert frozen == set(range(13))  # the stages before C4 (block 13, whose expansion is 13)
    assert all(p.requires_grad for p in part.backbone.features[1].parameters())
    retina = create_model("retinanet_resnet18_fpn", backbone_norm="frozen",
                          trainable_backbone_layers=3)
    body = retina.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    assert (retina.transform.min_size, retina.transform.max_size) == ((128,), 320)


def test_bad_input_raises_one_line():
    model = small_model("retinanet_resnet18_fpn").train()
    images, targets = scene(4)
    with pytest.raises(CnnkitError, match="needs targets"):
        model(images)
    bad = [targets[0], {"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]),
                        "labels": torch.tensor([1])}]
    with pytest.raises(CnnkitError, match="positive width and height"):
        model(images, bad)
    with pytest.raises(CnnkitError, match="shape"):
        model(images, [targets[0], {"boxes": torch.zeros(4), "labels": torch.zeros(1)}])
    with pytest.raises(CnnkitError, match=r"labels must lie in \[0, 3\)"):
        model(images, [targets[0], {"boxes": targets[1]["boxes"], "labels": torch.tensor([1, 3])}])
    with pytest.raises(CnnkitError, match="unknown"):
        create_model("fcos_resnet18_fpn", score_tresh=0.3)
