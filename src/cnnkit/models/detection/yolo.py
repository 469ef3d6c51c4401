"""YOLOv8 (Jocher et al., Ultralytics 2023, https://github.com/ultralytics/ultralytics; described
in mmyolo's "YOLOv8 algorithm principles" docs): an anchor-free one-stage detector.

* Backbone (CSPDarknet): a stride-2 stem, then four stages of [3×3 stride-2 conv → C2f]; the
  last ends in SPPF. C2f (CSP with two convs) splits a 1×1 conv's output in two halves, runs
  n bottlenecks on the second and concatenates every intermediate output before a 1×1 conv.
* Neck (PAN-FPN, Liu et al. 2018, https://arxiv.org/abs/1803.01534): top-down by nearest
  upsampling + concat + C2f, then bottom-up by stride-2 convs + concat + C2f; outputs at
  strides 8, 16, 32.
* Head: decoupled, per level two 3×3 convs then a 1×1 conv for the box (4 × 16 DFL bins) and
  likewise for the K class logits (sigmoid, no objectness). Losses and assignment: yolo_loss.py.
* Every conv is Conv → BatchNorm(eps 1e-3, momentum 0.03) → SiLU (ultralytics' `Conv` and
  `initialize_weights`).

Width/depth multipliers scale one layout (ultralytics `parse_model`): channels c → ⌈min(c,
max_channels)·width / 8⌉·8, repeats n → max(round(n·depth), 1).

Labels follow cnnkit's detector convention (torchvision's): `num_classes` counts the background,
targets carry labels 1..num_classes-1 and so do the detections. Inside, YOLO has K =
num_classes - 1 sigmoid outputs and no background class (label l ↔ output l - 1).

Images (a list of float (3, H, W) in 0..1, any sizes) are letterboxed to `img_size`² — the long
side resized to img_size, the short one padded with grey 114/255 on both sides, as ultralytics'
LetterBox — with no mean/std normalisation; boxes come back in the input images' pixels.

Registered: `yolov8n` / `yolov8s` (3,157,200 / 11,166,560 parameters at 81 = 80 + 1 classes,
the published counts, which include the DFL's 16 fixed weights: "3157200 parameters, 3157184
gradients" in ultralytics' yolov8.yaml) and `yolov8_cpu`, a narrower one for CPU training; the
classifiers `yolov8n_cls` (2,719,288 at 1000 classes, yolov8-cls.yaml) and `yolov8_cpu_cls`,
whose trained backbones start the detectors of the same width.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.models.detection.retinanet import check_degenerate, check_targets
from cnnkit.models.detection.yolo_loss import YOLOv8Loss, dist2bbox, make_anchors
from cnnkit.ops.boxes import batched_nms
from cnnkit.utils import CnnkitError

STRIDES = (8, 16, 32)
# ultralytics `initialize_weights` sets these on every BatchNorm
_BN = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)


def conv(c_in: int, c_out: int, k: int = 1, s: int = 1) -> ConvNormAct:
    """ultralytics' `Conv`: k×k conv (same padding, no bias) → BN → SiLU."""
    return ConvNormAct(c_in, c_out, k, stride=s, norm=_BN, act="silu")


# --- blocks ---

class Bottleneck(nn.Module):
    """Two 3×3 convs, plus the input when `shortcut` (backbone C2f) and the widths agree."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2 = conv(c_in, c_out, 3), conv(c_out, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convs: 1×1 to 2c, split, n bottlenecks chained on the second
    half, every intermediate kept; concat (2 + n)·c → 1×1 to c_out. c = c_out / 2."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = conv(c_in, 2 * self.c)
        self.cv2 = conv((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))  # 2 × (N, c, H, W)
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))    # (N, (2 + n)·c, H, W) → (N, c_out, H, W)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max-pools equal the 5/9/13 pools of
    SPP (He et al. 2014, https://arxiv.org/abs/1406.4729) at a third of the cost."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2 = conv(c_in, hidden), conv(hidden * 4, c_out)
        self.m = nn.MaxPool2d(k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Expected distance of each side's 16-bin distribution: softmax, then a fixed 1×1 conv
    whose weights are 0..15. Kept as a frozen parameter, as ultralytics does, so the published
    parameter counts (which include these 16 weights) match."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, x):
        b, _, a = x.shape                                          # (B, 4·reg_max, A)
        probs = x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)  # (B, reg_max, 4, A)
        return self.conv(probs).view(b, 4, a)                      # (B, 4, A)


# --- backbone, neck, head ---

def scaled_layout(width: float, depth: float, max_channels: int = 1024):
    """The backbone's five widths and four C2f repeats at a width/depth scale (parse_model)."""
    ch = [math.ceil(min(c, max_channels) * width / 8) * 8 for c in (64, 128, 256, 512, 1024)]
    return ch, [max(round(r * depth), 1) for r in (3, 6, 6, 3)]


class CSPDarknet(nn.Module):
    """stem (stride 2) → stage1..stage4 (strides 4..32); returns stages 2–4 (C3, C4, C5).
    The detector's last stage ends in SPPF; the classifier's (yolov8-cls.yaml) does not."""

    def __init__(self, ch: list[int], n: list[int], in_chans: int = 3, sppf: bool = True):
        super().__init__()
        self.stem = conv(in_chans, ch[0], 3, 2)
        stages = [nn.Sequential(conv(ch[i], ch[i + 1], 3, 2), C2f(ch[i + 1], ch[i + 1], n[i],
                                                                  shortcut=True))
                  for i in range(4)]
        if sppf:
            stages[3].append(SPPF(ch[4], ch[4], 5))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x):
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        return [c3, c4, self.stage4(c4)]


class PAFPN(nn.Module):
    """Top-down (C5 → P4 → P3) then bottom-up (P3 → N4 → N5) with C2f after each concat (no
    shortcut in the neck's bottlenecks); out_channels = the backbone's (c3, c4, c5)."""

    def __init__(self, channels: list[int], n: int):
        super().__init__()
        c3, c4, c5 = channels
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down_layers = nn.ModuleList([C2f(c5 + c4, c4, n), C2f(c4 + c3, c3, n)])
        self.downsample_layers = nn.ModuleList([conv(c3, c3, 3, 2), conv(c4, c4, 3, 2)])
        self.bottom_up_layers = nn.ModuleList([C2f(c3 + c4, c4, n), C2f(c4 + c5, c5, n)])

    def forward(self, feats):
        c3, c4, c5 = feats
        p4 = self.top_down_layers[0](torch.cat([self.upsample(c5), c4], 1))
        p3 = self.top_down_layers[1](torch.cat([self.upsample(p4), c3], 1))
        n4 = self.bottom_up_layers[0](torch.cat([self.downsample_layers[0](p3), p4], 1))
        n5 = self.bottom_up_layers[1](torch.cat([self.downsample_layers[1](n4), c5], 1))
        return [p3, n4, n5]


