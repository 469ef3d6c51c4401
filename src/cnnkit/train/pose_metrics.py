"""Pose accuracy: PCK with the LSP torso, and COCO's OKS AP through pycocotools.

PCK@α (Yang & Ramanan 2013, "Articulated Human Detection with Flexible Mixtures of Parts"; the LSP
protocol of bearpaw/eval_pose utils/eval_pck.m): a predicted joint is correct when it lies within
α × the torso size of the ground truth, torso = distance between the ground-truth left shoulder
and right hip of that image. Scored joints: every joint where `mask` is true — by default all of
them, occluded ones included, as the LSP protocol scores them; pass mask=visible to score only
the visible ones. An image whose torso size is 0 scores nothing (no scale to measure with).

OKS AP (https://cocodataset.org/#keypoints-eval): pycocotools' COCOeval with iouType
"keypoints", run by cnnkit.train.coco_eval.coco_evaluate, with the 14 LSP sigmas
(cnnkit.data.lsp.LSP_SIGMAS: COCO's sigma for the twelve joints COCO also has, CrowdPose's 0.079
for neck and head top). COCO's object scale s² is the person's segment area; LSP has no masks, so
the area of the box spanned by the ground-truth joints stands in for it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from cnnkit.data.lsp import JOINT_NAMES, LSP_SIGMAS, TORSO
from cnnkit.train.coco_eval import CocoScores, coco_evaluate
from cnnkit.utils import CnnkitError

PCK_ALPHA = 0.2


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def pck_correct(pred, gt, mask=None, *, alpha: float = PCK_ALPHA,
                torso: tuple[int, int] = TORSO) -> tuple[np.ndarray, np.ndarray]:
    """(correct, scored), both (N, J) bool: the joints within alpha × the ground-truth torso, and
    the joints scored (`mask`, less images whose torso size is 0). Arguments as `pck`'s."""
    pred, gt = _numpy(pred), _numpy(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise CnnkitError(f"PCK needs predictions and ground truth of the same shape (N, J, 2), "
                          f"got {pred.shape} and {gt.shape}")
    n, j, _ = gt.shape
    if max(torso) >= j:
        raise CnnkitError(f"PCK torso joints {torso} do not exist among {j} joints")
    mask = np.ones((n, j), bool) if mask is None else _numpy(mask).astype(bool)
    if mask.shape != (n, j):
        raise CnnkitError(f"PCK mask must be ({n}, {j}), got {mask.shape}")
    size = np.linalg.norm(gt[:, torso[0]] - gt[:, torso[1]], axis=-1)  # (N,) torso per image
    mask = mask & (size > 0)[:, None]
    dist = np.linalg.norm(pred - gt, axis=-1)  # (N, J); NaN (a joint not found) is never correct
    # ≤: a joint exactly at the threshold counts; torso from the ground truth, so a prediction
    # cannot change its own yardstick.
    with np.errstate(invalid="ignore"):
        correct = (dist <= alpha * size[:, None]) & mask
    return correct, mask


def pck(pred, gt, mask=None, *, alpha: float = PCK_ALPHA, torso: tuple[int, int] = TORSO
        ) -> tuple[np.ndarray, float]:
    """PCK@alpha per joint (J,) and over all scored joints.

    pred, gt: (N, J, 2) image coordinates; mask: (N, J) bool, the joints to score (default all).
    Correct: distance ≤ alpha · |gt[torso[0]] − gt[torso[1]]|. Per joint: correct / scored,
    NaN for a joint never scored; the mean is over all scored (image, joint) pairs, which with
    every joint scored equals the mean of the per-joint values.
    """
    correct, mask = pck_correct(pred, gt, mask, alpha=alpha, torso=torso)
    scored = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(scored > 0, correct.sum(axis=0) / np.maximum(scored, 1), np.nan)
    mean = float(correct.sum() / mask.sum()) if mask.any() else math.nan
    return per_joint, mean


def half_right(pred, gt, *, alpha: float = PCK_ALPHA) -> float:
    """The fraction of people (one per image) with at least half of their joints within PCK@alpha.

    On lsp-multi a parsed skeleton finds a person only when half of its joints pass this test
    (train/pose.score_canvas), so for complete predictions this is the most of the people that
    predictions as accurate could find — the bound on lsp-multi's found and assembled rates.
    """
    correct, scored = pck_correct(pred, gt, alpha=alpha)
    people = scored.any(axis=1)
    return float((2 * correct.sum(axis=1) >= scored.sum(axis=1))[people].mean())


def pck_by_part(per_joint: Sequence[float], names: Sequence[str] = JOINT_NAMES
                ) -> dict[str, float]:
    """Per-joint PCK folded into the LSP table's parts: left and right averaged (`right_knee`
    and `left_knee` → `knee`), other joints by their own name, in first-seen order."""
    parts: dict[str, list[float]] = {}
    for name, value in zip(names, per_joint):
        part = name.removeprefix("left_").removeprefix("right_")
        parts.setdefault(part, []).append(float(value))
    return {part: float(np.mean(values)) for part, values in parts.items()}


def oks_ap(pred, gt, visible, image_sizes: Sequence[tuple[int, int]], scores=None, *,
           sigmas: Sequence[float] = LSP_SIGMAS,
           keypoint_names: Sequence[str] | None = JOINT_NAMES) -> CocoScores:
    """COCO keypoint AP/AR (CocoScores.stats["keypoints"]["AP"], ...) of one person per image.

    pred, gt: (N, J, 2) image coordinates; visible: (N, J) bool (visible joints v = 2, occluded
    v = 1: COCOeval scores both, as the LSP protocol does); image_sizes: (H, W) per image;
    scores: (N,) detection confidences (e.g. the mean heatmap peak; default 1).
    """
    pred = torch.as_tensor(pred, dtype=torch.float64)
    gt = torch.as_tensor(gt, dtype=torch.float64)
    visible = torch.as_tensor(visible, dtype=torch.bool)
    n, j = gt.shape[:2]
    if pred.shape != gt.shape or visible.shape != (n, j) or len(image_sizes) != n:
        raise CnnkitError(f"OKS AP needs pred and gt (N, J, 2), visible (N, J) and N image sizes; "
                          f"got {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(visible.shape)}, "
                          f"{len(image_sizes)}")
    if len(sigmas) != j:
        raise CnnkitError(f"{len(sigmas)} OKS sigmas for {j} joints; give one per joint")
    scores = torch.ones(n, dtype=torch.float64) if scores is None else torch.as_tensor(
        scores, dtype=torch.float64).reshape(n)
    targets, predictions = [], []
    for i in range(n):
        # The joints' extent (≥ 1 px a side) as the box whose area scales OKS.
        lo, hi = gt[i].min(dim=0).values, gt[i].max(dim=0).values
        box = torch.cat([lo, torch.maximum(hi, lo + 1)])[None]  # (1, 4) x1 y1 x2 y2
        # COCO's v: 2 visible, 1 occluded; COCOeval scores every joint with v > 0, so the
        # occluded LSP joints count, as in the PCK protocol.
        v = visible[i].to(torch.float64) + 1
        targets.append({"boxes": box, "labels": [1], "image_id": i + 1,
                        "keypoints": torch.cat([gt[i], v[:, None]], dim=1)[None]})
        # COCOeval matches keypoints alone; the predicted box only fills the results format.
        p_lo, p_hi = pred[i].min(dim=0).values, pred[i].max(dim=0).values
        predictions.append({"boxes": torch.cat([p_lo, torch.maximum(p_hi, p_lo + 1)])[None],
                            "labels": [1], "scores": scores[i:i + 1],
                            "keypoints": torch.cat([pred[i], torch.ones(j, 1,
                                                    dtype=torch.float64)], dim=1)[None]})
    return coco_evaluate(targets, image_sizes, predictions, ["person"], iou_types=("keypoints",),
                         kpt_sigmas=list(sigmas), keypoint_names=keypoint_names)
