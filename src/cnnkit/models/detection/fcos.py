"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection",
https://arxiv.org/abs/1904.01355) in torchvision's layout (`models/detection/fcos.py`).

Anchor-free: every location of P3–P7 is a point that, when it falls inside an object, predicts
the distances (l, t, r, b) to that box's four sides, K class logits, and a "centerness" logit
that down-weights points far from the box centre (paper §3.3). torchvision keeps its anchor
machinery by giving each location one square "anchor" whose side is the level's stride
(8, 16, ..., 128): its centre is the point and its size sets the scale range:

* a point is a candidate for a box if it lies inside it and within 1.5·stride of its centre
  ("center sampling", from the FCOS follow-up, https://arxiv.org/abs/2006.09214);
* level l takes boxes whose largest side distance is in (4·s_l, 8·s_l) — 0 below P3, ∞ above
  P7 (the paper's m_i ranges 0, 64, 128, 256, 512, ∞ for strides 8..128);
* a point inside several boxes takes the smallest one.

Losses: focal loss on the classes, GIoU on the decoded boxes, BCE on the centerness, all per
positive point. Scores at test time are sqrt(class probability × centerness).

Registered: `fcos_resnet50_fpn` (torchvision's, 32.3M parameters with 91 classes) and
`fcos_resnet18_fpn`, a CPU-sized variant (ResNet-18, 128-wide FPN, smaller images; its docstring
lists the differences).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.models._registry import register_model
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.retinanet import (_IMAGENET_MEAN, _IMAGENET_STD, BIG, SMALL,
                                               OneStageDetector, _per_location, merge_detections,
                                               resnet_fpn_p3p7, split_levels, top_candidates)
from cnnkit.models.detection.transform import GeneralizedRCNNTransform
from cnnkit.models.resnet import resnet18, resnet50
from cnnkit.ops.boxes import clip_boxes_to_image, generalized_box_iou_loss
from cnnkit.ops.focal_loss import sigmoid_focal_loss
from cnnkit.utils import CnnkitError


class BoxLinearCoder:
    """(l, t, r, b) distances from a reference box's centre to a box's sides, divided by the
    reference box's width/height when `normalize_by_size` (torchvision's `det_utils.BoxLinearCoder`;
    cnnkit's BoxCoder encodes R-CNN log-space deltas instead). Works on (..., 4) tensors."""

    def __init__(self, normalize_by_size: bool = True):
        self.normalize_by_size = normalize_by_size

    @staticmethod
    def _sizes(boxes: torch.Tensor) -> torch.Tensor:
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        return torch.stack((w, h, w, h), dim=-1)  # (..., 4)

    def encode(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        ctr_x = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
        ctr_y = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
        targets = torch.stack((ctr_x - proposals[..., 0], ctr_y - proposals[..., 1],
                               proposals[..., 2] - ctr_x, proposals[..., 3] - ctr_y), dim=-1)
        return targets / self._sizes(reference_boxes) if self.normalize_by_size else targets

    def decode(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes.to(rel_codes.dtype)
        ctr_x = 0.5 * (boxes[..., 0] + boxes[..., 2])
        ctr_y = 0.5 * (boxes[..., 1] + boxes[..., 3])
        if self.normalize_by_size:
            rel_codes = rel_codes * self._sizes(boxes)
        return torch.stack((ctr_x - rel_codes[..., 0], ctr_y - rel_codes[..., 1],
                            ctr_x + rel_codes[..., 2], ctr_y + rel_codes[..., 3]), dim=-1)


def _gn_tower(channels: int, num_convs: int, norm_layer) -> nn.Sequential:
    """num_convs × (3×3 conv → GroupNorm(32) → ReLU), flat as torchvision lays it out (conv.0,
    conv.1, conv.3, ...). GroupNorm, not BatchNorm: the heads see few, variable-size maps."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), norm_layer(channels), nn.ReLU()]
    tower = nn.Sequential(*layers)
    for layer in tower.children():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
    return tower


class FCOSClassificationHead(nn.Module):
    """GN conv tower → A·K logits per location, bias at the 0.01 prior as in RetinaNet."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 prior_probability: float = 0.01, norm_layer=None):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.conv = _gn_tower(in_channels, num_convs, norm_layer or partial(nn.GroupNorm, 32))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias,
                          -math.log((1 - prior_probability) / prior_probability))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_per_location(self.cls_logits(self.conv(f)), self.num_classes)
                          for f in x], dim=1)  # (N, sum HWA, K)


class FCOSRegressionHead(nn.Module):
    """GN conv tower → ReLU'd (l, t, r, b) in stride units and a centerness logit per location
    (centerness on the regression branch, as the paper's later versions and torchvision do)."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4, norm_layer=None):
        super().__init__()
        self.conv = _gn_tower(in_channels, num_convs, norm_layer or partial(nn.GroupNorm, 32))
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.bbox_ctrness = nn.Conv2d(in_channels, num_anchors, 3, padding=1)
        for layer in (self.bbox_reg, self.bbox_ctrness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        regression, ctrness = [], []
        for f in x:
            feature = self.conv(f)
            # distances are non-negative: the point is inside its box
            regression.append(_per_location(F.relu(self.bbox_reg(feature)), 4))  # (N, HWA, 4)
            ctrness.append(_per_location(self.bbox_ctrness(feature), 1))          # (N, HWA, 1)
        return torch.cat(regression, dim=1), torch.cat(ctrness, dim=1)


class FCOSHead(nn.Module):
    """Classification + (regression, centerness) branches, and FCOS's three losses."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4):
        super().__init__()
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.classification_head = FCOSClassificationHead(in_channels, num_anchors, num_classes,
                                                          num_convs)
        self.regression_head = FCOSRegressionHead(in_channels, num_anchors, num_convs)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict:
        gt_classes, gt_boxes = [], []
        for target, matched in zip(targets, matched_idxs):
            if len(target["labels"]) == 0:  # no object: zero placeholders, all background
                classes = target["labels"].new_zeros((len(matched),))
                boxes = target["boxes"].new_zeros((len(matched), 4))
            else:
                classes = target["labels"][matched.clip(min=0)]
                boxes = target["boxes"][matched.clip(min=0)]
            classes[matched < 0] = -1
            gt_classes.append(classes)
            gt_boxes.append(boxes)
        gt_boxes = torch.stack(gt_boxes)      # (N, HWA, 4)
        gt_classes = torch.stack(gt_classes)  # (N, HWA), -1 = background
        anchors = torch.stack(anchors)        # (N, HWA, 4)
        foreground = gt_classes >= 0
        num_foreground = max(1, int(foreground.sum()))

        cls_logits = head_outputs["cls_logits"]
        one_hot = torch.zeros_like(cls_logits)
        one_hot[foreground, gt_classes[foreground]] = 1.0
        loss_cls = sigmoid_focal_loss(cls_logits, one_hot, reduction="sum")

        pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], anchors)
        loss_box = generalized_box_iou_loss(pred_boxes[foreground], gt_boxes[foreground],
                                            reduction="sum")

        # centerness target sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b)), paper eq. 3
        ltrb = self.box_coder.encode(anchors[foreground], gt_boxes[foreground])  # (P, 4)
        left_right, top_bottom = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
        ctrness = torch.sqrt((left_right.min(-1).values / left_right.max(-1).values)
                             * (top_bottom.min(-1).values / top_bottom.max(-1).values))
        pred_ctrness = head_outputs["bbox_ctrness"].squeeze(2)[foreground]
        loss_ctr = F.binary_cross_entropy_with_logits(pred_ctrness, ctrness, reduction="sum")
        return {"classification": loss_cls / num_foreground,
                "bbox_regression": loss_box / num_foreground,
                "bbox_ctrness": loss_ctr / num_foreground}

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        bbox_regression, bbox_ctrness = self.regression_head(x)
        return {"cls_logits": self.classification_head(x), "bbox_regression": bbox_regression,
                "bbox_ctrness": bbox_ctrness}


