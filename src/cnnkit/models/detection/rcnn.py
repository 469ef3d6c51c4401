"""Two-stage detectors: Faster R-CNN, Mask R-CNN and Keypoint R-CNN, in torchvision's layout
(`models/detection/generalized_rcnn.py`, `faster_rcnn.py`, `mask_rcnn.py`, `keypoint_rcnn.py`).

- Faster R-CNN: Ren et al. 2015, https://arxiv.org/abs/1506.01497, with an FPN backbone
  (Lin et al. 2017, https://arxiv.org/abs/1612.03144); v2: Li et al. 2021,
  https://arxiv.org/abs/2111.11429 (BatchNorm in the FPN and box head, a 2-conv RPN head).
- Mask R-CNN / Keypoint R-CNN: He et al. 2017, https://arxiv.org/abs/1703.06870.

Contract (torchvision's): `model.train(); losses = model(images, targets)` with images a list of
(3, H, W) floats in 0..1 and targets dicts {boxes (N, 4) xyxy pixels, labels (N,) int64 with 0 the
background, [masks (N, H, W) uint8], [keypoints (N, K, 3)]} → a dict of losses to sum;
`model.eval(); model(images)` → one dict per image {boxes, labels, scores, [masks (N, 1, H, W)
probabilities], [keypoints (N, K, 3), keypoints_scores (N, K)]} in the original pixels.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnkit.models._registry import register_model
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.backbones import (_mobilenet_extractor, _resnet_fpn_extractor,
                                               set_backbone_norm)
from cnnkit.models.detection.roi_heads import (FastRCNNConvFCHead, FastRCNNPredictor,
                                               KeypointRCNNHeads, KeypointRCNNPredictor,
                                               MaskRCNNHeads, MaskRCNNPredictor, RoIHeads,
                                               TwoMLPHead)
from cnnkit.models.detection.rpn import RegionProposalNetwork, RPNHead
from cnnkit.models.detection.transform import GeneralizedRCNNTransform
from cnnkit.models.mobilenet import mobilenet_v3_large
from cnnkit.models.resnet import resnet18, resnet50
from cnnkit.ops.poolers import MultiScaleRoIAlign
from cnnkit.utils import CnnkitError

__all__ = ["GeneralizedRCNN", "FasterRCNN", "MaskRCNN", "KeypointRCNN"]

_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_FPN_LEVELS = ["0", "1", "2", "3"]  # P2..P5 pool the RoIs; "pool" (P6) only feeds the RPN


class GeneralizedRCNN(nn.Module):
    """transform → backbone → RPN → RoI heads → transform.postprocess."""

    detector = True

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 transform: GeneralizedRCNNTransform):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            _check_targets(images, targets)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, targets = self.transform(images, targets)
        if targets is not None:
            for i, target in enumerate(targets):
                degenerate = target["boxes"][:, 2:] <= target["boxes"][:, :2]
                if degenerate.any():
                    bad = target["boxes"][torch.where(degenerate.any(dim=1))[0][0]].tolist()
                    raise CnnkitError(f"target {i} has a box of non-positive width or height "
                                      f"{[round(v, 2) for v in bad]}")
        features = self.backbone(images.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, proposal_losses = self.rpn(images, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, images.image_sizes,
                                                      targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return self.transform.postprocess(detections, images.image_sizes, original_image_sizes)


def _check_targets(images, targets) -> None:
    if targets is None:
        raise CnnkitError("in training mode the detector needs targets: model(images, targets)")
    if len(targets) != len(images):
        raise CnnkitError(f"got {len(images)} images but {len(targets)} targets")
    for i, target in enumerate(targets):
        boxes = target.get("boxes")
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise CnnkitError(f"target {i}: boxes must be a (N, 4) tensor, got {shape}")


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN with torchvision's keywords and defaults (`min_size`, `rpn_*`, `box_*`, ...).

    The backbone must have `out_channels`. Default anchors: one size per level 32..512, ratios
    0.5, 1, 2; default heads: RPNHead, RoIAlign 7×7 → TwoMLPHead(1024) → FastRCNNPredictor.
    `representation_size` (not in torchvision, which fixes 1024) sets the default head's width.
    Further keywords go to GeneralizedRCNNTransform (`size_divisible`, `fixed_size`).
    """

    task = "detection"

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *,
                 min_size=800, max_size: int = 1333, image_mean=None, image_std=None,
                 rpn_anchor_generator=None, rpn_head=None, rpn_pre_nms_top_n_train: int = 2000,
                 rpn_pre_nms_top_n_test: int = 1000, rpn_post_nms_top_n_train: int = 2000,
                 rpn_post_nms_top_n_test: int = 1000, rpn_nms_thresh: float = 0.7,
                 rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_score_thresh: float = 0.0, box_roi_pool=None, box_head=None,
                 box_predictor=None, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5,
                 box_detections_per_img: int = 100, box_fg_iou_thresh: float = 0.5,
                 box_bg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
                 box_positive_fraction: float = 0.25, bbox_reg_weights=None,
                 representation_size: int = 1024, **kwargs):
        if not hasattr(backbone, "out_channels"):
            raise CnnkitError("the backbone needs an `out_channels` attribute (its maps' width)")
        if (num_classes is None) == (box_predictor is None):
            raise CnnkitError("give exactly one of num_classes and box_predictor")
        out_channels = backbone.out_channels
        # `is None` tests throughout: a Sequential with no children would be falsy
        anchor_gen = rpn_anchor_generator
        if anchor_gen is None:
            anchor_gen = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)),
                                         ((0.5, 1.0, 2.0),) * 5)
        if rpn_head is None:
            rpn_head = RPNHead(out_channels, anchor_gen.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            anchor_gen, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh, score_thresh=rpn_score_thresh)
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(_FPN_LEVELS, 7, sampling_ratio=2)
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(out_channels * resolution ** 2, representation_size)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(representation_size, num_classes)
        roi_heads = RoIHeads(box_roi_pool, box_head, box_predictor, box_fg_iou_thresh,
                             box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction,
                             bbox_reg_weights, box_score_thresh, box_nms_thresh,
                             box_detections_per_img)
        transform = GeneralizedRCNNTransform(min_size, max_size, image_mean or _IMAGENET_MEAN,
                                             image_std or _IMAGENET_STD, **kwargs)
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = box_predictor.cls_score.out_features


