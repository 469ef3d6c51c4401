"""The second stage: RoI heads (torchvision `models/detection/roi_heads.py`, `faster_rcnn.py`).

Proposals (plus, in training, the ground-truth boxes) are matched to the ground truth (IoU >= 0.5
foreground, else background), 512 per image sampled at 25 % foreground (Fast R-CNN §2.3,
https://arxiv.org/abs/1504.08083), pooled with multi-scale RoIAlign, and classified with a
class-specific box refinement. The mask and keypoint branches (mask_keypoint_heads.py) run on the
positive proposals in training and on the final detections at inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv_norm_act import ConvNormAct
from cnnkit.layers.init import init_cnn_
from cnnkit.models.detection import _utils as det_utils
from cnnkit.models.detection.mask_keypoint_heads import (  # noqa: F401 (re-exported)
    KeypointRCNNHeads, KeypointRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor,
    heatmaps_to_keypoints, keypointrcnn_inference, keypointrcnn_loss, maskrcnn_inference,
    maskness, maskrcnn_loss, paste_masks_in_image)
from cnnkit.ops.boxes import (BoxCoder, batched_nms, box_iou, clip_boxes_to_image,
                              remove_small_boxes)
from cnnkit.utils import CnnkitError

__all__ = ["RoIHeads", "TwoMLPHead", "FastRCNNConvFCHead", "FastRCNNPredictor", "fastrcnn_loss",
           "MaskRCNNHeads", "MaskRCNNPredictor", "KeypointRCNNHeads", "KeypointRCNNPredictor",
           "maskrcnn_loss", "keypointrcnn_loss", "paste_masks_in_image", "heatmaps_to_keypoints"]


# --- box head and predictor ---

class TwoMLPHead(nn.Module):
    """Flatten the pooled RoI features → fc6 → ReLU → fc7 → ReLU (the FPN paper's 2-fc head)."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=1)  # (R, C, 7, 7) -> (R, C·49)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class FastRCNNConvFCHead(nn.Sequential):
    """conv3×3-norm-ReLU layers, flatten, fc-ReLU layers: Faster R-CNN v2's "4conv1fc" head
    (Li et al. 2021, "Benchmarking Detection Transfer Learning with ViTs",
    https://arxiv.org/abs/2111.11429). `input_size` = (C, H, W) of the pooled features."""

    def __init__(self, input_size: tuple[int, int, int], conv_layers: list[int],
                 fc_layers: list[int], norm_layer=None):
        in_channels, in_height, in_width = input_size
        blocks: list[nn.Module] = []
        prev = in_channels
        for width in conv_layers:
            blocks.append(ConvNormAct(prev, width, 3, norm=norm_layer, act="relu",
                                      names=("0", "1", "2")))
            prev = width
        blocks.append(nn.Flatten())
        prev = prev * in_height * in_width
        for width in fc_layers:
            blocks += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            prev = width
        super().__init__(*blocks)
        init_cnn_(self)  # He-normal convs, zero bias, as torchvision (Linear: torch's default)


class FastRCNNPredictor(nn.Module):
    """Class logits (`cls_score`) and per-class box deltas (`bbox_pred`, 4 per class)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: torch.Tensor):
        if x.dim() == 4:
            if list(x.shape[2:]) != [1, 1]:
                raise CnnkitError(f"FastRCNNPredictor expects (R, C) or (R, C, 1, 1) features, "
                                  f"got {tuple(x.shape)}")
            x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(class_logits: torch.Tensor, box_regression: torch.Tensor,
                  labels: list[torch.Tensor], regression_targets: list[torch.Tensor]):
    """Cross-entropy over the sampled RoIs; smooth-L1 (β = 1/9) of the ground-truth class's
    deltas over the foreground ones, summed and divided by all sampled RoIs (Detectron's)."""
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)  # (R, K, 4)
    # class-specific regression: only the ground-truth class's 4 deltas are trained per RoI
    box_loss = F.smooth_l1_loss(box_regression[pos, labels[pos]], regression_targets[pos],
                                beta=1 / 9, reduction="sum")
    return classification_loss, box_loss / labels.numel()


# --- the heads ---

class RoIHeads(nn.Module):
    """forward(features, proposals, image_shapes, targets) → (per-image detections, losses).

    Detections: {boxes, labels, scores} (+ masks (N, 1, M, M) probabilities and, with
    `mask_scoring="maskness"`, mask_scores (N,) that rank them, + keypoints
    (N, K, 3), keypoints_scores (N, K)) in the resized image's pixels; losses: loss_classifier,
    loss_box_reg (+ loss_mask, + loss_keypoint) in training.
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh: float,
                 bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
                 bbox_reg_weights, score_thresh: float, nms_thresh: float,
                 detections_per_img: int, mask_roi_pool=None, mask_head=None,
                 mask_predictor=None, keypoint_roi_pool=None, keypoint_head=None,
                 keypoint_predictor=None):
        super().__init__()
        self.box_similarity = box_iou
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh,
                                                  allow_low_quality_matches=False)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image,
                                                                       positive_fraction)
        # deltas scaled to about unit variance (Fast R-CNN's target normalisation)
        self.box_coder = BoxCoder(bbox_reg_weights or (10.0, 10.0, 5.0, 5.0))
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.exact_masks = False  # MaskRCNN(exact_masks=...): pixel-centred mask targets
        self.mask_rois_per_image: int | None = None  # MaskRCNN(...): training's mask RoI cap
        self.mask_scoring = "class"  # MaskRCNN(mask_scoring=...): what ranks the masks
        self.keypoint_roi_pool = keypoint_roi_pool
        self.keypoint_head = keypoint_head
        self.keypoint_predictor = keypoint_predictor

    def has_mask(self) -> bool:
        return None not in (self.mask_roi_pool, self.mask_head, self.mask_predictor)

    def has_keypoint(self) -> bool:
        return None not in (self.keypoint_roi_pool, self.keypoint_head, self.keypoint_predictor)

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        """Per image: the matched ground truth's index (0 where none) and the label: its class,
        0 background, -1 ignored. An image without boxes: all background."""
        matched_idxs, labels = [], []
        for props, boxes, gt_lab in zip(proposals, gt_boxes, gt_labels):
            if boxes.numel() == 0:
                clamped = torch.zeros((props.shape[0],), dtype=torch.int64, device=props.device)
                lab = torch.zeros((props.shape[0],), dtype=torch.int64, device=props.device)
            else:
                idxs = self.proposal_matcher(box_iou(boxes, props))
                clamped = idxs.clamp(min=0)
                lab = gt_lab[clamped].to(dtype=torch.int64)
                lab[idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                lab[idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(clamped)
            labels.append(lab)
        return matched_idxs, labels

    def subsample(self, labels: list[torch.Tensor]) -> list[torch.Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        return [torch.where(p | n)[0] for p, n in zip(pos, neg)]

    def check_targets(self, targets: list[dict] | None) -> None:
        if targets is None:
            raise CnnkitError("the RoI heads need targets in training mode")
        needed = ["boxes", "labels"] + (["masks"] if self.has_mask() else []) \
            + (["keypoints"] if self.has_keypoint() else [])
        for t in targets:
            missing = [k for k in needed if k not in t]
            if missing:
                raise CnnkitError(f"every target needs {', '.join(needed)}; one lacks "
                                  f"{', '.join(missing)}")
            if not t["boxes"].is_floating_point():
                raise CnnkitError(f"target boxes must be float, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise CnnkitError(f"target labels must be int64, got {t['labels'].dtype}")

    def select_training_samples(self, proposals: list[torch.Tensor], targets: list[dict]):
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        # the ground truth joins the proposals: early on these are the only good positives
        proposals = [torch.cat((p, gt)) for p, gt in zip(proposals, gt_boxes)]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled = self.subsample(labels)
        matched_gt_boxes = []
        for i, inds in enumerate(sampled):
            proposals[i], labels[i], matched_idxs[i] = (proposals[i][inds], labels[i][inds],
                                                        matched_idxs[i][inds])
            boxes = gt_boxes[i]
            if boxes.numel() == 0:  # a dummy target for the all-background image
                boxes = torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(boxes[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Per image: every (RoI, class ≠ background) pair scoring above score_thresh, with its
        class's refined box, then per-class NMS and the best detections_per_img."""
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)   # (R, K, 4)
        pred_scores = F.softmax(class_logits, -1)                       # (R, K)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0),
                                              pred_scores.split(boxes_per_image, 0), image_shapes):
            boxes = clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # drop the background column, then one candidate per (RoI, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores, labels = scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)  # flattened by the clipping
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def _positives(self, proposals, labels, matched_idxs):
        """Per image, the foreground RoIs and their ground-truth indices (mask/keypoint input)."""
        pos = [torch.where(lab > 0)[0] for lab in labels]
        return ([p[i] for p, i in zip(proposals, pos)],
                [m[i] for m, i in zip(matched_idxs, pos)])

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict] | None = None):
        # training pools the sampled proposals; inference every proposal, then the mask and
        # keypoint branches see the final detections (He et al. §3.1, "Inference")
        if self.training:
            proposals, matched_idxs, labels, regression_targets = \
                self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, torch.Tensor]] = []
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels,
                                                          regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            branch_boxes, pos_matched_idxs = self._positives(proposals, labels, matched_idxs)
        else:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression,
                                                                proposals, image_shapes)
            result = [{"boxes": b, "labels": lab, "scores": s}
                      for b, lab, s in zip(boxes, labels, scores)]
            branch_boxes = [r["boxes"] for r in result]
        if self.has_mask():
            mask_boxes = branch_boxes
            if self.training:
                mask_idxs = pos_matched_idxs
                if self.mask_rois_per_image is not None:
                    mask_boxes, mask_idxs = _random_subsets(branch_boxes, pos_matched_idxs,
                                                            self.mask_rois_per_image)
            mask_logits = self.mask_predictor(self.mask_head(
                self.mask_roi_pool(features, mask_boxes, image_shapes)))
            if self.training:
                losses["loss_mask"] = maskrcnn_loss(
                    mask_logits, mask_boxes, [t["masks"] for t in targets],
                    [t["labels"] for t in targets], mask_idxs, self.exact_masks)
            else:
                masks = maskrcnn_inference(mask_logits, [r["labels"] for r in result])
                for mask_prob, r in zip(masks, result):
                    r["masks"] = mask_prob
                    if self.mask_scoring == "maskness":
                        r["mask_scores"] = r["scores"] * maskness(mask_prob.float())
        if self.has_keypoint():
            keypoint_logits = self.keypoint_predictor(self.keypoint_head(
                self.keypoint_roi_pool(features, branch_boxes, image_shapes)))
            if self.training:
                losses["loss_keypoint"] = keypointrcnn_loss(
                    keypoint_logits, branch_boxes, [t["keypoints"] for t in targets],
                    pos_matched_idxs)
            else:
                kps, kp_scores = keypointrcnn_inference(keypoint_logits, branch_boxes)
                for kp, kps_score, r in zip(kps, kp_scores, result):
                    r["keypoints"] = kp
                    r["keypoints_scores"] = kps_score
        return result, losses


def _random_subsets(boxes: list[torch.Tensor], matched_idxs: list[torch.Tensor], limit: int):
    """Per image, a uniform random subset of at most `limit` (box, matched index) pairs."""
    kept = [torch.randperm(len(b), device=b.device)[:limit] for b in boxes]
    return [b[k] for b, k in zip(boxes, kept)], [m[k] for m, k in zip(matched_idxs, kept)]
