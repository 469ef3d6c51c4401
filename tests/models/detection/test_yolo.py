"""YOLOv8 models: the published parameter counts, the layout rules, the letterbox, the detector
contract (train losses / eval detections), bad input, and a short real training run."""
import math

import pytest
import torch

from cnnkit.models import count_parameters, create_model, get_model_cfg
from cnnkit.models.detection.yolo import DFL, letterbox
from cnnkit.models.detection.yolo_loss import dfl_expectation
from cnnkit.ops.boxes import box_iou
from cnnkit.utils import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ultralytics' yolov8.yaml: "YOLOv8n summary: 225 layers, 3157200 parameters, 3157184
# gradients" (s: 11166560 / 11166544), for its 80 COCO classes; the 16 without gradient are
# the DFL's fixed weights
PUBLISHED = {"yolov8n": 3_157_200, "yolov8s": 11_166_560}
# ultralytics' yolov8-cls.yaml at scale n, 1000 ImageNet classes: "2719288 parameters"
PUBLISHED_CLS = 2_719_288


def scene(seed: int, n: int = 4, h: int = 96, w: int = 128):
    """n dark noisy images, each with one bright rectangle (label 1 or 2, its colour)."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        img = torch.rand(3, h, w, generator=gen) * 0.2
        bw, bh = (int(v) for v in torch.randint(24, 56, (2,), generator=gen))
        x0 = int(torch.randint(0, w - bw, (1,), generator=gen))
        y0 = int(torch.randint(0, h - bh, (1,), generator=gen))
        img[i % 2, y0:y0 + bh, x0:x0 + bw] = 0.95
        images.append(img)
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + bw, y0 + bh]], dtype=torch.float),
                        "labels": torch.tensor([1 + i % 2])})
    return images, targets


def loss_history(model, *, steps: int, lr: float) -> list[float]:
    """The summed training loss of `steps` AdamW steps on scene(0), one value per step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    images, targets = scene(0)
    history = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count(name):
    model = create_model(name, num_classes=81)  # 80 classes + cnnkit's background
    assert count_parameters(model) == PUBLISHED[name]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == PUBLISHED[name] - 16
    assert get_model_cfg(name)["input_size"] == (3, 640, 640) and model.img_size == 640


def test_classifier_count_and_its_backbone_fits_the_detector():
    classifier = create_model("yolov8n_cls")
    assert count_parameters(classifier) == PUBLISHED_CLS
    assert classifier(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)
    detector = create_model("yolov8n").backbone.state_dict()
    shared = {k.removeprefix("backbone."): v for k, v in classifier.state_dict().items()
              if k.startswith("backbone.")}
    assert all(detector[k].shape == v.shape for k, v in shared.items())
    assert sorted(set(detector) - set(shared)) == sorted(
        k for k in detector if k.startswith("stage4.2."))  # the detector's SPPF only


def test_width_depth_rules():
    n, s, cpu = (create_model(x) for x in ("yolov8n", "yolov8s", "yolov8_cpu"))
    # channels ⌈64·width / 8⌉·8 at the stem, 1024·width at the SPPF
    assert n.backbone.stem.conv.out_channels == 16 and s.backbone.stem.conv.out_channels == 32
    assert cpu.backbone.stem.conv.out_channels == 8
    assert n.backbone.stage4[-1].cv2.conv.out_channels == 256
    # repeats round(3·0.33) = 1, round(6·0.33) = 2
    assert [len(getattr(n.backbone, f"stage{i}")[1].m) for i in range(1, 5)] == [1, 2, 2, 1]
    assert cpu.img_size == 320 and count_parameters(cpu) < count_parameters(n)
    # Conv → BN(eps 1e-3, momentum 0.03) → SiLU everywhere
    bns = [m for m in n.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in bns)
    # head widths: box max(16, 64/4, 64) = 64; class max(64, min(80, 100)) = 80
    assert n.head.reg_preds[0][0].conv.out_channels == 64
    assert n.head.cls_preds[0][0].conv.out_channels == 80
    # bias init: box 1, class log(5 / K / (640 / s)²)
    for cls, stride in zip(n.head.cls_preds, (8, 16, 32)):
        prior = math.log(5 / 80 / (640 / stride) ** 2)
        torch.testing.assert_close(cls[-1].bias, torch.full((80,), prior))
    assert (n.head.reg_preds[2][-1].bias == 1).all()


def test_dfl_module_is_the_expectation():
    logits = torch.randn(2, 64, 5)  # (B, 4·16, A)
    expected = dfl_expectation(logits.transpose(1, 2)).transpose(1, 2)  # (B, 4, A)
    torch.testing.assert_close(DFL(16)(logits), expected)
    assert not DFL(16).conv.weight.requires_grad


