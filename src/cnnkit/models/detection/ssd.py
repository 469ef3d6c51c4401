"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector", https://arxiv.org/abs/1512.02325)
with the SSDLite head and extra layers of MobileNetV2 (Sandler et al. 2018, "MobileNetV2:
Inverted Residuals and Linear Bottlenecks", https://arxiv.org/abs/1801.04381, §6.2) on a
MobileNetV3-Large backbone (Howard et al. 2019, https://arxiv.org/abs/1905.02244, §6.3), in
torchvision's layout (`models/detection/ssd.py`, `ssdlite.py`, `anchor_utils.py`).

Six feature maps — MobileNetV3's C4 taken at the 1×1 expansion of its last stride-2 block (672
channels, 1/16), the backbone's end (480, 1/32) and four extra depthwise-separable stride-2
blocks — each predict, for 6 default boxes per location, softmax class scores (background = 0)
and 4 box deltas, through a depthwise 3×3 + pointwise 1×1 "SSDLite" layer. Default boxes
(`DefaultBoxGenerator`) tile each map with scales spread linearly from 0.2 to 0.95 of the image.

Training matches each default box to the ground-truth box of best IoU ≥ 0.5 (and each ground
truth to its best default box), then takes smooth-L1 on the deltas of the positives and the
cross-entropy of the positives plus the hardest negatives, 3 per positive (hard negative mining,
paper §2.2), both divided by the number of positives.

Registered: `ssdlite320_mobilenet_v3_large` (torchvision's: 3.44M parameters with 91 classes;
without pretrained weights the backbone's last stage is halved, the "reduced tail" of MobileNetV3
Table 6). Images are resized to exactly `size`×`size` (320) and mapped to [-1, 1]; `size=`
builds the same network for a smaller input (e.g. 160 for quick CPU tests).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.models.detection._utils import SSDMatcher
from cnnkit.models.detection.retinanet import OneStageDetector, merge_detections
from cnnkit.models.detection.transform import GeneralizedRCNNTransform
from cnnkit.models.mobilenet import _V3_LARGE, _build_mobilenet_v3
from cnnkit.ops.boxes import BoxCoder, box_iou, clip_boxes_to_image
from cnnkit.utils import CnnkitError

_NAMES = ("0", "1", "2")  # torchvision's Conv2dNormActivation children, for checkpoint keys


# --- default boxes ---

class DefaultBoxGenerator(nn.Module):
    """SSD's default boxes (paper §2.2, "Choosing scales and aspect ratios").

    Map k of m has scale s_k = min_ratio + (max_ratio - min_ratio)·k/(m - 1) of the image; each
    location gets a square box of side s_k, one of side sqrt(s_k·s_{k+1}) (s_m = 1), and for
    every aspect ratio r a pair of boxes s_k·(√r, 1/√r) and its transpose: 2 + 2·len(ratios).
    Centres sit at (i + 0.5)/f_k of the image, f_k the map size (or image/step with `steps`).
    """

    def __init__(self, aspect_ratios: list[list[int]], min_ratio: float = 0.15,
                 max_ratio: float = 0.9, scales: list[float] | None = None,
                 steps: list[int] | None = None, clip: bool = True):
        super().__init__()
        if steps is not None and len(aspect_ratios) != len(steps):
            raise CnnkitError(f"aspect_ratios and steps need one entry per feature map, got "
                              f"{len(aspect_ratios)} and {len(steps)}")
        self.aspect_ratios, self.steps, self.clip = aspect_ratios, steps, clip
        num_outputs = len(aspect_ratios)
        if scales is None:
            if num_outputs > 1:
                span = max_ratio - min_ratio
                scales = [min_ratio + span * k / (num_outputs - 1.0) for k in range(num_outputs)]
                scales.append(1.0)
            else:
                scales = [min_ratio, max_ratio]
        self.scales = scales
        self._wh_pairs = self._generate_wh_pairs(num_outputs)

    def _generate_wh_pairs(self, num_outputs: int) -> list[torch.Tensor]:
        pairs = []
        for k in range(num_outputs):
            s_k, s_prime = self.scales[k], math.sqrt(self.scales[k] * self.scales[k + 1])
            wh = [[s_k, s_k], [s_prime, s_prime]]
            for ar in self.aspect_ratios[k]:
                w, h = s_k * math.sqrt(ar), s_k / math.sqrt(ar)
                wh.extend([[w, h], [h, w]])
            pairs.append(torch.as_tensor(wh, dtype=torch.float32))  # (2 + 2·R, 2) fractions
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _grid_default_boxes(self, grid_sizes, image_size, dtype=torch.float32) -> torch.Tensor:
        """(sum H·W·A, 4) boxes as (cx, cy, w, h) fractions of the image."""
        boxes = []
        for k, (fh, fw) in enumerate(grid_sizes):
            if self.steps is not None:
                y_f, x_f = image_size[0] / self.steps[k], image_size[1] / self.steps[k]
            else:
                y_f, x_f = fh, fw
            shifts_x = ((torch.arange(0, fw) + 0.5) / x_f).to(dtype)
            shifts_y = ((torch.arange(0, fh) + 0.5) / y_f).to(dtype)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            wh = self._wh_pairs[k].to(dtype)
            # every location repeats all A centres, location-major: the heads' (H, W, A) order
            shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * len(wh),
                                 dim=-1).reshape(-1, 2)                 # (H·W·A, 2)
            wh = (wh.clamp(min=0, max=1) if self.clip else wh).repeat(fh * fw, 1)  # (H·W·A, 2)
            boxes.append(torch.cat((shifts, wh), dim=1))
        return torch.cat(boxes, dim=0)

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (sum H·W·A, 4) x1y1x2y2 pixel tensor per image."""
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        image_size = image_list.tensors.shape[-2:]
        boxes = self._grid_default_boxes(grid_sizes, image_size, feature_maps[0].dtype)
        boxes = boxes.to(feature_maps[0].device)
        scale = torch.tensor([image_size[1], image_size[0]], device=boxes.device)
        xyxy = torch.cat([(boxes[:, :2] - 0.5 * boxes[:, 2:]) * scale,
                          (boxes[:, :2] + 0.5 * boxes[:, 2:]) * scale], -1)
        return [xyxy for _ in image_list.image_sizes]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(aspect_ratios={self.aspect_ratios}, "
                f"clip={self.clip}, scales={self.scales}, steps={self.steps})")


# --- heads ---

class SSDScoringHead(nn.Module):
    """One predictor per feature map; outputs concatenated as (N, sum H·W·A, num_columns)."""

    def __init__(self, module_list: nn.ModuleList, num_columns: int):
        super().__init__()
        self.module_list, self.num_columns = module_list, num_columns

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        results = []
        for module, features in zip(self.module_list, x):
            out = module(features)
            n, _, h, w = out.shape
            out = out.view(n, -1, self.num_columns, h, w)  # (N, A, K, H, W)
            out = out.permute(0, 3, 4, 1, 2)              # (N, H, W, A, K)
            results.append(out.reshape(n, -1, self.num_columns))  # (N, H·W·A, K)
        return torch.cat(results, dim=1)


def _normal_init(module: nn.Module) -> None:
    # torchvision's SSDLite init: N(0, 0.03²) convs, zero bias
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=0.03)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _xavier_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _prediction_block(in_channels: int, out_channels: int, kernel_size: int, norm_layer):
    """SSDLite predictor: depthwise 3×3 (BN, ReLU6) → pointwise 1×1 (Sandler et al. §6.2)."""
    return nn.Sequential(
        ConvNormAct(in_channels, in_channels, kernel_size, groups=in_channels, norm=norm_layer,
                    act="relu6", names=_NAMES),
        nn.Conv2d(in_channels, out_channels, 1))


class SSDLiteClassificationHead(SSDScoringHead):
    """Per map, A·K softmax logits from a depthwise-separable predictor."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int,
                 norm_layer):
        cls_logits = nn.ModuleList(_prediction_block(c, num_classes * a, 3, norm_layer)
                                   for c, a in zip(in_channels, num_anchors))
        _normal_init(cls_logits)
        super().__init__(cls_logits, num_classes)


