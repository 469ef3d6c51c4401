"""Mask and keypoint branches of the RoI heads (torchvision `models/detection/roi_heads.py`,
`mask_rcnn.py`, `keypoint_rcnn.py`), with torchvision's module names.

* Mask R-CNN (He et al. 2017, https://arxiv.org/abs/1703.06870): per positive RoI a 28×28 mask
  per class from 14×14 pooled features; the loss is a per-pixel sigmoid cross-entropy on the
  ground-truth class's mask only (§3, "decouples mask and class prediction").
* Keypoint R-CNN (same paper, §5): one 56×56 heatmap per keypoint, trained as a softmax over the
  H·W positions against the one-hot location of the annotated keypoint.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv_norm_act import ConvNormAct
from cnnkit.layers.init import init_cnn_
from cnnkit.ops.roi_align import roi_align
from cnnkit.utils import CnnkitError

__all__ = ["MaskRCNNHeads", "MaskRCNNPredictor", "KeypointRCNNHeads", "KeypointRCNNPredictor",
           "maskrcnn_loss", "maskrcnn_inference", "paste_masks_in_image", "keypointrcnn_loss",
           "keypointrcnn_inference", "heatmaps_to_keypoints", "keypoints_to_heatmap"]

_TV_NAMES = ("0", "1", "2")


# --- modules ---

class MaskRCNNHeads(nn.Sequential):
    """`len(layers)` 3×3 conv → [norm] → ReLU blocks on the pooled RoI features (the paper's
    4-conv "FCN" mask head, Fig. 4 right)."""

    def __init__(self, in_channels: int, layers, dilation: int, norm_layer=None):
        blocks, prev = [], in_channels
        for width in layers:
            blocks.append(ConvNormAct(prev, width, 3, padding=dilation, dilation=dilation,
                                      norm=norm_layer, act="relu", names=_TV_NAMES))
            prev = width
        super().__init__(*blocks)
        init_cnn_(self)  # He-normal convs, zero bias, as torchvision


class MaskRCNNPredictor(nn.Sequential):
    """2×2 stride-2 deconv (14 → 28) → ReLU → 1×1 conv to one mask logit map per class."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
        ]))
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


class KeypointRCNNHeads(nn.Sequential):
    """`len(layers)` plain 3×3 conv → ReLU pairs (indices 0, 2, 4, ... hold the convs)."""

    def __init__(self, in_channels: int, layers):
        blocks, prev = [], in_channels
        for width in layers:
            blocks += [nn.Conv2d(prev, width, 3, stride=1, padding=1), nn.ReLU(inplace=True)]
            prev = width
        super().__init__(*blocks)
        init_cnn_(self)


class KeypointRCNNPredictor(nn.Module):
    """4×4 stride-2 deconv to one heatmap per keypoint, then ×2 bilinear: 14 → 28 → 56."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        deconv_kernel = 4
        self.kps_score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, deconv_kernel,
                                                   stride=2, padding=deconv_kernel // 2 - 1)
        nn.init.kaiming_normal_(self.kps_score_lowres.weight, mode="fan_out",
                                nonlinearity="relu")
        nn.init.constant_(self.kps_score_lowres.bias, 0)
        self.up_scale = 2
        self.out_channels = num_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.kps_score_lowres(x)
        return F.interpolate(x, scale_factor=float(self.up_scale), mode="bilinear",
                             align_corners=False, recompute_scale_factor=False)


# --- masks ---

def project_masks_on_boxes(gt_masks: torch.Tensor, boxes: torch.Tensor,
                           matched_idxs: torch.Tensor, M: int, exact: bool = False
                           ) -> torch.Tensor:
    """(K, M, M) targets: each proposal's matched ground-truth mask, RoIAligned to its box.

    torchvision samples with `aligned=False`, half a pixel off the box; `exact` samples pixel
    centres (`aligned=True`, Detectron2's `BitMasks.crop_and_resize`), the grid that
    `paste_masks_in_image(exact=True)` inverts."""
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)  # (K, 5)
    return roi_align(gt_masks[:, None].to(rois), rois, (M, M), 1.0, aligned=exact)[:, 0]


def maskrcnn_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor],
                  gt_masks: list[torch.Tensor], gt_labels: list[torch.Tensor],
                  mask_matched_idxs: list[torch.Tensor], exact: bool = False) -> torch.Tensor:
    """Mean per-pixel binary cross-entropy of the ground-truth class's mask logits."""
    m = mask_logits.shape[-1]
    labels = torch.cat([lab[idxs] for lab, idxs in zip(gt_labels, mask_matched_idxs)])
    targets = torch.cat([project_masks_on_boxes(gm, p, i, m, exact)
                         for gm, p, i in zip(gt_masks, proposals, mask_matched_idxs)])
    if targets.numel() == 0:  # no positive RoI: a zero that still reaches every parameter
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]  # (K, M, M)
    return F.binary_cross_entropy_with_logits(picked, targets)