class FCOS(OneStageDetector):
    """`backbone` (with `out_channels`) → FCOSHead; one anchor per location, sized like the
    level's stride; assignment by center sampling and scale ranges (module docstring)."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, min_size: int = 800,
                 max_size: int = 1333, image_mean=None, image_std=None,
                 anchor_generator: AnchorGenerator | None = None, head: nn.Module | None = None,
                 center_sampling_radius: float = 1.5, score_thresh: float = 0.2,
                 nms_thresh: float = 0.6, detections_per_img: int = 100,
                 topk_candidates: int = 1000, **kwargs):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        if anchor_generator is None:
            sizes = ((8,), (16,), (32,), (64,), (128,))  # the strides of P3..P7
            anchor_generator = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
        if anchor_generator.num_anchors_per_location()[0] != 1:
            raise CnnkitError("FCOS predicts one box per location: its anchor generator must "
                              "give one size and one aspect ratio per level")
        self.anchor_generator = anchor_generator
        if head is None:
            head = FCOSHead(backbone.out_channels, 1, num_classes)
        self.head = head
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.transform = GeneralizedRCNNTransform(min_size, max_size,
                                                  image_mean or _IMAGENET_MEAN,
                                                  image_std or _IMAGENET_STD, **kwargs)
        self.center_sampling_radius = center_sampling_radius
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def _match(self, gt_boxes: torch.Tensor, anchors: torch.Tensor,
               num_anchors_per_level: list[int]) -> torch.Tensor:
        """(HWA,) index of the box each point regresses, -1 for background."""
        gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2          # (M, 2)
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2               # (P, 2)
        sizes = anchors[:, 2] - anchors[:, 0]                         # (P,) the level's stride
        # center sampling: within radius·stride of the box centre (Chebyshev distance)
        match = ((centers[:, None, :] - gt_centers[None]).abs().amax(2)
                 < self.center_sampling_radius * sizes[:, None])     # (P, M)
        x, y = centers[:, None, 0], centers[:, None, 1]               # (P, 1) each
        x0, y0, x1, y1 = gt_boxes[None].unbind(2)                     # (1, M) each
        dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)   # (P, M, 4) l, t, r, b
        match &= dist.amin(2) > 0                                     # inside the box
        lower, upper = sizes * 4, sizes * 8
        lower[:num_anchors_per_level[0]] = 0                          # P3 takes the smallest
        upper[-num_anchors_per_level[-1]:] = float("inf")             # P7 the largest
        reach = dist.amax(2)
        match &= (reach > lower[:, None]) & (reach < upper[:, None])
        # several boxes: the smallest wins (1e8 - area is largest for it)
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        best, matched = (match.float() * (1e8 - areas[None])).max(dim=1)
        matched[best < 1e-5] = -1
        return matched

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level) -> dict:
        matched_idxs = []
        for anchors_i, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched_idxs.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64,
                                               device=anchors_i.device))
            else:
                matched_idxs.append(self._match(target["boxes"], anchors_i,
                                                num_anchors_per_level))
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def postprocess_detections(self, head_outputs, anchors, image_shapes) -> list[dict]:
        """As RetinaNet's, scoring sqrt(sigmoid(class) · sigmoid(centerness)) (paper §3.3)."""
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes, scores, labels = [], [], []
            for regression, logits, ctrness, anchors_l in zip(
                    head_outputs["bbox_regression"], head_outputs["cls_logits"],
                    head_outputs["bbox_ctrness"], anchors[index]):
                probs = torch.sqrt(torch.sigmoid(logits[index]) * torch.sigmoid(ctrness[index]))
                s, idx, lab = top_candidates(probs.flatten(), self.score_thresh,
                                             self.topk_candidates, logits.shape[-1])
                decoded = self.box_coder.decode(regression[index][idx], anchors_l[idx])
                boxes.append(clip_boxes_to_image(decoded, image_shape))
                scores.append(s)
                labels.append(lab)
            detections.append(merge_detections(boxes, scores, labels, self.nms_thresh,
                                               self.detections_per_img))
        return detections

    def _losses(self, targets, head_outputs, anchors, features) -> dict:
        num_anchors_per_level = [f.shape[-2] * f.shape[-1] for f in features]
        return self.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)

    def _detections(self, head_outputs, anchors, image_sizes, features) -> list[dict]:
        outputs, anchors = split_levels(head_outputs, anchors, features)
        return self.postprocess_detections(outputs, anchors, image_sizes)