class SSDLiteRegressionHead(SSDScoringHead):
    """Per map, A·4 box deltas from a depthwise-separable predictor."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], norm_layer):
        bbox_reg = nn.ModuleList(_prediction_block(c, 4 * a, 3, norm_layer)
                                 for c, a in zip(in_channels, num_anchors))
        _normal_init(bbox_reg)
        super().__init__(bbox_reg, 4)


class SSDLiteHead(nn.Module):
    """SSDLite's classification and regression predictors over the six maps."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int,
                 norm_layer):
        super().__init__()
        self.classification_head = SSDLiteClassificationHead(in_channels, num_anchors,
                                                             num_classes, norm_layer)
        self.regression_head = SSDLiteRegressionHead(in_channels, num_anchors, norm_layer)

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"bbox_regression": self.regression_head(x),
                "cls_logits": self.classification_head(x)}


class SSDHead(nn.Module):
    """The original SSD's predictors: a plain 3×3 conv per map (Xavier init), as torchvision's
    default when `SSD(head=None)`."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int):
        super().__init__()
        cls = nn.ModuleList(nn.Conv2d(c, num_classes * a, 3, padding=1)
                            for c, a in zip(in_channels, num_anchors))
        reg = nn.ModuleList(nn.Conv2d(c, 4 * a, 3, padding=1)
                            for c, a in zip(in_channels, num_anchors))
        _xavier_init(cls)
        _xavier_init(reg)
        self.classification_head = SSDScoringHead(cls, num_classes)
        self.regression_head = SSDScoringHead(reg, 4)

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"bbox_regression": self.regression_head(x),
                "cls_logits": self.classification_head(x)}


# --- backbone ---

def _extra_block(in_channels: int, out_channels: int, norm_layer) -> nn.Sequential:
    """1×1 to half width → depthwise 3×3 stride 2 → 1×1 to `out_channels`, all BN + ReLU6."""
    mid = out_channels // 2
    return nn.Sequential(
        ConvNormAct(in_channels, mid, 1, norm=norm_layer, act="relu6", names=_NAMES),
        ConvNormAct(mid, mid, 3, stride=2, groups=mid, norm=norm_layer, act="relu6",
                    names=_NAMES),
        ConvNormAct(mid, out_channels, 1, norm=norm_layer, act="relu6", names=_NAMES))


class SSDLiteFeatureExtractorMobileNet(nn.Module):
    """MobileNetV3 `.features` split at C4's expansion conv (MobileNetV3 paper §6.3: SSDLite's
    first layer attaches to the expansion of the last stride-16 block, where that map is
    widest) plus four extra blocks; returns the six maps as a dict '0'..'5'."""

    def __init__(self, backbone: nn.Sequential, c4_pos: int, norm_layer,
                 width_mult: float = 1.0, min_depth: int = 16):
        super().__init__()
        if backbone[c4_pos].use_res_connect:
            raise CnnkitError(f"block {c4_pos} has a skip connection: C4 must be a strided block")
        self.features = nn.Sequential(
            nn.Sequential(*backbone[:c4_pos], backbone[c4_pos].block[0]),  # to C4's expansion
            nn.Sequential(backbone[c4_pos].block[1:], *backbone[c4_pos + 1:]),  # from its dw
        )

        def depth(d):
            return max(min_depth, int(d * width_mult))
        widths = [backbone[-1].out_channels, depth(512), depth(256), depth(256), depth(128)]
        self.extra = nn.ModuleList(_extra_block(widths[i], widths[i + 1], norm_layer)
                                   for i in range(4))
        _normal_init(self.extra)
        self.out_channels = [backbone[c4_pos].block[0].out_channels] + widths

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        output = []
        for block in self.features:
            x = block(x)
            output.append(x)
        for block in self.extra:
            x = block(x)
            output.append(x)
        return {str(i): v for i, v in enumerate(output)}


# --- the model ---

class SSD(OneStageDetector):
    """`backbone` → maps → `head`; default boxes from `anchor_generator`; images resized to
    exactly `size` (H, W). Losses: smooth-L1 on R-CNN deltas (weights 10, 10, 5, 5) and
    cross-entropy with 3:1 hard negative mining (`positive_fraction` 0.25)."""

    def __init__(self, backbone: nn.Module, anchor_generator: DefaultBoxGenerator,
                 size: tuple[int, int], num_classes: int, *, image_mean=None, image_std=None,
                 head: nn.Module | None = None, score_thresh: float = 0.01,
                 nms_thresh: float = 0.45, detections_per_img: int = 200,
                 iou_thresh: float = 0.5, topk_candidates: int = 400,
                 positive_fraction: float = 0.25, **kwargs):
        super().__init__()
        self.backbone, self.anchor_generator = backbone, anchor_generator
        self.num_classes = num_classes
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        if head is None:
            head = SSDHead(backbone.out_channels, anchor_generator.num_anchors_per_location(),
                           num_classes)
        self.head = head
        self.proposal_matcher = SSDMatcher(iou_thresh)
        self.transform = GeneralizedRCNNTransform(
            min(size), max(size), image_mean or [0.485, 0.456, 0.406],
            image_std or [0.229, 0.224, 0.225], size_divisible=1, fixed_size=size, **kwargs)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict:
        num_foreground, bbox_loss, cls_targets = 0, [], []
        for target, regression, anchors_i, matched in zip(
                targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            foreground = torch.where(matched >= 0)[0]
            gt_idx = matched[foreground]
            num_foreground += gt_idx.numel()
            deltas = self.box_coder.encode_single(target["boxes"][gt_idx], anchors_i[foreground])
            bbox_loss.append(F.smooth_l1_loss(regression[foreground], deltas, reduction="sum"))
            classes = torch.zeros(len(matched), dtype=target["labels"].dtype, device=matched.device)
            classes[foreground] = target["labels"][gt_idx]
            cls_targets.append(classes)
        cls_targets = torch.stack(cls_targets)  # (N, sum HWA), 0 = background
        cls_logits = head_outputs["cls_logits"]
        cls_loss = F.cross_entropy(cls_logits.flatten(0, 1), cls_targets.flatten(),
                                   reduction="none").view(cls_targets.shape)  # (N, sum HWA)

        # hard negative mining: per image, the 3·P background boxes of highest loss
        foreground = cls_targets > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)  # (N, 1)
        negative_loss = cls_loss.clone()
        negative_loss[foreground] = -float("inf")  # positives sort last
        order = negative_loss.sort(1, descending=True).indices
        background = order.sort(1).indices < num_negative  # rank of each box < budget
        n = max(1, num_foreground)
        return {"bbox_regression": torch.stack(bbox_loss).sum() / n,
                "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n}

    def postprocess_detections(self, head_outputs, image_anchors, image_shapes) -> list[dict]:
        """Softmax scores; per class (background excluded) those above `score_thresh`, the top
        `topk_candidates`; per-class NMS and the `detections_per_img` best."""
        scores_all = F.softmax(head_outputs["cls_logits"], dim=-1)
        detections = []
        for regression, scores, anchors, image_shape in zip(
                head_outputs["bbox_regression"], scores_all, image_anchors, image_shapes):
            boxes = clip_boxes_to_image(self.box_coder.decode_single(regression, anchors),
                                        image_shape)
            kept_boxes, kept_scores, kept_labels = [], [], []
            for label in range(1, scores.shape[-1]):
                score = scores[:, label]
                keep = torch.where(score > self.score_thresh)[0]
                score, idx = score[keep].topk(min(self.topk_candidates, keep.numel()))
                kept_boxes.append(boxes[keep[idx]])
                kept_scores.append(score)
                kept_labels.append(torch.full_like(idx, label))
            detections.append(merge_detections(kept_boxes, kept_scores, kept_labels,
                                               self.nms_thresh, self.detections_per_img))
        return detections

    def _losses(self, targets, head_outputs, anchors, features) -> dict:
        matched_idxs = []
        for anchors_i, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:  # no object: every default box is background
                matched_idxs.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64,
                                               device=anchors_i.device))
            else:
                matched_idxs.append(self.proposal_matcher(box_iou(target["boxes"], anchors_i)))
        return self.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def _detections(self, head_outputs, anchors, image_sizes, features) -> list[dict]:
        return self.postprocess_detections(head_outputs, anchors, image_sizes)


# --- SSDlite on MobileNetV3-Large ---

def _mobilenet_v3_ssdlite_backbone(norm_layer, width_mult: float = 1.0,
                                   trainable_layers: int = 6) -> SSDLiteFeatureExtractorMobileNet:
    """MobileNetV3-Large with the reduced tail (last stage 160 → 80, 960 → 480 channels),
    N(0, 0.03²) convs, BN eps 1e-3 momentum 0.03, then split at C4. `trainable_layers` counts
    the trainable stages from the top (6 = all, torchvision's default without weights)."""
    reduced = [(cin, k, exp, 80, se, act, s) for cin, k, exp, _, se, act, s in _V3_LARGE[-3:-2]]
    reduced += [(80, k, 480, 80, se, act, s) for _, k, _, _, se, act, s in _V3_LARGE[-2:]]
    mobilenet = _build_mobilenet_v3(_V3_LARGE[:-3] + reduced, 640, 1000, 3,
                                    width_mult=width_mult)
    for m in mobilenet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.03  # torchvision's SSDlite norm; cnnkit's MobileNetV3 uses 0.01
    _normal_init(mobilenet)
    features = mobilenet.features
    # stages start at the stem, at each stride-2 block (torchvision's `_is_cn`) and the last conv
    stages = ([0] + [i for i, b in enumerate(features) if getattr(b, "stage_start", False)]
              + [len(features) - 1])
    if not 0 <= trainable_layers <= len(stages):
        raise CnnkitError(f"trainable_backbone_layers must be in [0, {len(stages)}], "
                          f"got {trainable_layers}")
    freeze_before = len(features) if trainable_layers == 0 else stages[-trainable_layers]
    for block in features[:freeze_before]:
        block.requires_grad_(False)
    return SSDLiteFeatureExtractorMobileNet(features, stages[-2], norm_layer, width_mult)


@register_model(input_size=(3, 320, 320), test_input_size=(3, 64, 64))
def ssdlite320_mobilenet_v3_large(num_classes: int = 91, *, size: int = 320,
                                  width_mult: float = 1.0, trainable_backbone_layers: int = 6,
                                  **kwargs) -> SSD:
    """torchvision's `ssdlite320_mobilenet_v3_large` (weights=None: reduced tail, every layer
    trainable). `size` other than 320 runs the same network on smaller inputs: at 128 a
    training step on 4 images takes 0.11 s on one or two cores (0.35 s at 320)."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = _mobilenet_v3_ssdlite_backbone(norm_layer, width_mult, trainable_backbone_layers)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2,
                                           max_ratio=0.95)
    head = SSDLiteHead(backbone.out_channels, anchor_generator.num_anchors_per_location(),
                       num_classes, norm_layer)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300,
                "topk_candidates": 300,
                # the backbone expects inputs in [-1, 1], not ImageNet-standardised ones
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    return SSD(backbone, anchor_generator, (size, size), num_classes, head=head,
               **{**defaults, **kwargs})