def test_letterbox():
    img = torch.rand(3, 96, 128)
    batch, scales, pads = letterbox([img, torch.rand(3, 64, 32)], 64)
    assert batch.shape == (2, 3, 64, 64)
    assert scales.tolist() == [[0.5, 0.5], [1.0, 1.0]] and pads.tolist() == [[0, 8], [16, 0]]
    grey = torch.tensor(114 / 255)
    assert (batch[0, :, :8] == grey).all() and (batch[0, :, 56:] == grey).all()
    assert (batch[1, :, :, :16] == grey).all() and (batch[1, :, :, 48:] == grey).all()
    torch.testing.assert_close(batch[0, :, 8:56], torch.nn.functional.interpolate(
        img[None], size=(48, 64), mode="bilinear", align_corners=False)[0])


def test_train_step_with_an_empty_image():
    torch.manual_seed(0)
    model = create_model("yolov8_cpu", num_classes=3, img_size=128).train()
    images, targets = scene(0, n=3)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, targets)
    assert set(losses) == {"loss_box", "loss_cls", "loss_dfl"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    # a batch without any object: zero box terms, still a graph
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images[:2], empty)
    assert losses["loss_box"] == 0 and losses["loss_dfl"] == 0 and losses["loss_cls"] > 0


def test_eval_output_format():
    torch.manual_seed(0)
    # untrained, every point predicts a similar large box: NMS at IoU 1.0 keeps them all
    model = create_model("yolov8_cpu", num_classes=3, img_size=64, score_thresh=0.0,
                         nms_thresh=1.0).eval()
    images = [torch.rand(3, 40, 70), torch.rand(3, 90, 30)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for pred, img in zip(out, images):
        assert set(pred) == {"boxes", "scores", "labels"}
        n = len(pred["scores"])
        assert n == (8 * 8 + 4 * 4 + 2 * 2) * 2  # every point × class of the 64-px input
        assert pred["boxes"].shape == (n, 4) and pred["labels"].dtype == torch.int64
        h, w = img.shape[-2:]
        assert (pred["boxes"] >= 0).all() and (pred["boxes"][:, 0::2] <= w).all()
        assert (pred["boxes"][:, 1::2] <= h).all()
        assert pred["labels"].min() >= 1 and pred["labels"].max() <= 2  # 1..num_classes-1
        assert (pred["scores"][:-1] >= pred["scores"][1:]).all()
    # the confidence threshold: only scores above it, and fewer of them
    threshold = float(out[0]["scores"].median())
    model.score_thresh = threshold
    with torch.no_grad():
        kept = model(images)[0]["scores"]
    assert 0 < len(kept) < len(out[0]["scores"]) and (kept > threshold).all()
    model.score_thresh, model.detections_per_img = 0.0, 5  # the cap keeps the best
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0]["scores"], out[0]["scores"][:5])


def test_bad_input():
    with pytest.raises(CnnkitError, match="multiple of 32"):
        create_model("yolov8_cpu", img_size=100)
    with pytest.raises(CnnkitError, match="num_classes"):
        create_model("yolov8_cpu", num_classes=1)
    model = create_model("yolov8_cpu", num_classes=3, img_size=64).train()
    images, targets = scene(0, n=1)
    with pytest.raises(CnnkitError, match="labels start at 1"):
        model(images, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0])}])
    with pytest.raises(CnnkitError, match=r"labels must lie in \[0, 3\)"):
        model(images, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([3])}])
    with pytest.raises(CnnkitError, match="needs targets"):
        model(images)


def test_training_smoke_loss_falls_and_boxes_are_found():
    """50 AdamW steps on four 96 × 128 images (letterboxed to 128) with one box each."""
    torch.manual_seed(0)
    model = create_model("yolov8_cpu", num_classes=3, img_size=128).train()
    history = loss_history(model, steps=50, lr=2e-3)
    images, targets = scene(0)  # the same scene the steps trained on
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.3 * first, f"loss {first:.2f} → {last:.2f}"
    # BatchNorm's running statistics (momentum 0.03) lag 50 steps behind: re-estimate them on
    # the batch, then the best detection of each image should be its box, with its label
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        model(images, targets)
        predictions = model.eval()(images)
    for pred, target in zip(predictions, targets):
        assert box_iou(pred["boxes"][:1], target["boxes"]).item() > 0.5
        assert pred["labels"][0] == target["labels"][0]
