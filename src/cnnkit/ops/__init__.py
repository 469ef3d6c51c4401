"""Functional ops written from first principles: tensors in, tensors out.

Each is checked against `torch.nn.functional` in float64 (tests/ops, STYLE.md habit 9).
"""
from cnnkit.ops.conv import conv2d, conv_output_size
from cnnkit.ops.filters import (EDGE_KERNELS, LAPLACIAN, PREWITT_X, PREWITT_Y, SCHARR_X, SCHARR_Y,
                                SOBEL_X, SOBEL_Y, edge_maps)
from cnnkit.ops.pool import avg_pool2d, max_pool2d
from cnnkit.ops.receptive_field import RFRow, format_receptive_fields, receptive_fields

__all__ = ["conv2d", "conv_output_size", "max_pool2d", "avg_pool2d", "edge_maps", "EDGE_KERNELS",
           "SOBEL_X", "SOBEL_Y", "PREWITT_X", "PREWITT_Y", "SCHARR_X", "SCHARR_Y", "LAPLACIAN",
           "receptive_fields", "format_receptive_fields", "RFRow"]