class MaskRCNN(FasterRCNN):
    """Faster R-CNN + a mask branch: RoIAlign 14×14 → MaskRCNNHeads (one 3×3 conv per entry of
    `mask_layers`, a cnnkit keyword; torchvision's four of 256) → MaskRCNNPredictor (deconv to
    28×28, one mask per class).

    `exact_masks` (a cnnkit keyword, default off as in torchvision): mask targets sampled at
    pixel centres and masks pasted back through the box's continuous coordinates, as Detectron2
    does (`mask_keypoint_heads.paste_masks_in_image`); torchvision's half-pixel offsets cost
    little on large objects but cap a thin stroke's mask IoU near 0.7.

    `mask_rois_per_image` (a cnnkit keyword; None: every positive RoI, as in torchvision): in
    training, the mask branch sees a uniform random subset of at most this many of each image's
    positive RoIs. The mask loss is a mean over positives, so the subset leaves its expectation
    unchanged; with a few objects per image the positives are near-copies of one another, and the
    mask head is then the most expensive part of a training step.

    `mask_scoring` (a cnnkit keyword): "class" (torchvision) ranks masks by the detection's class
    score; "maskness" adds `mask_scores` = class score × the mask's mean foreground probability
    (SOLOv2's maskness), which the segm evaluation ranks by — a sure class with a doubtful mask
    then comes after a sure mask (the idea of Mask Scoring R-CNN, Huang et al. 2019, without its
    learned MaskIoU head). Boxes keep the class score."""

    task = "instance-segmentation"

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *,
                 mask_roi_pool=None, mask_head=None, mask_predictor=None,
                 mask_layers=(256, 256, 256, 256), exact_masks: bool = False,
                 mask_rois_per_image: int | None = None, mask_scoring: str = "class",
                 **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        if mask_scoring not in ("class", "maskness"):
            raise ValueError(f"mask_scoring must be 'class' or 'maskness', got '{mask_scoring}'")
        if mask_rois_per_image is not None and mask_rois_per_image < 1:
            raise ValueError(f"mask_rois_per_image must be ≥ 1 (or None: all), got "
                             f"{mask_rois_per_image}")
        self.roi_heads.exact_masks = self.transform.exact_masks = exact_masks
        self.roi_heads.mask_rois_per_image = mask_rois_per_image
        self.roi_heads.mask_scoring = mask_scoring
        num_classes = self.num_classes
        mask_dim = mask_layers[-1]
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(_FPN_LEVELS, 14, sampling_ratio=2)
        if mask_head is None:
            mask_head = MaskRCNNHeads(backbone.out_channels, mask_layers, 1)
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(mask_dim, mask_dim, num_classes)
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor


class KeypointRCNN(FasterRCNN):
    """Faster R-CNN + a keypoint branch: RoIAlign 14×14 → KeypointRCNNHeads (`keypoint_layers`,
    a cnnkit keyword; torchvision's 8 convs of 512) → KeypointRCNNPredictor (one 56×56 heatmap
    per keypoint). Training resizes the short side to one of `min_size` (640..800) at random."""

    task = "keypoints"

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *,
                 min_size=(640, 672, 704, 736, 768, 800), keypoint_roi_pool=None,
                 keypoint_head=None, keypoint_predictor=None, num_keypoints: int | None = None,
                 keypoint_layers=(512,) * 8, **kwargs):
        if keypoint_predictor is not None and num_keypoints is not None:
            raise CnnkitError("give num_keypoints or keypoint_predictor, not both")
        super().__init__(backbone, num_classes, min_size=min_size, **kwargs)
        if keypoint_roi_pool is None:
            keypoint_roi_pool = MultiScaleRoIAlign(_FPN_LEVELS, 14, sampling_ratio=2)
        if keypoint_head is None:
            keypoint_head = KeypointRCNNHeads(backbone.out_channels, keypoint_layers)
        if keypoint_predictor is None:
            keypoint_predictor = KeypointRCNNPredictor(keypoint_layers[-1], num_keypoints or 17)
        self.roi_heads.keypoint_roi_pool = keypoint_roi_pool
        self.roi_heads.keypoint_head = keypoint_head
        self.roi_heads.keypoint_predictor = keypoint_predictor
        self.num_keypoints = keypoint_predictor.out_channels


# --- builders ---

def _resnet_fpn(builder, backbone_norm: str, trainable_layers: int, *, fpn_norm=None,
                out_channels: int = 256):
    # the classifier's fc is built and then dropped by IntermediateLayerGetter, as torchvision
    body = set_backbone_norm(builder(), backbone_norm)
    return _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm,
                                 out_channels=out_channels)


def _small_kwargs(kwargs: dict) -> dict:
    """The CPU variants' defaults (see `fasterrcnn_resnet18_fpn`), under the caller's keywords."""
    # one octave below torchvision's anchors: P2 (stride 4) then starts at 16-px objects
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    defaults = dict(min_size=128, max_size=320, rpn_anchor_generator=anchors,
                    rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=500,
                    rpn_post_nms_top_n_train=500, rpn_post_nms_top_n_test=300,
                    rpn_batch_size_per_image=128, box_batch_size_per_image=128,
                    representation_size=256)
    return {**defaults, **kwargs}


_BIG = dict(input_size=(3, 800, 800), test_input_size=(3, 64, 64))
_SMALL = dict(input_size=(3, 128, 128), test_input_size=(3, 64, 64))


@register_model(**_BIG)
def fasterrcnn_resnet50_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                            trainable_backbone_layers: int = 5, **kwargs) -> FasterRCNN:
    """torchvision's `fasterrcnn_resnet50_fpn` (weights=None: BatchNorm, all layers trainable);
    backbone_norm="frozen" freezes the backbone's BatchNorm for fine-tuning."""
    backbone = _resnet_fpn(resnet50, backbone_norm, trainable_backbone_layers)
    return FasterRCNN(backbone, num_classes, **kwargs)


@register_model(**_BIG)
def fasterrcnn_resnet50_fpn_v2(num_classes: int = 91, *, backbone_norm: str = "bn",
                               trainable_backbone_layers: int = 5, **kwargs) -> FasterRCNN:
    """torchvision's v2: BatchNorm FPN, 2-conv RPN head, 4conv1fc box head with BatchNorm."""
    # normalisation in the neck and heads, as Li et al.'s recipe (SyncBN there); the backbone
    # is the same ResNet-50 as v1
    backbone = _resnet_fpn(resnet50, backbone_norm, trainable_backbone_layers,
                           fpn_norm=nn.BatchNorm2d)
    rpn_head = RPNHead(backbone.out_channels, 3, conv_depth=2)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024],
                                  norm_layer=nn.BatchNorm2d)
    return FasterRCNN(backbone, num_classes, rpn_head=rpn_head, box_head=box_head, **kwargs)


@register_model(**_BIG)
def fasterrcnn_mobilenet_v3_large_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                                      trainable_backbone_layers: int = 6,
                                      **kwargs) -> FasterRCNN:
    """torchvision's MobileNetV3-Large FPN: the two stride-32 stages + P6, each level with the
    anchors 32..512 at 3 ratios (15 per position); RPN proposals scoring under 0.05 dropped."""
    body = set_backbone_norm(mobilenet_v3_large(), backbone_norm)
    backbone = _mobilenet_extractor(body, True, trainable_backbone_layers)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return FasterRCNN(backbone, num_classes, rpn_anchor_generator=anchors,
                      **{"rpn_score_thresh": 0.05, **kwargs})


@register_model(**_BIG)
def maskrcnn_resnet50_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                          trainable_backbone_layers: int = 5, **kwargs) -> MaskRCNN:
    """torchvision's `maskrcnn_resnet50_fpn` (weights=None)."""
    backbone = _resnet_fpn(resnet50, backbone_norm, trainable_backbone_layers)
    return MaskRCNN(backbone, num_classes, **kwargs)


@register_model(**_BIG)
def keypointrcnn_resnet50_fpn(num_classes: int = 2, *, num_keypoints: int = 17,
                              backbone_norm: str = "bn", trainable_backbone_layers: int = 5,
                              **kwargs) -> KeypointRCNN:
    """torchvision's `keypointrcnn_resnet50_fpn` (weights=None): person + background, 17 COCO
    keypoints."""
    backbone = _resnet_fpn(resnet50, backbone_norm, trainable_backbone_layers)
    return KeypointRCNN(backbone, num_classes, num_keypoints=num_keypoints, **kwargs)


@register_model(**_SMALL)
def fasterrcnn_resnet18_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                            trainable_backbone_layers: int = 5, fpn_channels: int = 128,
                            **kwargs) -> FasterRCNN:
    """A CPU-sized Faster R-CNN (not in torchvision), every default overridable:

    - ResNet-18 body, its classification names under `backbone.body` (a cnnkit resnet18
      checkpoint loads there), and a 128-wide FPN (torchvision: 256);
    - anchors 16..256 on P2..P6 (torchvision: 32..512): small objects in small images;
    - short side resized to 128, long side at most 320 (torchvision: 800 / 1333): 128-px images
      keep their size; at 320 a training step costs 4× (measured 2.1 s vs 0.55 s, one core);
    - fewer proposals (1000 → 500 per image in training, 500 → 300 at test), 128 sampled anchors
      and 128 sampled RoIs per image (torchvision: 256 and 512);
    - a two-fc box head 256 wide (torchvision: 1024), 6272 → 256 instead of 12544 → 1024.
    """
    backbone = _resnet_fpn(resnet18, backbone_norm, trainable_backbone_layers,
                           out_channels=fpn_channels)
    return FasterRCNN(backbone, num_classes, **_small_kwargs(kwargs))


@register_model(**_SMALL)
def maskrcnn_resnet18_fpn(num_classes: int = 91, *, backbone_norm: str = "bn",
                          trainable_backbone_layers: int = 5, fpn_channels: int = 128,
                          **kwargs) -> MaskRCNN:
    """`fasterrcnn_resnet18_fpn` + a mask branch of 4 convs as wide as the FPN, 128
    (torchvision's: 256 on a 256-wide FPN). On mnist-det, at bf16 on an AVX512-BF16 CPU, 128
    wide costs +26% per training step over 64 wide and 256 wide +62%; in a 30-minute budget
    128 scored the best mask AP (0.640 in 5 epochs against 0.624 in 6 at 64 wide).
    Masks are exact (`MaskRCNN`'s `exact_masks`): its objects are small; and ranked by their
    maskness (`mask_scoring`; mnist-det test mask AP 0.650 → 0.68, docs/benchmarks.md).
    """
    backbone = _resnet_fpn(resnet18, backbone_norm, trainable_backbone_layers,
                           out_channels=fpn_channels)
    kwargs = {"mask_layers": (fpn_channels,) * 4, "exact_masks": True,
              "mask_scoring": "maskness", **kwargs}
    return MaskRCNN(backbone, num_classes, **_small_kwargs(kwargs))


@register_model(**_SMALL)
def keypointrcnn_resnet18_fpn(num_classes: int = 2, *, num_keypoints: int = 17,
                              backbone_norm: str = "bn", trainable_backbone_layers: int = 5,
                              fpn_channels: int = 128, **kwargs) -> KeypointRCNN:
    """`fasterrcnn_resnet18_fpn` + a keypoint branch of 4 convs 128 wide (torchvision's: 8 of
    512; locating 17 points needs more width than a mask), and a single training size instead of
    torchvision's random short side."""
    backbone = _resnet_fpn(resnet18, backbone_norm, trainable_backbone_layers,
                           out_channels=fpn_channels)
    kwargs = {"keypoint_layers": (fpn_channels,) * 4, **kwargs}
    return KeypointRCNN(backbone, num_classes, num_keypoints=num_keypoints,
                        **_small_kwargs(kwargs))