# --- registered variants ---

@register_model(**BIG)
def fcos_resnet50_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                      trainable_backbone_layers: int = 5, **kwargs) -> FCOS:
    """torchvision's `fcos_resnet50_fpn` (weights=None: BatchNorm, all layers trainable)."""
    backbone = resnet_fpn_p3p7(resnet50, 256, backbone_norm, trainable_backbone_layers)
    return FCOS(backbone, num_classes, **kwargs)


@register_model(**SMALL)
def fcos_resnet18_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                      trainable_backbone_layers: int = 5, fpn_channels: int = 128,
                      **kwargs) -> FCOS:
    """A CPU-sized FCOS (not in torchvision), every default overridable:

    - ResNet-18 body (a cnnkit resnet18 checkpoint loads into `backbone.body`) and a 128-wide
      FPN and heads (torchvision: ResNet-50, 256), GroupNorm(32) in the heads as there;
    - short side resized to 128, long side at most 320 (torchvision: 800 / 1333): 128-px images
      keep their size. A training step on 4 such images takes 0.21 s on two cores (0.34 s on
      one); at a 320 px short side it is 0.95 s.

    The scale ranges stay tied to the strides (8..128), so in a 128-px image most objects land
    on P3/P4.
    """
    backbone = resnet_fpn_p3p7(resnet18, fpn_channels, backbone_norm, trainable_backbone_layers)
    return FCOS(backbone, num_classes, **{"min_size": 128, "max_size": 320, **kwargs})
