"""Assignment and sampling shared by the detectors (torchvision `models/detection/_utils.py`).

* `Matcher`: each prediction (anchor / proposal) to its best ground-truth box by IoU, with the two
  thresholds of Faster R-CNN (Ren et al. 2015, https://arxiv.org/abs/1506.01497 §3.1.2).
* `SSDMatcher`: the same, plus every ground truth keeps its best prior (Liu et al., SSD §2.2).
* `BalancedPositiveNegativeSampler`: a fixed-size mini-batch per image at a positive fraction.
* `_box_loss`, `_topk_min`, `retrieve_out_channels`: helpers RetinaNet, FCOS and SSD share.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.ops.boxes import (BoxCoder, complete_box_iou_loss, distance_box_iou_loss,
                              generalized_box_iou_loss)
from cnnkit.utils import CnnkitError

__all__ = ["Matcher", "SSDMatcher", "BalancedPositiveNegativeSampler", "BoxCoder",
           "overwrite_eps", "retrieve_out_channels"]


class Matcher:
    """Match each of N predictions to one of M ground truths from an (M, N) IoU matrix.

    __call__ → (N,) int64: the matched ground truth's index where IoU >= high_threshold,
    BELOW_LOW_THRESHOLD (-1) where IoU < low_threshold (background), BETWEEN_THRESHOLDS (-2) in
    between (ignored). `allow_low_quality_matches`: every ground truth also keeps the
    prediction(s) it overlaps most, whatever the IoU, so no object goes without a positive (the
    RPN's rule (i) in §3.1.2 of the paper).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float,
                 allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise CnnkitError(f"Matcher: low_threshold {low_threshold} is above high_threshold "
                              f"{high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        if match_quality_matrix.numel() == 0:
            what = "ground-truth" if match_quality_matrix.shape[0] == 0 else "proposal"
            raise CnnkitError(f"Matcher: no {what} boxes available for one of the images")
        matched_vals, matches = match_quality_matrix.max(dim=0)  # (N,) best ground truth each
        # the raw best matches, before the thresholds overwrite them: low-quality matches
        # restore some of them below
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if all_matches is not None:
            self.set_low_quality_matches_(matches, all_matches, match_quality_matrix)
        return matches

    @staticmethod
    def set_low_quality_matches_(matches: torch.Tensor, all_matches: torch.Tensor,
                                 match_quality_matrix: torch.Tensor) -> None:
        """Restore the match of every prediction that is some ground truth's best (ties
        included: all predictions sharing the highest IoU with a ground truth)."""
        highest_quality_foreach_gt = match_quality_matrix.max(dim=1).values  # (M,)
        pairs = torch.where(match_quality_matrix == highest_quality_foreach_gt[:, None])
        pred_inds_to_update = pairs[1]
        matches[pred_inds_to_update] = all_matches[pred_inds_to_update]


class SSDMatcher(Matcher):
    """One threshold; then each ground truth claims its best prior even below it (SSD §2.2)."""

    def __init__(self, threshold: float):
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        matches = super().__call__(match_quality_matrix)
        best_pred_foreach_gt = match_quality_matrix.max(dim=1).indices  # (M,)
        matches[best_pred_foreach_gt] = torch.arange(best_pred_foreach_gt.numel(),
                                                     dtype=torch.int64, device=matches.device)
        return matches


class BalancedPositiveNegativeSampler:
    """Per image, draw up to `batch_size_per_image` predictions, a `positive_fraction` of them
    positive (label >= 1) and the rest negative (label 0), uniformly at random; -1 is ignored.
    Fewer positives than asked leave room for more negatives (Faster R-CNN §3.1.3)."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs: list[torch.Tensor]):
        """Per image, two uint8 masks over its predictions: the sampled positives, negatives."""
        pos_idx, neg_idx = [], []
        for labels in matched_idxs:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            # uniform without replacement; torch's generator, so torch.manual_seed replays it
            perm1 = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
            perm2 = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[positive[perm1]] = 1
            neg_mask[negative[perm2]] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx


def overwrite_eps(model: nn.Module, eps: float) -> None:
    """Set the eps of every FrozenBatchNorm2d in `model`. torchvision's legacy COCO checkpoints
    of Faster / Mask / Keypoint R-CNN (COCO_V1) were trained with eps = 0 and are loaded that way
    there; the default 1e-5 changes their outputs slightly."""
    for module in model.modules():
        if type(module).__name__ == "FrozenBatchNorm2d":
            module.eps = eps


def _topk_min(input: torch.Tensor, orig_kval: int, axis: int) -> int:
    """k for topk, capped at the size of `axis` (a small image has fewer anchors than k)."""
    return min(orig_kval, input.size(axis))


def _box_loss(type: str, box_coder, anchors_per_image: torch.Tensor,
              matched_gt_boxes_per_image: torch.Tensor, bbox_regression_per_image: torch.Tensor,
              cnf: dict | None = None) -> torch.Tensor:
    """Summed box regression loss of one image: on the encoded deltas ("l1", "smooth_l1") or on
    the decoded boxes ("giou", "diou", "ciou")."""
    if type not in ("l1", "smooth_l1", "ciou", "diou", "giou"):
        raise CnnkitError(f"unsupported box loss {type!r}; choose from l1, smooth_l1, ciou, "
                          f"diou, giou")
    cnf = cnf or {}
    if type in ("l1", "smooth_l1"):
        target = box_coder.encode_single(matched_gt_boxes_per_image, anchors_per_image)
        if type == "l1":
            return F.l1_loss(bbox_regression_per_image, target, reduction="sum")
        return F.smooth_l1_loss(bbox_regression_per_image, target, reduction="sum",
                                beta=cnf.get("beta", 1.0))
    boxes = box_coder.decode_single(bbox_regression_per_image, anchors_per_image)
    loss = {"ciou": complete_box_iou_loss, "diou": distance_box_iou_loss,
            "giou": generalized_box_iou_loss}[type]
    return loss(boxes, matched_gt_boxes_per_image, reduction="sum", eps=cnf.get("eps", 1e-7))


def retrieve_out_channels(model: nn.Module, size: tuple[int, int]) -> list[int]:
    """The channel count of each feature map `model` returns, found by running a zero image
    of `size` (height, width) through it in eval mode (torchvision's helper for SSD)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        features = model(torch.zeros((1, 3, size[0], size[1]), device=device))
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        out_channels = [x.size(1) for x in features.values()]
    model.train(was_training)
    return out_channels
