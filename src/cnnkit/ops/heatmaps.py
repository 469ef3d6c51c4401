"""The heatmap codec of top-down pose estimation, and the crop geometry it lives in.

Conventions (those of the HRNet reference code, leoxiaobin/deep-high-resolution-net.pytorch,
`lib/dataset/JointsDataset.py`, `lib/core/inference.py`, `lib/utils/transforms.py`):

- A point's coordinate is its pixel index: pixel (i, j) sits at x = i, y = j (OpenCV's
  convention). A joint at crop coordinate p is at heatmap coordinate p / stride, stride =
  crop size / heatmap size (4 for HRNet).
- A person box is (cx, cy, w, h) in image pixels (the reference code's centre and scale·200).
  Its crop is the affine map that sends the box centre to the crop centre (out_w/2, out_h/2)
  and the box width onto the crop width, optionally rotated about the centre.

Encoding: one Gaussian per joint (σ = 2 at 64×48, scaled with the heatmap), centred on the
joint's exact sub-pixel position, as the unbiased encoding of DARK (Zhang et al. 2020,
"Distribution-Aware Coordinate Representation for Human Pose Estimation",
https://arxiv.org/abs/1910.06278 §3.2) does; the reference code rounds the centre to the nearest
pixel (`round_centre=True` reproduces it), which alone costs up to half a heatmap pixel (2 px of
a 256×192 crop). Decoding: argmax, then a quarter pixel towards the higher neighbour (the
reference `get_final_preds`), or optionally DARK's Taylor expansion of the log-heatmap.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnkit.ops.filters import gaussian_blur

SIGMA_AT_64 = 2.0  # the reference σ (MODEL.SIGMA) for a 64-pixel-high heatmap (256×192 input)


def default_sigma(heatmap_size: tuple[int, int]) -> float:
    """σ scaled with the heatmap height: 2 at 64×48 (256×192 input), 3 at 96×72 (384×288)."""
    return SIGMA_AT_64 * heatmap_size[0] / 64


# --- encoding ---

def gaussian_targets(joints: torch.Tensor, weights: torch.Tensor, heatmap_size: tuple[int, int],
                     sigma: float | None = None, *, round_centre: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian heatmap targets and their per-joint weights.

    joints: (N, J, 2) x, y in heatmap coordinates; weights: (N, J), 1 for a joint to learn, 0
    for one to ignore (not annotated, or occluded where the caller chooses so). A joint whose
    centre falls outside the heatmap ([-0.5, W - 0.5) × [-0.5, H - 0.5)) gets weight 0 and an
    all-zero map, as does every joint of weight 0. Returns targets (N, J, H, W) with peak 1 and
    target_weight (N, J), both float32.
    """
    h, w = heatmap_size
    sigma = default_sigma(heatmap_size) if sigma is None else float(sigma)
    centre = joints.to(torch.float32)
    if round_centre:  # the reference generate_target: int(x + 0.5)
        centre = torch.floor(centre + 0.5)
    inside = ((centre[..., 0] >= -0.5) & (centre[..., 0] < w - 0.5) &
              (centre[..., 1] >= -0.5) & (centre[..., 1] < h - 0.5))
    weight = weights.to(torch.float32) * inside  # (N, J)
    xs = torch.arange(w, dtype=torch.float32)
    ys = torch.arange(h, dtype=torch.float32)
    # Separable: exp(-(dx² + dy²) / 2σ²) = gx · gy, an outer product per joint.
    gx = torch.exp(-(xs - centre[..., 0:1]) ** 2 / (2 * sigma ** 2))  # (N, J, W)
    gy = torch.exp(-(ys - centre[..., 1:2]) ** 2 / (2 * sigma ** 2))  # (N, J, H)
    targets = gy.unsqueeze(-1) * gx.unsqueeze(-2)  # (N, J, H, W)
    return targets * (weight > 0)[..., None, None], weight


