"""Region Proposal Network (Ren et al. 2015, Faster R-CNN §3.1, https://arxiv.org/abs/1506.01497),
as torchvision `models/detection/rpn.py`.

A small conv head slides over every FPN level and scores each anchor as object / not object and
regresses its box. Proposals: the top `pre_nms_top_n` anchors per level by score, decoded,
clipped, small and low-scoring ones dropped, NMS within each level, then the best
`post_nms_top_n` per image. Training samples 256 anchors per image, half positive at most
(IoU >= 0.7 with a ground truth, or its best anchor), negatives below 0.3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv_norm_act import ConvNormAct
from cnnkit.models.detection import _utils as det_utils
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.ops.boxes import (BoxCoder, batched_nms, box_iou, clip_boxes_to_image,
                              remove_small_boxes)
from cnnkit.utils import CnnkitError

__all__ = ["RPNHead", "RegionProposalNetwork", "concat_box_prediction_layers"]


class RPNHead(nn.Module):
    """`conv_depth` 3×3 conv-ReLU layers (shared across levels), then 1×1 convs to one objectness
    logit and 4 box deltas per anchor. forward(list of maps) → (logits, deltas), lists per level
    of (N, A, H, W) and (N, 4A, H, W)."""

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[ConvNormAct(in_channels, in_channels, 3, norm=None,
                                                act="relu", names=("0", "1", "2"))
                                    for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.constant_(layer.bias, 0)

    def forward(self, x: list[torch.Tensor]):
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


def permute_and_flatten(layer: torch.Tensor, n: int, a: int, c: int, h: int,
                        w: int) -> torch.Tensor:
    layer = layer.view(n, -1, c, h, w)     # (N, A, C, H, W)
    layer = layer.permute(0, 3, 4, 1, 2)   # (N, H, W, A, C): the anchors' order
    return layer.reshape(n, -1, c)         # (N, H·W·A, C)


def concat_box_prediction_layers(box_cls: list[torch.Tensor], box_regression: list[torch.Tensor]):
    """Per-level head outputs → (N·sum H·W·A, C) scores and (N·sum H·W·A, 4) deltas, ordered as
    the anchors (image, level, position, anchor)."""
    flat_cls, flat_reg = [], []
    for cls_per_level, reg_per_level in zip(box_cls, box_regression):
        n, axc, h, w = cls_per_level.shape
        a = reg_per_level.shape[1] // 4
        flat_cls.append(permute_and_flatten(cls_per_level, n, a, axc // a, h, w))
        flat_reg.append(permute_and_flatten(reg_per_level, n, a, 4, h, w))
    box_cls = torch.cat(flat_cls, dim=1).flatten(0, -2)             # (N·sum, C)
    box_regression = torch.cat(flat_reg, dim=1).reshape(-1, 4)      # (N·sum, 4)
    return box_cls, box_regression


class RegionProposalNetwork(nn.Module):
    """forward(images: ImageList, features: dict, targets) → (per-image (Pi, 4) proposals,
    losses {loss_objectness, loss_rpn_box_reg} in training, {} otherwise).

    `pre_nms_top_n` / `post_nms_top_n`: dicts with "training" and "testing" counts.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: nn.Module, fg_iou_thresh: float,
                 bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
                 pre_nms_top_n: dict[str, int], post_nms_top_n: dict[str, int],
                 nms_thresh: float, score_thresh: float = 0.0):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_similarity = box_iou
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh,
                                                  allow_low_quality_matches=True)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image,
                                                                       positive_fraction)
        self._pre_nms_top_n = pre_nms_top_n
        self._post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3  # clipping at the image border can flatten a box to nothing

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def assign_targets_to_anchors(self, anchors: list[torch.Tensor], targets: list[dict]):
        """Per image: (A,) labels 1 (object) / 0 (background) / -1 (ignored) and the (A, 4)
        matched ground-truth boxes. An image without boxes: every anchor is background."""
        labels, matched_gt_boxes = [], []
        for anchors_per_image, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:
                matched = torch.zeros(anchors_per_image.shape, dtype=torch.float32,
                                      device=anchors_per_image.device)
                labels_per_image = torch.zeros((anchors_per_image.shape[0],), dtype=torch.float32,
                                               device=anchors_per_image.device)
            else:
                matched_idxs = self.proposal_matcher(self.box_similarity(gt_boxes,
                                                                         anchors_per_image))
                matched = gt_boxes[matched_idxs.clamp(min=0)]
                labels_per_image = (matched_idxs >= 0).to(dtype=torch.float32)
                labels_per_image[matched_idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
                labels_per_image[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(labels_per_image)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes

    def _get_top_n_idx(self, objectness: torch.Tensor, num_anchors_per_level: list[int]):
        """(N, sum k_l) indices of the top pre_nms_top_n anchors of each level."""
        r, offset = [], 0
        for ob in objectness.split(num_anchors_per_level, 1):
            k = det_utils._topk_min(ob, self.pre_nms_top_n(), 1)
            r.append(ob.topk(k, dim=1).indices + offset)
            offset += ob.shape[1]
        return torch.cat(r, dim=1)

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor,
                         image_shapes: list[tuple[int, int]], num_anchors_per_level: list[int]):
        num_images, device = proposals.shape[0], proposals.device
        # no gradient through the proposals (the paper's approximate joint training)
        objectness = objectness.detach().reshape(num_images, -1)    # (N, A_total)
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=device)
                            for idx, n in enumerate(num_anchors_per_level)])
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        levels = levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        objectness_prob = torch.sigmoid(objectness)
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, img_shape)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # NMS within each level separately, as torchvision (levels don't suppress each other)
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor,
                     labels: list[torch.Tensor], regression_targets: list[torch.Tensor]):
        """Binary cross-entropy over the sampled anchors; smooth-L1 (β = 1/9, Detectron's) over
        the positive ones, summed and divided by the number sampled."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        # normalised by every sampled anchor, not just the positives (Detectron's choice): an
        # image with few objects then doesn't weigh its few boxes up
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[sampled_pos],
                                    regression_targets[sampled_pos], beta=1 / 9,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss

    def forward(self, images, features: dict[str, torch.Tensor], targets: list[dict] | None = None):
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]  # A·H·W per level
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # proposals are constants to the second stage (the paper's approximate joint training):
        # no gradient flows from the RoI heads back through the box coordinates
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors)
        proposals = proposals.view(num_images, -1, 4)                 # (N, A_total, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes,
                                         num_anchors_per_level)
        losses = {}
        if self.training:
            if targets is None:
                raise CnnkitError("the RPN needs targets in training mode")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses
