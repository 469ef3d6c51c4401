"""PCK@0.2 with the LSP torso, on hand-made predictions; OKS AP through pycocotools."""
import math

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params

from cnnkit.data.lsp import JOINT_NAMES, LSP_SIGMAS, TORSO
from cnnkit.train.coco_eval import COCO_PERSON_KEYPOINT_NAMES
from cnnkit.train.pose_metrics import half_right, oks_ap, pck, pck_by_part
from cnnkit.utils import CnnkitError


def _people(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.uniform(20, 180, (n, 14, 2)), dtype=torch.float64)


def test_perfect_prediction_is_one():
    gt = _people()
    per_joint, mean = pck(gt, gt)
    assert per_joint.tolist() == [1.0] * 14 and mean == 1.0


def test_a_joint_beyond_the_threshold_drops_exactly_that_joint():
    gt = _people()
    torso = torch.linalg.norm(gt[:, TORSO[0]] - gt[:, TORSO[1]], dim=-1)  # left shoulder–right hip
    pred = gt.clone()
    pred[1, 5, 0] += 1.01 * 0.2 * torso[1]  # just beyond 0.2 · torso of image 1
    pred[2, 7, 1] -= 0.99 * 0.2 * torso[2]  # just within
    per_joint, mean = pck(pred, gt)
    expected = [1.0] * 14
    expected[5] = 3 / 4
    assert per_joint.tolist() == expected
    assert mean == pytest.approx(1 - 1 / (4 * 14))
    # α scales the threshold: at α = 0.3 the shifted joint counts again.
    assert pck(pred, gt, alpha=0.3)[1] == 1.0


def test_mask_excludes_joints_and_nan_for_unscored():
    gt = _people()
    pred = gt.clone()
    pred[:, 3] += 1000  # every left hip wrong
    mask = torch.ones(4, 14, dtype=torch.bool)
    mask[:2, 3] = False  # two of them not scored
    per_joint, mean = pck(pred, gt, mask)
    assert per_joint[3] == 0.0 and mean == pytest.approx(1 - 2 / (4 * 14 - 2))
    mask[:, 3] = False
    per_joint, mean = pck(pred, gt, mask)
    assert math.isnan(per_joint[3]) and mean == 1.0
    with pytest.raises(CnnkitError, match="same shape"):
        pck(pred[:, :13], gt)


def test_half_right_counts_people_with_at_least_seven_of_fourteen_joints():
    gt = _people()
    pred = gt.clone()
    pred[0, :7] += 1000  # 7 of 14 right: counts (at least half)
    pred[1, :8] += 1000  # 6 right: does not
    pred[2, :3] = float("nan")  # joints not found are wrong, not an error: 11 right
    assert half_right(pred, gt) == 3 / 4
    assert half_right(gt, gt) == 1.0
    gt[3, TORSO[1]] = gt[3, TORSO[0]]  # no torso: the person is not scored at all
    assert half_right(pred, gt) == 2 / 3


def test_pck_by_part_averages_left_and_right():
    values = np.arange(14) / 13
    parts = pck_by_part(values)
    assert list(parts) == ["ankle", "knee", "hip", "wrist", "elbow", "shoulder", "neck",
                           "head_top"]
    assert parts["ankle"] == pytest.approx((values[0] + values[5]) / 2)
    assert parts["head_top"] == values[13]


def test_lsp_sigmas_come_from_pycocotools():
    coco = dict(zip(COCO_PERSON_KEYPOINT_NAMES, Params(iouType="keypoints").kpt_oks_sigmas))
    for name, sigma in zip(JOINT_NAMES, LSP_SIGMAS):
        if name in coco:
            assert sigma == coco[name], name
        else:  # neck and head top: CrowdPose's 0.079, the shoulder's value
            assert sigma == 0.079 == coco["left_shoulder"]


def test_oks_ap_perfect_is_one_and_errors_lower_it():
    gt = _people(6)
    visible = torch.ones(6, 14, dtype=torch.bool)
    visible[0, :3] = False  # occluded joints are still scored (v = 1)
    sizes = [(200, 200)] * 6
    scores = oks_ap(gt, gt, visible, sizes)
    assert scores.stats["keypoints"]["AP"] == 1.0 and scores.stats["keypoints"]["AR"] == 1.0
    noisy = gt + torch.as_tensor(np.random.default_rng(1).normal(0, 15, gt.shape))
    assert oks_ap(noisy, gt, visible, sizes).stats["keypoints"]["AP"] < 1.0
    with pytest.raises(CnnkitError, match="13 OKS sigmas for 14 joints"):
        oks_ap(gt, gt, visible, sizes, sigmas=LSP_SIGMAS[:13])