def joints_mse_loss(heatmaps: torch.Tensor, targets: torch.Tensor,
                    target_weight: torch.Tensor) -> torch.Tensor:
    """The reference JointsMSELoss: ½ · mean over batch, joints and pixels of (w·(pred − gt))²,
    so a joint of weight 0 contributes nothing (lib/core/loss.py, use_target_weight=True)."""
    w = target_weight[..., None, None]  # (N, J, 1, 1)
    return 0.5 * F.mse_loss(heatmaps * w, targets * w)


# --- decoding ---

def decode_heatmaps(heatmaps: torch.Tensor, *, dark: bool = False, blur_kernel: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (N, J, 2) in heatmap coordinates and their peak values (N, J).

    Default: the argmax moved a quarter pixel towards the higher neighbour along x and along y
    (reference get_final_preds): with the peak's true position d ∈ [−½, ½] from the argmax, the
    quarter step halves the worst error, ½ → ¼ pixel. The reference skips the step on the outer
    two rows/columns (`1 < px < W - 1`); here it is skipped only where a neighbour is missing.

    dark=True: DARK's second-order Taylor step at the argmax, x* = m − H⁻¹∇ of the
    log-heatmap (Zhang et al. 2020 §3.1), exact for a Gaussian peak; `blur_kernel` (odd, e.g.
    2·3σ + 1) first smooths a network output towards a Gaussian, keeping each map's maximum.
    A peak ≤ 0 (a blank map) is reported with maxval ≤ 0 at its argmax, unrefined.
    """
    n, j, h, w = heatmaps.shape
    hm = heatmaps.detach().to(torch.float32)
    flat = hm.reshape(n, j, h * w)
    maxvals, idx = flat.max(dim=-1)  # (N, J)
    px, py = idx % w, idx // w
    coords = torch.stack([px, py], dim=-1).to(torch.float32)  # (N, J, 2)
    if dark:
        return coords + _dark_offset(hm, px, py, blur_kernel) * (maxvals > 0)[..., None], maxvals

    def at(dy, dx):  # the value at (py + dy, px + dx), clamped into the map
        yy, xx = (py + dy).clamp(0, h - 1), (px + dx).clamp(0, w - 1)
        return flat.gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1)

    has_x = (px > 0) & (px < w - 1) & (maxvals > 0)
    has_y = (py > 0) & (py < h - 1) & (maxvals > 0)
    coords[..., 0] += 0.25 * torch.sign(at(0, 1) - at(0, -1)) * has_x
    coords[..., 1] += 0.25 * torch.sign(at(1, 0) - at(-1, 0)) * has_y
    return coords, maxvals


def _dark_offset(hm: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                 blur_kernel: int) -> torch.Tensor:
    """−H⁻¹∇ of log(heatmap) at (px, py) by central differences; 0 where a neighbour is missing
    or the Hessian is not negative definite (no peak to refine)."""
    n, j, h, w = hm.shape
    if blur_kernel > 1:
        peak = hm.amax(dim=(-2, -1), keepdim=True)
        x = gaussian_blur(hm, (blur_kernel - 1) / 6)  # σ such that the kernel spans ±3σ
        hm = x * peak / x.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    log = hm.clamp_min(1e-10).log().reshape(n, j, h * w)

    def at(dy, dx):
        yy, xx = (py + dy).clamp(0, h - 1), (px + dx).clamp(0, w - 1)
        return log.gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1)

    c = at(0, 0)
    dx, dy = 0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))
    dxx, dyy = at(0, 1) - 2 * c + at(0, -1), at(1, 0) - 2 * c + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1) & (det > 1e-12) & (dxx < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    # −H⁻¹ g with H = [[dxx, dxy], [dxy, dyy]]: H⁻¹ = [[dyy, −dxy], [−dxy, dxx]] / det.
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(-dxy * dx + dxx * dy) / safe
    off = torch.stack([off_x, off_y], dim=-1) * ok[..., None]
    return off.clamp(-1.0, 1.0)  # beyond one pixel the argmax would have been elsewhere


def flip_back(heatmaps: torch.Tensor, flip_index: Sequence[int], *, shift: bool = True
              ) -> torch.Tensor:
    """Heatmaps of a horizontally flipped crop, brought back to the unflipped crop: mirror the
    x axis, give joint j the map of its mirror partner flip_index[j] (left ↔ right), and with
    `shift` move everything one pixel right (reference TEST.SHIFT_HEATMAP: x ↦ W − 1 − x in
    the crop becomes x/s ↦ (W − 1 − x)/s on the heatmap, one pixel from the mirror of the map,
    (W/s − 1) − x/s, for stride s = 4; the shift recovers most of that).
    Flip test then averages: (heatmaps + flip_back(model(flipped))) / 2."""
    out = heatmaps.flip(-1)[:, list(flip_index)]  # (N, J, H, W) mirrored, joints swapped
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)  # x ← x − 1; column 0 kept
    return out


# --- crop geometry ---

def crop_matrix(box: Sequence[float], output_size: tuple[int, int], rotation: float = 0.0,
                *, inverse: bool = False) -> np.ndarray:
    """The (2, 3) affine map from image to crop coordinates (inverse=True: crop to image).

    box (cx, cy, w, h) in image pixels; output_size (H, W). The box centre goes to
    (W/2, H/2), its width onto W, and the crop is turned by `rotation` degrees about the box
    centre, with the reference get_affine_transform's sign. The box should have
    the crop's aspect ratio (joints_box makes it so): only the width sets the scale.
    """
    cx, cy, bw, _ = (float(v) for v in box)
    out_h, out_w = output_size
    s = out_w / bw
    t = math.radians(rotation)
    cos, sin = math.cos(t), math.sin(t)
    # x_crop = s·R(−θ)(x − c) + (W/2, H/2): a rotation about the box centre, then scale and move.
    a = np.array([[s * cos, s * sin], [-s * sin, s * cos]], dtype=np.float64)
    m = np.concatenate([a, (np.array([out_w / 2, out_h / 2]) - a @ [cx, cy])[:, None]], axis=1)
    return crop_matrix_inverse(m) if inverse else m


def apply_affine(points, matrix: np.ndarray):
    """(..., 2) points through a (2, 3) affine matrix; numpy in, numpy out; torch in, torch out."""
    if isinstance(points, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return points @ m[:, :2].T + m[:, 2]
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def heatmap_to_image(coords: torch.Tensor, boxes: torch.Tensor, heatmap_size: tuple[int, int],
                     input_size: tuple[int, int]) -> torch.Tensor:
    """Heatmap coordinates (N, J, 2) of crops of `boxes` (N, 4) → image coordinates (N, J, 2):
    × stride to the crop, then the inverse crop transform (reference transform_preds)."""
    stride = torch.tensor([input_size[1] / heatmap_size[1], input_size[0] / heatmap_size[0]],
                          dtype=coords.dtype)
    crop = coords * stride
    return torch.stack([apply_affine(crop[i], crop_matrix(boxes[i].tolist(), input_size,
                                                          inverse=True))
                        for i in range(len(boxes))]) if len(boxes) else crop


def image_to_heatmap(joints: torch.Tensor, box: Sequence[float], heatmap_size: tuple[int, int],
                     input_size: tuple[int, int], rotation: float = 0.0) -> torch.Tensor:
    """Image coordinates (J, 2) of one person → heatmap coordinates of the crop of `box`."""
    stride = torch.tensor([input_size[1] / heatmap_size[1], input_size[0] / heatmap_size[0]],
                          dtype=torch.float64)
    crop = apply_affine(joints.to(torch.float64), crop_matrix(box, input_size, rotation))
    return (crop / stride).to(torch.float32)


def warp_crop(image: torch.Tensor, matrix: np.ndarray, output_size: tuple[int, int]
              ) -> torch.Tensor:
    """The crop (C, H, W) float32 of `image` (C, Hi, Wi) under the image → crop affine `matrix`:
    bilinear, zeros outside the image (cv2.warpAffine's default border, as the reference)."""
    c, hi, wi = image.shape
    out_h, out_w = output_size
    inv = crop_matrix_inverse(matrix)
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64),
                            torch.arange(out_w, dtype=torch.float64), indexing="ij")
    src = apply_affine(torch.stack([xs, ys], dim=-1), inv)  # (H, W, 2) image coordinates
    # grid_sample's align_corners=True puts −1 and 1 on the first and last pixel centres: the
    # pixel-index convention of this module.
    grid = torch.stack([2 * src[..., 0] / max(wi - 1, 1) - 1,
                        2 * src[..., 1] / max(hi - 1, 1) - 1], dim=-1)
    out = F.grid_sample(image[None].to(torch.float32), grid[None].to(torch.float32),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0]  # (C, H, W)


