"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection",
https://arxiv.org/abs/1708.02002) in torchvision's layout (`models/detection/retinanet.py`).

A one-stage detector: a ResNet-FPN backbone gives P3–P7 (P6/P7 from strided 3×3 convs on P5),
and two small conv towers shared across levels predict, for each of the 9 anchors at every
location (3 scales × 3 aspect ratios), K class logits (sigmoid, no background class) and 4 box
deltas. Training scores every anchor with the focal loss, so the ~100k easy background anchors
do not swamp the few positives; the box loss is L1 on torchvision's (1, 1, 1, 1)-weighted deltas.

This file also holds what FCOS (fcos.py) shares with it: the train/eval forward pass around the
transform, the per-level top-k selection and the per-class NMS merge, and the ResNet-FPN body.

Registered: `retinanet_resnet50_fpn` (torchvision's v1 model, 34.1M parameters with 91 classes)
and `retinanet_resnet18_fpn`, a CPU-sized variant (ResNet-18, 128-wide FPN, smaller anchors and
images; its docstring lists the differences).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.fpn import LastLevelP6P7
from cnnkit.models._registry import register_model
from cnnkit.models.detection._utils import Matcher, _box_loss
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.backbones import (BackboneWithFPN, _resnet_fpn_extractor,
                                               set_backbone_norm)
from cnnkit.models.detection.transform import GeneralizedRCNNTransform
from cnnkit.models.resnet import resnet18, resnet50
from cnnkit.ops.boxes import BoxCoder, batched_nms, box_iou, clip_boxes_to_image
from cnnkit.ops.focal_loss import sigmoid_focal_loss
from cnnkit.utils import CnnkitError

_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# --- heads ---

def _per_location(out: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, A·K, H, W) conv output → (N, H·W·A, K): one row per anchor, in the anchor order."""
    n, _, h, w = out.shape
    out = out.view(n, -1, columns, h, w)   # (N, A, K, H, W)
    out = out.permute(0, 3, 4, 1, 2)       # (N, H, W, A, K)
    return out.reshape(n, -1, columns)     # (N, H·W·A, K)


def _tower(channels: int, norm_layer) -> nn.Sequential:
    """Four 3×3 conv (→ norm) → ReLU layers; conv `0` and norm `1` as in torchvision's
    Conv2dNormActivation. Without a norm the convs keep their bias (torchvision's v1 heads)."""
    return nn.Sequential(*[ConvNormAct(channels, channels, 3, norm=norm_layer, act="relu",
                                       names=("0", "1", "2")) for _ in range(4)])


def _normal_conv_init(module: nn.Module, std: float = 0.01) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class RetinaNetClassificationHead(nn.Module):
    """Conv tower → 3×3 conv to A·K logits per location, shared by every pyramid level.

    The logits' bias starts at -log((1 - π) / π), π = `prior_probability` = 0.01, so every
    anchor first predicts "object" with probability 0.01: otherwise the background anchors'
    loss blows up in the first iterations (paper §4.1, "Initialization").
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int,
                 prior_probability: float = 0.01, norm_layer=None):
        super().__init__()
        self.conv = _tower(in_channels, norm_layer)
        _normal_conv_init(self.conv)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias,
                          -math.log((1 - prior_probability) / prior_probability))
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.BETWEEN_THRESHOLDS = Matcher.BETWEEN_THRESHOLDS

    def compute_loss(self, targets, head_outputs, matched_idxs) -> torch.Tensor:
        """Focal loss summed over the non-ignored anchors, divided by the positives, per image."""
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            foreground = matched >= 0
            num_foreground = int(foreground.sum())
            gt_classes = torch.zeros_like(logits)  # (HWA, K) one-hot, all zero for background
            gt_classes[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS  # IoU in [0.4, 0.5): ignored
            losses.append(sigmoid_focal_loss(logits[valid], gt_classes[valid], reduction="sum")
                          / max(1, num_foreground))
        return sum(losses) / len(targets)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_per_location(self.cls_logits(self.conv(f)), self.num_classes)
                          for f in x], dim=1)  # (N, sum HWA, K)


class RetinaNetRegressionHead(nn.Module):
    """Conv tower → 3×3 conv to A·4 box deltas per location (class-agnostic)."""

    def __init__(self, in_channels: int, num_anchors: int, norm_layer=None):
        super().__init__()
        self.conv = _tower(in_channels, norm_layer)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        _normal_conv_init(self.bbox_reg)
        _normal_conv_init(self.conv)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._loss_type = "l1"

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> torch.Tensor:
        losses = []
        for target, regression, anchors_i, matched in zip(
                targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            foreground = torch.where(matched >= 0)[0]  # only positives regress a box
            matched_boxes = target["boxes"][matched[foreground]]
            losses.append(_box_loss(self._loss_type, self.box_coder, anchors_i[foreground],
                                    matched_boxes, regression[foreground])
                          / max(1, foreground.numel()))
        return sum(losses) / max(1, len(targets))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_per_location(self.bbox_reg(self.conv(f)), 4) for f in x],
                         dim=1)  # (N, sum HWA, 4)


class RetinaNetHead(nn.Module):
    """The classification and box-regression subnets (paper Fig. 3 c, d)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, norm_layer=None):
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors,
                                                               num_classes, norm_layer=norm_layer)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors,
                                                       norm_layer=norm_layer)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict:
        return {"classification": self.classification_head.compute_loss(targets, head_outputs,
                                                                         matched_idxs),
                "bbox_regression": self.regression_head.compute_loss(targets, head_outputs,
                                                                     anchors, matched_idxs)}

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"cls_logits": self.classification_head(x),
                "bbox_regression": self.regression_head(x)}


# --- what the one-stage detectors share ---

def check_targets(images, targets, num_classes: int) -> None:
    """One line for what torchvision would assert on (or fail on deep inside the loss):
    targets missing, miscounted or misshapen, labels outside [0, num_classes)."""
    if targets is None:
        raise CnnkitError("a detector in training mode needs targets: model(images, targets) "
                          "with one {'boxes': (N, 4), 'labels': (N,)} dict per image")
    if len(targets) != len(images):
        raise CnnkitError(f"got {len(images)} images but {len(targets)} target dicts")
    for i, target in enumerate(targets):
        boxes = target.get("boxes") if isinstance(target, dict) else None
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise CnnkitError(f"target {i}: 'boxes' must be a float tensor of shape (N, 4) "
                              f"x1y1x2y2, got {got}")
        labels = target.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.shape != boxes.shape[:1]:
            raise CnnkitError(f"target {i}: needs 'labels', an int64 tensor with one per box")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise CnnkitError(f"target {i}: labels must lie in [0, {num_classes}) (0 is the "
                              f"background), got {labels.tolist()}")


def check_degenerate(targets) -> None:
    for i, target in enumerate(targets):
        bad = torch.where((target["boxes"][:, 2:] <= target["boxes"][:, :2]).any(1))[0]
        if bad.numel():
            box = [round(v, 2) for v in target["boxes"][bad[0]].tolist()]
            raise CnnkitError(f"target {i}: every box needs a positive width and height; "
                              f"box {int(bad[0])} is {box}")


def top_candidates(scores: torch.Tensor, score_thresh: float, topk: int, num_classes: int):
    """From (HWA·K,) flattened per-class scores of one level: the `topk` best above
    `score_thresh` as (scores, anchor indices, labels)."""
    keep = torch.where(scores > score_thresh)[0]
    # per level, not per image: the coarse levels keep candidates the fine ones would crowd out
    scores, idxs = scores[keep].topk(min(topk, keep.numel()))
    keep = keep[idxs]
    return scores, torch.div(keep, num_classes, rounding_mode="floor"), keep % num_classes


def merge_detections(boxes, scores, labels, nms_thresh: float, detections_per_img: int) -> dict:
    """Concatenate per-level candidates, NMS within each class, keep the best few."""
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class OneStageDetector(nn.Module):
    """torchvision's forward contract around `self.transform`, `backbone`, `head` and
    `anchor_generator`: train → dict of losses, eval → one {boxes, labels, scores} per image, in
    the input images' pixels. Subclasses give `_losses` and `_detections`."""

    detector = True
    task = "detection"

    def _losses(self, targets, head_outputs, anchors, features) -> dict:
        raise NotImplementedError

    def _detections(self, head_outputs, anchors, image_sizes, features) -> list[dict]:
        raise NotImplementedError

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            check_targets(images, targets, self.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, targets = self.transform(images, targets)
        if targets is not None:  # a zero-width box would give log(0) deltas / NaN IoUs below
            check_degenerate(targets)
        features = self.backbone(images.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        features = list(features.values())
        head_outputs = self.head(features)
        # anchors in the padded batch's pixels, ordered as the heads flatten their outputs
        anchors = self.anchor_generator(images, features)
        if self.training:
            return self._losses(targets, head_outputs, anchors, features)
        detections = self._detections(head_outputs, anchors, images.image_sizes, features)
        return self.transform.postprocess(detections, images.image_sizes, original_sizes)


def split_levels(head_outputs: dict, anchors: list, features: list):
    """Per-level views of the (N, sum HWA, ·) outputs and of each image's anchors."""
    hw = [f.shape[-2] * f.shape[-1] for f in features]
    a = next(iter(head_outputs.values())).shape[1] // sum(hw)  # anchors per location
    sizes = [s * a for s in hw]
    outputs = {k: list(v.split(sizes, dim=1)) for k, v in head_outputs.items()}
    return outputs, [list(x.split(sizes)) for x in anchors]


# --- the model ---

class RetinaNet(OneStageDetector):
    """`backbone` (with `out_channels`) → RetinaNetHead over its feature levels; anchors
    matched with IoU ≥ 0.5 are positives, < 0.4 negatives, in between ignored; low-quality
    matches keep every box its best anchor (torchvision's `allow_low_quality_matches`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, min_size: int = 800,
                 max_size: int = 1333, image_mean=None, image_std=None,
                 anchor_generator: AnchorGenerator | None = None, head: nn.Module | None = None,
                 proposal_matcher=None, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 300, fg_iou_thresh: float = 0.5,
                 bg_iou_thresh: float = 0.4, topk_candidates: int = 1000, **kwargs):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        if anchor_generator is None:
            anchor_generator = _default_anchorgen()
        self.anchor_generator = anchor_generator
        if head is None:
            head = RetinaNetHead(backbone.out_channels,
                                 anchor_generator.num_anchors_per_location()[0], num_classes)
        self.head = head
        if proposal_matcher is None:
            proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh,
                                       allow_low_quality_matches=True)
        self.proposal_matcher = proposal_matcher
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.transform = GeneralizedRCNNTransform(min_size, max_size,
                                                  image_mean or _IMAGENET_MEAN,
                                                  image_std or _IMAGENET_STD, **kwargs)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def compute_loss(self, targets, head_outputs, anchors) -> dict:
        matched_idxs = []
        for anchors_i, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:  # no object: every anchor is background
                matched_idxs.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64,
                                               device=anchors_i.device))
            else:
                matched_idxs.append(self.proposal_matcher(box_iou(target["boxes"], anchors_i)))
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def postprocess_detections(self, head_outputs, anchors, image_shapes) -> list[dict]:
        """Per level: sigmoid scores above `score_thresh`, the top `topk_candidates`, decoded
        and clipped; then per-class NMS over all levels and the `detections_per_img` best."""
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes, scores, labels = [], [], []
            for regression, logits, anchors_l in zip(head_outputs["bbox_regression"],
                                                     head_outputs["cls_logits"], anchors[index]):
                s, idx, lab = top_candidates(torch.sigmoid(logits[index]).flatten(),
                                             self.score_thresh, self.topk_candidates,
                                             logits.shape[-1])
                decoded = self.box_coder.decode_single(regression[index][idx], anchors_l[idx])
                boxes.append(clip_boxes_to_image(decoded, image_shape))
                scores.append(s)
                labels.append(lab)
            detections.append(merge_detections(boxes, scores, labels, self.nms_thresh,
                                               self.detections_per_img))
        return detections

    def _losses(self, targets, head_outputs, anchors, features) -> dict:
        return self.compute_loss(targets, head_outputs, anchors)

    def _detections(self, head_outputs, anchors, image_sizes, features) -> list[dict]:
        outputs, anchors = split_levels(head_outputs, anchors, features)
        return self.postprocess_detections(outputs, anchors, image_sizes)


def _default_anchorgen(base: tuple[int, ...] = (32, 64, 128, 256, 512)) -> AnchorGenerator:
    # three scales per octave, 2^0, 2^(1/3), 2^(2/3), and three aspect ratios (paper §4)
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in base)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def resnet_fpn_p3p7(body_builder: Callable[..., nn.Module], out_channels: int,
                    backbone_norm: str = "bn", trainable_layers: int = 5) -> BackboneWithFPN:
    """ResNet C3–C5 → FPN P3–P5, plus P6/P7 from P5 (torchvision's v1 models use P5, not C5,
    for P6). P2 is skipped: at stride 4 it alone would quadruple the anchors (paper §4).
    Defaults as torchvision builds it without weights: BatchNorm, every layer trainable;
    `backbone_norm="frozen"` and fewer `trainable_layers` are for fine-tuning."""
    body = set_backbone_norm(body_builder(), backbone_norm)
    return _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(out_channels, out_channels),
                                 out_channels=out_channels)


# --- registered variants ---

BIG = {"input_size": (3, 800, 800), "test_input_size": (3, 64, 64)}
SMALL = {"input_size": (3, 128, 128), "test_input_size": (3, 64, 64)}


@register_model(**BIG)
def retinanet_resnet50_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                           trainable_backbone_layers: int = 5, **kwargs) -> RetinaNet:
    """torchvision's `retinanet_resnet50_fpn` (v1; weights=None: BatchNorm, all layers
    trainable)."""
    backbone = resnet_fpn_p3p7(resnet50, 256, backbone_norm, trainable_backbone_layers)
    return RetinaNet(backbone, num_classes, **kwargs)


@register_model(**SMALL)
def retinanet_resnet18_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                           trainable_backbone_layers: int = 5, fpn_channels: int = 128,
                           **kwargs) -> RetinaNet:
    """A CPU-sized RetinaNet (not in torchvision), every default overridable:

    - ResNet-18 body (a cnnkit resnet18 checkpoint loads into `backbone.body`) and a 128-wide
      FPN and heads (torchvision: ResNet-50, 256);
    - anchors 16..256 px on P3..P7 (torchvision: 32..512): small objects in small images;
    - short side resized to 128, long side at most 320 (torchvision: 800 / 1333), as the CPU
      Faster R-CNN: 128-px images keep their size. A training step on 4 such images takes
      0.2 s on two cores (0.34 s on one); at a 320 px short side it is 0.95 s.
    """
    backbone = resnet_fpn_p3p7(resnet18, fpn_channels, backbone_norm, trainable_backbone_layers)
    kwargs = {"min_size": 128, "max_size": 320, **kwargs}
    kwargs.setdefault("anchor_generator", _default_anchorgen((16, 32, 64, 128, 256)))
    return RetinaNet(backbone, num_classes, **kwargs)
