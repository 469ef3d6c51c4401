"""Functional ops written from first principles: tensors in, tensors out.

Each is checked against `torch.nn.functional` or a direct reference in float64 (tests/ops,
STYLE.md habit 9).
"""
from cnnkit.ops.conv import conv2d, conv_output_size
from cnnkit.ops.filters import (EDGE_KERNELS, LAPLACIAN, PREWITT_X, PREWITT_Y, SCHARR_X, SCHARR_Y,
                                SOBEL_X, SOBEL_Y, edge_maps)
from cnnkit.ops.pool import avg_pool2d, max_pool2d
from cnnkit.ops.receptive_field import RFRow, format_receptive_fields, receptive_fields
# detection ops, torchvision's names and semantics (ops/boxes.py, ops/roi_align.py, ops/poolers.py)
from cnnkit.ops.boxes import (BoxCoder, batched_nms, box_area, box_convert, box_iou,
                              clip_boxes_to_image, complete_box_iou, complete_box_iou_loss,
                              distance_box_iou, distance_box_iou_loss, generalized_box_iou,
                              generalized_box_iou_loss, nms, remove_small_boxes)
from cnnkit.ops.focal_loss import sigmoid_focal_loss
from cnnkit.ops.poolers import MultiScaleRoIAlign
from cnnkit.ops.roi_align import RoIAlign, RoIPool, roi_align, roi_pool

__all__ = ["conv2d", "conv_output_size", "max_pool2d", "avg_pool2d", "edge_maps", "EDGE_KERNELS",
           "SOBEL_X", "SOBEL_Y", "PREWITT_X", "PREWITT_Y", "SCHARR_X", "SCHARR_Y", "LAPLACIAN",
           "receptive_fields", "format_receptive_fields", "RFRow",
           "box_area", "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou",
           "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
           "box_convert", "clip_boxes_to_image", "remove_small_boxes", "nms", "batched_nms",
           "BoxCoder", "roi_align", "roi_pool", "RoIAlign", "RoIPool", "MultiScaleRoIAlign",
           "sigmoid_focal_loss"]