class YOLOv8Head(nn.Module):
    """Decoupled head (ultralytics `Detect`): per level a box branch (→ 4·reg_max bin logits)
    and a class branch (→ K logits); widths c2 = max(16, c3/4, 4·reg_max) and
    c3' = max(c3, min(K, 100)) from the finest level's channels."""

    def __init__(self, num_classes: int, channels: list[int], reg_max: int = 16):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        c_box = max(16, channels[0] // 4, reg_max * 4)
        c_cls = max(channels[0], min(num_classes, 100))
        self.reg_preds = nn.ModuleList(
            nn.Sequential(conv(c, c_box, 3), conv(c_box, c_box, 3),
                          nn.Conv2d(c_box, 4 * reg_max, 1))
            for c in channels)
        self.cls_preds = nn.ModuleList(
            nn.Sequential(conv(c, c_cls, 3), conv(c_cls, c_cls, 3),
                          nn.Conv2d(c_cls, num_classes, 1))
            for c in channels)
        self.dfl = DFL(reg_max)
        for reg, cls, stride in zip(self.reg_preds, self.cls_preds, STRIDES):
            nn.init.constant_(reg[-1].bias, 1.0)
            # prior: ~5 objects per 640² image spread over the (640/s)² cells and K classes
            # (ultralytics `Detect.bias_init`)
            nn.init.constant_(cls[-1].bias, math.log(5 / num_classes / (640 / stride) ** 2))

    def forward(self, feats) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """→ box bin logits (N, A, 4·reg_max), class logits (N, A, K), each level's (H, W)."""
        dist = [reg(f).flatten(2) for reg, f in zip(self.reg_preds, feats)]   # (N, 4R, H·W)
        logits = [cls(f).flatten(2) for cls, f in zip(self.cls_preds, feats)]  # (N, K, H·W)
        shapes = [tuple(f.shape[-2:]) for f in feats]
        return torch.cat(dist, 2).transpose(1, 2), torch.cat(logits, 2).transpose(1, 2), shapes


# --- the detector ---

def letterbox(images: list[torch.Tensor], size: int, fill: float = 114 / 255):
    """Resize each image's long side to `size` and pad to size × size, centred. Returns the
    batch (N, C, size, size) and each image's (x, y) scale and (left, top) padding."""
    batch = images[0].new_full((len(images), images[0].shape[0], size, size), fill)
    scales, pads = [], []
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        r = size / max(h, w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        if (nh, nw) != (h, w):
            img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        top, left = (size - nh) // 2, (size - nw) // 2
        batch[i, :, top:top + nh, left:left + nw] = img
        scales.append((nw / w, nh / h))
        pads.append((left, top))
    return batch, torch.tensor(scales), torch.tensor(pads, dtype=torch.float)


class YOLOv8(nn.Module):
    """backbone → neck → head, with the letterbox, the loss (train) and the decoding + per-class
    NMS (eval) inside, on torchvision's detector contract (module docstring)."""

    detector = True
    task = "detection"
    # The detection task trains it with YOLO's recipe: mosaic (closed for the last epochs), HSV
    # jitter and an EMA of the weights (train/detect.py).
    yolo_recipe = True
    # Class scores are trained towards the IoU (task-aligned targets), so good boxes score lower
    # than a softmax detector's: figures and `cnnkit predict` show ≥ 0.25, ultralytics' `conf`.
    shown_score = 0.25

    def __init__(self, num_classes: int = 81, *, width: float = 0.25, depth: float = 0.33,
                 max_channels: int = 1024, in_chans: int = 3, img_size: int = 640,
                 reg_max: int = 16, score_thresh: float = 0.001, nms_thresh: float = 0.7,
                 detections_per_img: int = 300, max_candidates: int = 30000,
                 loss_gains: tuple[float, float, float] = (7.5, 0.5, 1.5)):
        super().__init__()
        if num_classes < 2:
            raise CnnkitError(f"YOLOv8: num_classes counts the background, so it must be ≥ 2 "
                              f"(one object class), got {num_classes}")
        if img_size <= 0 or img_size % 32:
            raise CnnkitError(f"YOLOv8: img_size must be a positive multiple of 32 (the "
                              f"largest stride), got {img_size}")
        ch, n = scaled_layout(width, depth, max_channels)
        self.num_classes, self.img_size, self.reg_max = num_classes, img_size, reg_max
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.max_candidates = detections_per_img, max_candidates
        self.backbone = CSPDarknet(ch, n, in_chans)
        self.neck = PAFPN(ch[2:], max(round(3 * depth), 1))
        self.head = YOLOv8Head(num_classes - 1, ch[2:], reg_max)
        box, cls, dfl = loss_gains
        self.criterion = YOLOv8Loss(num_classes - 1, reg_max, box=box, cls=cls, dfl=dfl)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            check_targets(images, targets, self.num_classes)
            for i, target in enumerate(targets):
                if target["labels"].numel() and int(target["labels"].min()) < 1:
                    raise CnnkitError(f"target {i}: YOLO labels start at 1 (0 is the background "
                                      f"of cnnkit's convention), got {target['labels'].tolist()}")
            check_degenerate(targets)
        batch, scales, pads = letterbox(list(images), self.img_size)
        if not self.training:
            return self._detections(*self.forward_raw(batch), scales, pads,
                                    [tuple(img.shape[-2:]) for img in images])
        pred_dist, pred_logits, shapes = self.head(self.neck(self.backbone(batch)))
        points, strides = make_anchors(shapes, STRIDES, device=batch.device, dtype=batch.dtype)
        return self._losses(targets, pred_dist, pred_logits, points, strides, scales, pads)

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense predictions before NMS, for a letterboxed batch x (N, 3, S, S) in 0..1: boxes
        (N, A, 4) xyxy in x's pixels and class scores (N, A, K) after the sigmoid, A = the
        anchor points of the three levels. The one decode the eval path and export share."""
        pred_dist, pred_logits, shapes = self.head(self.neck(self.backbone(x)))
        points, strides = make_anchors(shapes, STRIDES, device=x.device, dtype=x.dtype)
        distances = self.head.dfl(pred_dist.transpose(1, 2)).transpose(1, 2)  # (N, A, 4)
        boxes = dist2bbox(distances, points) * strides             # (N, A, 4) letterbox px
        return boxes, pred_logits.sigmoid()                        # (N, A, K)

    def _losses(self, targets, pred_dist, pred_logits, points, strides, scales, pads) -> dict:
        """Targets into letterbox pixels, padded to the most objects in an image (gt_mask)."""
        b, m = len(targets), max(len(t["boxes"]) for t in targets)
        device = pred_dist.device
        gt_boxes = torch.zeros(b, m, 4, device=device)
        gt_labels = torch.zeros(b, m, dtype=torch.long, device=device)
        gt_mask = torch.zeros(b, m, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            k = len(t["boxes"])
            scale = scales[i].repeat(2).to(device)                 # (4,) sx, sy, sx, sy
            gt_boxes[i, :k] = t["boxes"].to(device).float() * scale + pads[i].repeat(2).to(device)
            gt_labels[i, :k] = t["labels"].to(device) - 1          # 1..K → 0..K-1
            gt_mask[i, :k] = True
        return self.criterion(pred_dist.float(), pred_logits.float(), points, strides,
                              gt_labels, gt_boxes, gt_mask)

    @torch.no_grad()
    def _detections(self, boxes, scores, scales, pads, sizes) -> list[dict]:
        """`forward_raw`'s boxes (B, A, 4) and scores (B, A, K) → detections: every (point,
        class) above `score_thresh` is a candidate (ultralytics val's multi-label NMS); at most
        `max_candidates` best, per-class NMS, the best `detections_per_img`, mapped back to the
        image and clipped."""
        out = []
        for i, (h, w) in enumerate(sizes):
            point_idx, cls = torch.where(scores[i] > self.score_thresh)
            s = scores[i, point_idx, cls]
            if s.numel() > self.max_candidates:
                s, order = s.topk(self.max_candidates)
                point_idx, cls = point_idx[order], cls[order]
            b = (boxes[i, point_idx] - pads[i].repeat(2).to(boxes)) / scales[i].repeat(2).to(boxes)
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            keep = batched_nms(b, s, cls, self.nms_thresh)[:self.detections_per_img]
            out.append({"boxes": b[keep], "scores": s[keep], "labels": cls[keep] + 1})
        return out


class YOLOv8Classifier(nn.Module):
    """YOLOv8-cls (ultralytics yolov8-cls.yaml): the detector's CSPDarknet without SPPF, then
    `Classify` — a 1×1 conv to 1280 channels, global average pooling, dropout and a linear layer.
    Trained as a classifier, its backbone starts a detector (`--backbone-weights`): ImageNet
    pretraining of the backbone is how YOLO usually begins; here it can be any labelled images."""

    def __init__(self, num_classes: int = 1000, *, width: float = 0.25, depth: float = 0.33,
                 max_channels: int = 1024, in_chans: int = 3, hidden: int = 1280,
                 drop_rate: float = 0.0):
        super().__init__()
        ch, n = scaled_layout(width, depth, max_channels)
        self.backbone = CSPDarknet(ch, n, in_chans, sppf=False)
        self.head = nn.Sequential(conv(ch[4], hidden), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


# --- registered variants ---

BIG = {"input_size": (3, 640, 640), "test_input_size": (3, 64, 64),
       "test_kwargs": {"img_size": 64}}


@register_model(**BIG)
def yolov8n(num_classes: int = 81, **kwargs) -> YOLOv8:
    """YOLOv8-n: depth 0.33, width 0.25; 3,157,200 parameters with 80 object classes."""
    return YOLOv8(num_classes, **{"width": 0.25, "depth": 0.33, **kwargs})


@register_model(**BIG)
def yolov8s(num_classes: int = 81, **kwargs) -> YOLOv8:
    """YOLOv8-s: depth 0.33, width 0.50; 11,166,560 parameters with 80 object classes."""
    return YOLOv8(num_classes, **{"width": 0.5, "depth": 0.33, **kwargs})


@register_model(input_size=(3, 320, 320), test_input_size=(3, 64, 64),
                test_kwargs={"img_size": 64})
def yolov8_cpu(num_classes: int = 81, **kwargs) -> YOLOv8:
    """A CPU-sized YOLOv8 (not an ultralytics scale): yolov8n's depth 0.33 at half its width
    (0.125: backbone 8..128 channels) and 320-px inputs; every default overridable."""
    return YOLOv8(num_classes, **{"width": 0.125, "depth": 0.33, "img_size": 320, **kwargs})


@register_model(test_input_size=(3, 32, 32))
def yolov8n_cls(num_classes: int = 1000, **kwargs) -> YOLOv8Classifier:
    """YOLOv8n-cls: 2,719,288 parameters with 1000 classes (ultralytics' published count)."""
    return YOLOv8Classifier(num_classes, **{"width": 0.25, "depth": 0.33, **kwargs})


@register_model(input_size=(3, 64, 64), test_input_size=(3, 32, 32))
def yolov8_cpu_cls(num_classes: int = 1000, **kwargs) -> YOLOv8Classifier:
    """yolov8_cpu's backbone (width 0.125) as a classifier, to pretrain that detector's backbone."""
    return YOLOv8Classifier(num_classes, **{"width": 0.125, "depth": 0.33, **kwargs})
