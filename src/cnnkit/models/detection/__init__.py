"""Detection models in torchvision's layout (`torchvision.models.detection`).

Shared pieces: `anchors` (AnchorGenerator), `transform` (ImageList, GeneralizedRCNNTransform),
`_utils` (Matcher, BalancedPositiveNegativeSampler), `backbones` (BackboneWithFPN and the ResNet /
MobileNet extractors), `rpn`, `roi_heads`; two-stage detectors in `rcnn`, one-stage ones in
`retinanet`, `fcos` and `ssd`; YOLOv8 in `yolo` (its assigner and loss in `yolo_loss`) and the
original YOLOv1 in `yolov1` (importing this package registers them all).
"""
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.backbones import (BackboneWithFPN, FrozenBatchNorm2d,
                                               mobilenet_backbone, resnet_fpn_backbone)
from cnnkit.models.detection.fcos import FCOS
from cnnkit.models.detection.rcnn import FasterRCNN, GeneralizedRCNN, KeypointRCNN, MaskRCNN
from cnnkit.models.detection.retinanet import RetinaNet
from cnnkit.models.detection.ssd import SSD
from cnnkit.models.detection.transform import GeneralizedRCNNTransform, ImageList
from cnnkit.models.detection.yolo import YOLOv8
from cnnkit.models.detection.yolov1 import YOLOv1

__all__ = ["AnchorGenerator", "BackboneWithFPN", "FrozenBatchNorm2d", "mobilenet_backbone",
           "resnet_fpn_backbone", "GeneralizedRCNNTransform", "ImageList", "GeneralizedRCNN",
           "FasterRCNN", "MaskRCNN", "KeypointRCNN", "RetinaNet", "FCOS", "SSD", "YOLOv8",
           "YOLOv1"]
