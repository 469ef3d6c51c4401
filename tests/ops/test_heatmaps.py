"""The heatmap codec: Gaussian targets and weights, quarter-offset and DARK decoding, flip-back,
and the crop geometry between image, crop and heatmap coordinates."""
import math

import numpy as np
import pytest
import torch

from cnnkit.ops.heatmaps import (apply_affine, crop_matrix, crop_matrix_inverse, decode_heatmaps,
                                 default_sigma, flip_back, flip_joints, gaussian_targets,
                                 half_body_box, heatmap_to_image, image_to_heatmap,
                                 joints_box, joints_mse_loss, random_scale_rotation, warp_crop)

H, W = 64, 48  # the heatmap of a 256×192 crop


def _random_interior(n, rng, margin=2.0):
    xy = torch.stack([torch.as_tensor(rng.uniform(margin, W - 1 - margin, n)),
                      torch.as_tensor(rng.uniform(margin, H - 1 - margin, n))], dim=-1)
    return xy.to(torch.float32)[None]  # (1, n, 2)


def test_sigma_scales_with_the_heatmap():
    assert default_sigma((64, 48)) == 2.0 and default_sigma((96, 72)) == 3.0
    assert default_sigma((32, 24)) == 1.0


def test_encode_decode_round_trip_within_a_quarter_pixel():
    rng = np.random.default_rng(0)
    joints = _random_interior(500, rng)
    targets, weight = gaussian_targets(joints, torch.ones(1, 500), (H, W))
    assert targets.shape == (1, 500, H, W) and (weight == 1).all()
    coords, maxvals = decode_heatmaps(targets)
    err = (coords - joints).abs()
    assert err.max() <= 0.25 + 1e-5
    assert (maxvals > 0.88).all()  # the peak pixel is at most ½ px from the exact centre
    # The quarter step is what brings it under ¼ px: the plain argmax errs up to ½.
    argmax_err = (torch.floor(joints + 0.5) - joints).abs()
    assert argmax_err.max() > 0.45
    # DARK recovers a Gaussian's exact centre.
    dark, _ = decode_heatmaps(targets, dark=True)
    assert (dark - joints).abs().max() < 1e-3


def test_reference_rounded_centre():
    joints = torch.tensor([[[10.3, 20.6]]])
    targets, _ = gaussian_targets(joints, torch.ones(1, 1), (H, W), round_centre=True)
    y, x = divmod(int(targets[0, 0].argmax()), W)
    assert (x, y) == (10, 21) and targets[0, 0, 21, 10] == 1.0
    # Symmetric about the rounded centre: the quarter step has no neighbour to prefer.
    coords, _ = decode_heatmaps(targets)
    assert coords[0, 0].tolist() == [10.0, 21.0]


def test_gaussian_shape_and_weights():
    joints = torch.tensor([[[5.0, 7.0], [20.0, 30.0], [-3.0, 10.0], [10.0, 64.2]]])
    weights = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # the second one not to be learned
    targets, weight = gaussian_targets(joints, weights, (H, W), sigma=2.0)
    assert weight.tolist() == [[1.0, 0.0, 0.0, 0.0]]  # invisible; outside left; outside below
    assert (targets[0, 1:] == 0).all()
    t = targets[0, 0]
    assert t[7, 5] == 1.0
    assert t[7, 7] == pytest.approx(math.exp(-4 / 8))  # 2 px away, σ = 2
    assert t[9, 7] == pytest.approx(math.exp(-8 / 8))


def test_loss_ignores_weight_zero_joints():
    torch.manual_seed(0)
    targets = torch.rand(2, 3, 8, 6)
    pred = targets.clone()
    pred[:, 1] += 5.0  # wrong only on joint 1
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert joints_mse_loss(pred, targets, weight) == 0
    weight[0, 1] = 1.0
    # ½ · mean over N·J·H·W of 25 on one joint map of one image
    assert joints_mse_loss(pred, targets, weight) == pytest.approx(0.5 * 25 * 48 / (2 * 3 * 48))


def test_flip_back_hand_made():
    hm = torch.zeros(1, 3, 4, 5)
    hm[0, 0, 2, 1] = 1.0  # joint 0 ("left") seen at x = 1 in the flipped crop
    hm[0, 2, 0, 4] = 0.5  # joint 2 (centre) at x = 4
    out = flip_back(hm, [1, 0, 2], shift=False)
    assert out[0, 1, 2, 3] == 1.0 and out[0, 1].sum() == 1.0  # becomes joint 1, x = 5 - 1 - 1
    assert out[0, 0].sum() == 0
    assert out[0, 2, 0, 0] == 0.5
    shifted = flip_back(hm, [1, 0, 2])
    assert shifted[0, 1, 2, 4] == 1.0 and shifted[0, 1].sum() == 1.0  # one pixel right
    assert shifted[0, 2, 0, 1] == 0.5 and shifted[0, 2, 0, 0] == 0.5  # column 0 kept


