"""Bottom-up scale search: maps computed at another input scale land on the training scale's
grid at the same image pixel (inference/pose.py)."""
import pytest
import torch
import torch.nn.functional as F

from cnnkit.inference.pose import UPSAMPLE, _resample


def peak_maps(point: tuple[float, float], size: tuple[int, int], scale: float,
              sigma: float) -> torch.Tensor:
    """A Gaussian (1, 1, h, w) on the stride-8 map of an input at `scale` input pixels per image
    pixel, centred on image pixel `point` (x, y): map cell m is input pixel 8m."""
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64),
                            torch.arange(size[1], dtype=torch.float64), indexing="ij")
    cx, cy = (c * scale / 8 for c in point)
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))[None, None].float()


def image_peak(big: torch.Tensor, scale: float) -> torch.Tensor:
    """The image pixel (x, y) of a resampled map's peak: the centroid of its top values, then
    grid cell u ↦ ((u + ½)/4 − ½)·8/scale."""
    grid = big[0, 0]
    weights = (grid - 0.5 * grid.max()).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(grid.shape[0], dtype=torch.float32),
                            torch.arange(grid.shape[1], dtype=torch.float32), indexing="ij")
    cells = torch.stack([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
    return ((cells + 0.5) / UPSAMPLE - 0.5) * 8 / scale


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.25, 2.0])
def test_a_peak_at_another_scale_lands_on_the_same_image_pixel(factor):
    scale, point = 1.25, (61.3, 47.8)
    grid = (40 * UPSAMPLE, 48 * UPSAMPLE)  # the training scale's map is 40 × 48 cells
    other = scale * factor
    maps = peak_maps(point, (round(40 * factor) + 1, round(48 * factor) + 1), other, sigma=2)
    found = image_peak(_resample(maps, grid, scale, other), scale)
    # A map cell is 8 / (1.25 · factor) = 3.2 to 12.8 image pixels: a quarter pixel is exact.
    assert torch.allclose(found, torch.tensor(point), atol=0.25), found


def test_resampling_at_the_training_scale_is_the_plain_upsampling():
    maps = torch.rand(1, 3, 12, 16)
    grid = (12 * UPSAMPLE, 16 * UPSAMPLE)
    plain = F.interpolate(maps, size=grid, mode="bicubic", align_corners=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # borders clamp differently
    assert torch.allclose(_resample(maps, grid, 1.25, 1.25)[inner], plain[inner], atol=1e-5)
