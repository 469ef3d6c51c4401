"""Bottom-up inference (inference/pose.py): maps computed at another input scale land on the
training scale's grid at the same image pixel; a single person's joints left out by the parse
are completed from the maps."""
import pytest
import torch
import torch.nn.functional as F

from cnnkit.inference.pose import UPSAMPLE, _complete, _resample
from cnnkit.ops.paf import Person


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


@pytest.mark.parametrize("factor", [0.75, 1.0, 1.25])
def test_a_peak_on_the_mirrored_input_lands_on_the_same_image_pixel(factor):
    """Flip test geometry: the mirror image's maps, resampled with `mirror_width`, put the
    peak back on its image pixel (the array mirror alone would be 7/8 of a cell off)."""
    scale, point = 1.25, (61.3, 47.8)
    grid = (40 * UPSAMPLE, 48 * UPSAMPLE)
    other = scale * factor
    width = 8 * round(48 * factor)  # the mirrored input, a multiple of the stride
    mirrored_x = (width - 1 - point[0] * other) / other  # input pixel x ↦ W − 1 − x
    maps = peak_maps((mirrored_x, point[1]), (round(40 * factor), round(48 * factor)), other,
                     sigma=2)
    found = image_peak(_resample(maps, grid, scale, other, mirror_width=width), scale)
    assert torch.allclose(found, torch.tensor(point), atol=0.25), found


def test_resampling_at_the_training_scale_is_the_plain_upsampling():
    maps = torch.rand(1, 3, 12, 16)
    grid = (12 * UPSAMPLE, 16 * UPSAMPLE)
    plain = F.interpolate(maps, size=grid, mode="bicubic", align_corners=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # borders clamp differently
    assert torch.allclose(_resample(maps, grid, 1.25, 1.25)[inner], plain[inner], atol=1e-5)


def test_a_single_persons_missing_joints_come_from_the_strongest_map_cells():
    maps = torch.zeros(3, 10, 12)
    maps[0, 2, 3], maps[1, 7, 9], maps[1, 1, 1], maps[2, 4, 5] = 0.9, 0.6, 0.4, 0.3
    parsed = Person(torch.tensor([[3.0, 2.0, 0.9], [float("nan")] * 3, [5.0, 4.0, 0.3]]), 1.5)
    done = _complete(parsed, maps)
    assert torch.allclose(done.joints, torch.tensor([[3, 2, 0.9], [9, 7, 0.6], [5, 4, 0.3]]))
    assert done.score == 1.5
    nobody = _complete(None, maps)  # nobody parsed: the person is every map's strongest cell
    assert nobody.joints[:, :2].tolist() == [[3, 2], [9, 7], [5, 4]] and nobody.score == 0.0