def test_flip_test_shift_undoes_the_stride_offset():
    # A joint at crop x (192 wide) is at 191 - x in the mirrored crop; decoded and flipped back,
    # the mirror of the heatmap puts it at x/4 - 0.75; the one-pixel shift at x/4 + 0.25.
    rng = np.random.default_rng(1)
    crop = torch.stack([torch.as_tensor(rng.uniform(20, 170, 50)),
                        torch.as_tensor(rng.uniform(20, 230, 50))], dim=-1).float()
    mirrored = crop.clone()
    mirrored[:, 0] = 191 - crop[:, 0]
    maps, _ = gaussian_targets(mirrored[:, None] / 4, torch.ones(50, 1), (H, W))
    plain, _ = decode_heatmaps(flip_back(maps, [0], shift=False), dark=True)
    shifted, _ = decode_heatmaps(flip_back(maps, [0]), dark=True)
    truth = crop[:, None] / 4
    assert torch.allclose(plain[..., 0] - truth[..., 0], torch.tensor(-0.75), atol=1e-3)
    assert torch.allclose(shifted[..., 0] - truth[..., 0], torch.tensor(0.25), atol=1e-3)
    assert torch.allclose(shifted[..., 1], truth[..., 1], atol=1e-3)


def test_flip_joints_swaps_and_mirrors():
    joints = np.array([[1.0, 2.0, 1.0], [10.0, 3.0, 0.0], [5.0, 5.0, 1.0]])
    out = flip_joints(joints, [1, 0, 2], width=20)
    assert out.tolist() == [[9.0, 3.0, 0.0], [18.0, 2.0, 1.0], [14.0, 5.0, 1.0]]


def test_crop_matrix_maps_box_to_crop():
    box = (100.0, 80.0, 60.0, 80.0)  # aspect 3:4
    m = crop_matrix(box, (256, 192))
    assert np.allclose(apply_affine([100.0, 80.0], m), [96, 128])  # centre → crop centre
    assert np.allclose(apply_affine([70.0, 40.0], m), [0, 0])  # box corner → crop corner
    inv = crop_matrix(box, (256, 192), inverse=True)
    assert np.allclose(inv, crop_matrix_inverse(m))
    pts = np.random.default_rng(2).uniform(0, 200, (10, 2))
    assert np.allclose(apply_affine(apply_affine(pts, m), inv), pts)
    # A rotated crop keeps the centre fixed and the distances scaled by 192 / 60.
    r = crop_matrix(box, (256, 192), rotation=30.0)
    assert np.allclose(apply_affine([100.0, 80.0], r), [96, 128])
    d = apply_affine([110.0, 80.0], r) - [96, 128]
    assert np.linalg.norm(d) == pytest.approx(10 * 192 / 60)
    assert abs(d[1]) > 1  # turned: no longer horizontal


def test_heatmap_image_round_trip():
    boxes = torch.tensor([[50.0, 60.0, 45.0, 60.0], [120.0, 90.0, 75.0, 100.0]])
    joints = torch.tensor([[[40.0, 50.0], [60.0, 80.0]], [[100.0, 70.0], [130.0, 120.0]]])
    hm = torch.stack([image_to_heatmap(joints[i], boxes[i].tolist(), (H, W), (256, 192))
                      for i in range(2)])
    back = heatmap_to_image(hm, boxes, (H, W), (256, 192))
    assert torch.allclose(back, joints, atol=1e-4)
    # The box centre is the heatmap centre (W/2, H/2) = (24, 32).
    centre = image_to_heatmap(boxes[0, :2][None], boxes[0].tolist(), (H, W), (256, 192))
    assert torch.allclose(centre, torch.tensor([[24.0, 32.0]]))


def test_warp_crop_follows_the_matrix():
    image = torch.zeros(3, 120, 100, dtype=torch.uint8)
    image[:, 70, 30] = 255  # one bright pixel at x = 30, y = 70
    box = (40.0, 60.0, 48.0, 64.0)
    m = crop_matrix(box, (64, 48))  # scale 1: a plain shift
    crop = warp_crop(image, m, (64, 48))
    assert crop.shape == (3, 64, 48)
    y, x = divmod(int(crop[0].argmax()), 48)
    assert np.allclose([x, y], apply_affine([30.0, 70.0], m)) and crop[0, y, x] == 255
    outside = warp_crop(image, crop_matrix((500.0, 500.0, 48.0, 64.0), (64, 48)), (64, 48))
    assert (outside == 0).all()  # zeros beyond the image


def test_joints_box_aspect_and_padding():
    joints = np.array([[10.0, 20.0], [30.0, 120.0], [20.0, 60.0]])
    cx, cy, w, h = joints_box(joints)
    assert (cx, cy) == (20.0, 70.0)
    assert w / h == pytest.approx(0.75) and h == pytest.approx(100 * 1.25)
    cx, cy, w, h = joints_box(np.array([[0.0, 0.0], [90.0, 30.0]]))  # wide: height grows
    assert w == pytest.approx(90 * 1.25) and h == pytest.approx(120 * 1.25)


def test_augmentation_draws_stay_in_range():
    rng = np.random.default_rng(0)
    draws = np.array([random_scale_rotation(rng) for _ in range(2000)])
    assert draws[:, 0].min() >= 0.65 and draws[:, 0].max() <= 1.35
    assert np.abs(draws[:, 1]).max() <= 90
    assert 0.35 < (draws[:, 1] == 0).mean() < 0.45  # rotated with probability 0.6
    joints = np.array([[float(i), float(10 * i)] for i in range(14)])
    box = half_body_box(joints, np.ones(14, bool), range(6, 14), rng)
    assert box is not None and box[2] / box[3] == pytest.approx(0.75)
    assert half_body_box(joints, np.eye(14, dtype=bool)[0], range(6, 14), rng) is None