def maskrcnn_inference(x: torch.Tensor, labels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per image (Ni, 1, M, M) probabilities of each detection's predicted class."""
    mask_prob = x.sigmoid()
    boxes_per_image = [lab.shape[0] for lab in labels]
    labels = torch.cat(labels)
    index = torch.arange(x.shape[0], device=labels.device)
    return mask_prob[index, labels][:, None].split(boxes_per_image, dim=0)


def maskness(mask_prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, 1, M, M) probabilities → (N,) mean probability over each mask's foreground pixels
    (those above `threshold`), SOLOv2's "maskness" (Wang et al. 2020, §3.3.3,
    https://arxiv.org/abs/2003.10152); 0 for an empty mask. How sure the mask head is of the
    mask it draws — the class score says nothing about that."""
    foreground = (mask_prob > threshold).to(mask_prob.dtype)
    area = foreground.flatten(1).sum(1)
    return (mask_prob * foreground).flatten(1).sum(1) / area.clamp(min=1)


def expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale (N, 4) boxes about their centres."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def paste_mask_in_image(mask: torch.Tensor, box: list[int], im_h: int, im_w: int) -> torch.Tensor:
    """One (M, M) mask resized to its integer box (inclusive corners, as Detectron: +1) and
    written into an (im_h, im_w) canvas of zeros, cut where the box leaves the image."""
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    mask = F.interpolate(mask.expand((1, 1, -1, -1)), size=(h, w), mode="bilinear",
                         align_corners=False)[0, 0]
    im_mask = torch.zeros((im_h, im_w), dtype=mask.dtype, device=mask.device)
    cx0, cx1 = max(x0, 0), min(x1 + 1, im_w)
    cy0, cy1 = max(y0, 0), min(y1 + 1, im_h)
    if cx1 > cx0 and cy1 > cy0:
        im_mask[cy0:cy1, cx0:cx1] = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return im_mask


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, img_shape,
                         padding: int = 1, exact: bool = False) -> torch.Tensor:
    """(N, 1, H, W) full-image masks from (N, 1, M, M) box-relative ones.

    torchvision's way (default): each mask gets a `padding`-pixel zero border and its box grows
    by the same factor, so the bilinear resize fades to 0 at the box edge (Detectron's
    `expand_masks`); the box is then cut to whole pixels and resized with +1 (inclusive
    corners). `exact`: every image pixel centre is mapped into the box's continuous
    coordinates and sampled bilinearly, zero outside (Detectron2's `_do_paste_mask`). On
    mnist-det's 2–4 px strokes, projecting the true masks (`project_masks_on_boxes`) and pasting
    them back keeps a mean IoU of 0.70 the torchvision way and 0.999 exactly (measured).
    """
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    if masks.shape[0] == 0:
        return masks.new_empty((0, 1, im_h, im_w))
    if exact:
        return _paste_exact(masks, boxes, im_h, im_w)
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    masks = F.pad(masks, (padding,) * 4)                              # (N, 1, M+2p, M+2p)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()  # truncated toward 0
    return torch.stack([paste_mask_in_image(mk[0], b, im_h, im_w)
                        for mk, b in zip(masks, boxes)])[:, None]


def _paste_exact(masks: torch.Tensor, boxes: torch.Tensor, im_h: int, im_w: int
                 ) -> torch.Tensor:
    """grid_sample of each (1, M, M) mask at the image's pixel centres, in [-1, 1] box units."""
    x0, y0, x1, y1 = boxes.to(torch.float32).split(1, dim=1)               # (N, 1) each
    ys = torch.arange(im_h, dtype=torch.float32, device=boxes.device) + 0.5
    xs = torch.arange(im_w, dtype=torch.float32, device=boxes.device) + 0.5
    gy = (ys[None] - y0) / (y1 - y0).clamp(min=1e-6) * 2 - 1                # (N, H)
    gx = (xs[None] - x0) / (x1 - x0).clamp(min=1e-6) * 2 - 1                # (N, W)
    grid = torch.stack([gx[:, None, :].expand(-1, im_h, -1),
                        gy[:, :, None].expand(-1, -1, im_w)], dim=3)         # (N, H, W, 2)
    return F.grid_sample(masks.to(torch.float32), grid, align_corners=False).to(masks.dtype)


# --- keypoints ---

def keypoints_to_heatmap(keypoints: torch.Tensor, rois: torch.Tensor, heatmap_size: int):
    """(K, J) flat heatmap index of each keypoint in its RoI's grid, and (K, J) validity: visible
    and inside the RoI. A keypoint on the far edge is put in the last cell."""
    offset_x, offset_y = rois[:, 0:1], rois[:, 1:2]
    scale_x = heatmap_size / (rois[:, 2] - rois[:, 0])[:, None]
    scale_y = heatmap_size / (rois[:, 3] - rois[:, 1])[:, None]
    x, y = keypoints[..., 0], keypoints[..., 1]
    x_boundary = x == rois[:, 2][:, None]
    y_boundary = y == rois[:, 3][:, None]
    x = ((x - offset_x) * scale_x).floor().long()
    y = ((y - offset_y) * scale_y).floor().long()
    x[x_boundary] = heatmap_size - 1
    y[y_boundary] = heatmap_size - 1
    valid_loc = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size)
    valid = (valid_loc & (keypoints[..., 2] > 0)).long()
    return (y * heatmap_size + x) * valid, valid


def keypointrcnn_loss(keypoint_logits: torch.Tensor, proposals: list[torch.Tensor],
                      gt_keypoints: list[torch.Tensor],
                      keypoint_matched_idxs: list[torch.Tensor]) -> torch.Tensor:
    """Softmax cross-entropy over the H·W heatmap cells, averaged over the valid keypoints."""
    n, k, h, w = keypoint_logits.shape
    if h != w:
        raise CnnkitError(f"keypoint heatmaps must be square, got {h}×{w}")
    heatmaps, valid = [], []
    for props, gt_kp, midx in zip(proposals, gt_keypoints, keypoint_matched_idxs):
        hm, vl = keypoints_to_heatmap(gt_kp[midx], props, h)
        heatmaps.append(hm.view(-1))
        valid.append(vl.view(-1))
    targets = torch.cat(heatmaps)
    valid = torch.where(torch.cat(valid) > 0)[0]
    if targets.numel() == 0 or valid.numel() == 0:  # nothing to learn from: a zero, not NaN
        return keypoint_logits.sum() * 0
    logits = keypoint_logits.view(n * k, h * w)
    return F.cross_entropy(logits[valid], targets[valid])


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor):
    """(R, J, 3) keypoints (x, y, 1) in image pixels and (R, J) scores from (R, J, S, S) heatmaps.

    Each heatmap is resized bicubically to its RoI's size in whole pixels (ceil), the argmax cell
    found, and its centre mapped back into the RoI (Detectron's `heatmaps_to_keypoints`); the score
    is the resized heatmap's value there.
    """
    offset_x, offset_y = rois[:, 0], rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    num_keypoints = maps.shape[1]
    xy_preds = torch.zeros((len(rois), 3, num_keypoints), dtype=torch.float32, device=maps.device)
    end_scores = torch.zeros((len(rois), num_keypoints), dtype=torch.float32, device=maps.device)
    kp_index = torch.arange(num_keypoints, device=maps.device)
    for i in range(len(rois)):
        roi_w, roi_h = int(widths_ceil[i].item()), int(heights_ceil[i].item())
        roi_map = F.interpolate(maps[i][:, None], size=(roi_h, roi_w), mode="bicubic",
                                align_corners=False)[:, 0]            # (J, roi_h, roi_w)
        pos = roi_map.reshape(num_keypoints, -1).argmax(dim=1)        # (J,) flat index
        x_int = pos % roi_w
        y_int = torch.div(pos - x_int, roi_w, rounding_mode="floor")
        # cell centres; the corrections undo the ceil of a fractional RoI size
        xy_preds[i, 0] = (x_int.float() + 0.5) * (widths[i] / roi_w) + offset_x[i]
        xy_preds[i, 1] = (y_int.float() + 0.5) * (heights[i] / roi_h) + offset_y[i]
        xy_preds[i, 2] = 1
        end_scores[i] = roi_map[kp_index, y_int, x_int]
    return xy_preds.permute(0, 2, 1), end_scores


def keypointrcnn_inference(x: torch.Tensor, boxes: list[torch.Tensor]):
    """Per image: (Ni, J, 3) keypoints and (Ni, J) scores."""
    kp_probs, kp_scores = [], []
    for xx, bb in zip(x.split([b.size(0) for b in boxes], dim=0), boxes):
        kp, scores = heatmaps_to_keypoints(xx, bb)
        kp_probs.append(kp)
        kp_scores.append(scores)
    return kp_probs, kp_scores