def crop_matrix_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine matrix."""
    a = np.asarray(matrix, dtype=np.float64)[:, :2]
    inv = np.linalg.inv(a)
    return np.concatenate([inv, (-inv @ np.asarray(matrix, dtype=np.float64)[:, 2])[:, None]],
                          axis=1)


def joints_box(joints: np.ndarray, mask: np.ndarray | None = None, *, aspect: float = 0.75,
               padding: float = 1.25) -> np.ndarray:
    """The person box (cx, cy, w, h) of the joints (J, 2) where `mask` is true: their extent,
    widened (or heightened) to `aspect` = w / h (¾ for 256×192 crops) and then enlarged by
    `padding` (1.25 for whole persons in the reference _box2cs; its half-body box uses 1.5)."""
    pts = np.asarray(joints, dtype=np.float64)
    if mask is not None:
        pts = pts[np.asarray(mask, dtype=bool)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    (cx, cy), (w, h) = (lo + hi) / 2, np.maximum(hi - lo, 1.0)  # a single joint: 1 px
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return np.array([cx, cy, w * padding, h * padding])


def flip_joints(joints: np.ndarray, flip_index: Sequence[int], width: int) -> np.ndarray:
    """Joints (J, ≥2) of an image mirrored horizontally (width pixels): x ↦ width − 1 − x, and
    each joint takes its mirror partner's place (reference fliplr_joints). Extra columns
    (visibility) travel with their joint."""
    out = np.array(joints, dtype=np.float64)[list(flip_index)]
    out[:, 0] = width - 1 - out[:, 0]
    return out


# --- augmentation draws (reference JointsDataset.__getitem__, COCO configs) ---

def random_scale_rotation(rng: np.random.Generator, *, scale_factor: float = 0.35,
                          rotation_factor: float = 45.0, rotation_prob: float = 0.6
                          ) -> tuple[float, float]:
    """A box scale multiplier in [1 − sf, 1 + sf] (normal, σ = sf, clipped) and a rotation in
    degrees, normal with σ = rf clipped to ±2rf, drawn with probability 0.6, else 0 (the
    reference's SCALE_FACTOR 0.35, ROT_FACTOR 45 and its hard-coded 0.6)."""
    scale = float(np.clip(rng.standard_normal() * scale_factor + 1, 1 - scale_factor,
                          1 + scale_factor))
    rotation = float(np.clip(rng.standard_normal() * rotation_factor, -2 * rotation_factor,
                             2 * rotation_factor)) if rng.random() <= rotation_prob else 0.0
    return scale, rotation


def half_body_box(joints: np.ndarray, visible: np.ndarray, upper_ids: Sequence[int],
                  rng: np.random.Generator, *, aspect: float = 0.75, padding: float = 1.5
                  ) -> np.ndarray | None:
    """The reference half-body augmentation's box: the visible upper-body joints (or, by coin
    flip or when fewer than 3 are visible, the lower-body ones), centred on their mean, their
    extent fixed to `aspect` and enlarged 1.5×; None when fewer than 2 joints are left. The
    reference applies it with probability 0.3 to persons with more than 8 visible joints."""
    vis = np.asarray(visible, dtype=bool)
    upper = np.zeros(len(vis), dtype=bool)
    upper[list(upper_ids)] = True
    up, low = np.asarray(joints)[vis & upper], np.asarray(joints)[vis & ~upper]
    chosen = up if (rng.standard_normal() < 0.5 and len(up) > 2) else (low if len(low) > 2 else up)
    if len(chosen) < 2:
        return None
    box = joints_box(chosen, aspect=aspect, padding=padding)
    box[:2] = chosen[:, :2].mean(axis=0)  # the reference centres on the mean, not the extent
    return box
