"""Joint augmentation keeps image and mask aligned: a mask-shaped image warped with its mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.seg_augment import JointAugment, warp
from tests.conftest import DATASETS


@pytest.fixture(scope="module")
def masks() -> torch.Tensor:
    """Real ISBI membrane/cell masks, 0/1, with a band of void (255): (4, 96, 128) int64."""
    crops = []
    for i, (top, left) in enumerate([(0, 0), (100, 300), (300, 50), (380, 380)]):
        label = np.asarray(Image.open(DATASETS / "isbi2012-membrane/train/label" / f"{i}.png"))
        crop = label[top:top + 96, left:left + 128] == 255
        crops.append(torch.from_numpy(crop.astype(np.int64)))
    out = torch.stack(crops)
    out[:, :, 60:64] = 255  # void pixels must travel like any label
    return out


def _source_pixels(grid: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (x, y) in pixels that each output pixel reads (grid_sample, align_corners=False)."""
    return ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2


def test_elastic_warp_of_a_mask_shaped_image_matches_the_warped_mask(masks):
    """The image is the mask itself: bilinear and nearest sampling must agree wherever the four
    input pixels around the sampling point carry one label, i.e. off the label boundaries."""
    augment = JointAugment(crop_size=(80, 112), scale=(0.8, 1.25), hflip=True, vflip=True,
                           elastic=True)
    b, h, w = masks.shape
    image = masks.float().unsqueeze(1)  # (B, 1, H, W)
    grid = augment.sample_grid(image.shape, torch.Generator().manual_seed(3))
    warped_image, warped_mask = warp(image, masks, grid)
    # The call is the same grid applied: reproducible from the generator's state alone.
    again = augment(image, masks, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], warped_image) and torch.equal(again[1], warped_mask)
    x, y = _source_pixels(grid, h, w)
    x0, y0 = x.floor().long(), y.floor().long()
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    corners = torch.stack([masks[i][y0[i].clamp(0, h - 2) + dy, x0[i].clamp(0, w - 2) + dx]
                           for i in range(b) for dy in (0, 1) for dx in (0, 1)]).view(b, 4, 80, 112)
    uniform = inside & (corners == corners[:, :1]).all(1)  # (B, H', W')
    assert uniform.float().mean() > 0.6  # most pixels are off a boundary: a meaningful check
    assert torch.equal(warped_image[:, 0][uniform].round().long(), warped_mask[uniform])
    # The warp moved things (not the identity), and made no new label.
    assert not torch.equal(warped_mask, masks[:, 8:88, 8:120])
    assert set(warped_mask.unique().tolist()) <= {0, 1, 255}


def test_displacements_are_gaussian_with_sigma_10_on_a_3x3_grid():
    """Without scale, crop or flips the grid is the identity plus the bicubic-upsampled field,
    which passes exactly through the coarse points (corners, edge middles, centre)."""
    augment = JointAugment(hflip=False, elastic=True)
    grid = augment.sample_grid((400, 1, 33, 33), torch.Generator().manual_seed(0))
    x, y = _source_pixels(grid, 33, 33)
    identity = torch.arange(33.0)
    dx, dy = x - identity.view(1, 1, 33), y - identity.view(1, 33, 1)
    coarse = torch.stack([dx[:, ::16, ::16], dy[:, ::16, ::16]])  # (2, 400, 3, 3)
    assert abs(coarse.std().item() - 10.0) < 0.3 and abs(coarse.mean().item()) < 0.3
    # Between the coarse points the field is smooth (bicubic): its slope changes by under a pixel
    # per pixel, where independent per-pixel N(0, 10²) noise would change it by ~25.
    assert dx.diff(dim=2).diff(dim=2).abs().max() < 1 and dy.diff(dim=1).diff(dim=1).abs().max() < 1


def test_flips_and_crops_copy_pixels_exactly(masks):
    """At scale 1 every output pixel reads one whole input pixel: a window, maybe mirrored."""
    augment = JointAugment(crop_size=40, hflip=True, vflip=True)
    b, h, w = masks.shape
    images = torch.randn(b, 3, h, w)
    grid = augment.sample_grid(images.shape, torch.Generator().manual_seed(1))
    out_images, out_masks = augment(images, masks, torch.Generator().manual_seed(1))
    assert out_images.shape == (b, 3, 40, 40) and out_masks.shape == (b, 40, 40)
    x, y = _source_pixels(grid, h, w)
    assert (x - x.round()).abs().max() < 1e-3 and (y - y.round()).abs().max() < 1e-3
    xi, yi = x.round().long(), y.round().long()  # (B, 40, 40)
    steps = set()
    for i in range(b):
        # A window: columns step by +1 (or -1 when mirrored) along a row, rows likewise.
        step_x, step_y = xi[i, 0, 1] - xi[i, 0, 0], yi[i, 1, 0] - yi[i, 0, 0]
        assert (xi[i].diff(dim=1) == step_x).all() and (xi[i].diff(dim=0) == 0).all()
        assert (yi[i].diff(dim=0) == step_y).all() and (yi[i].diff(dim=1) == 0).all()
        steps.add((step_x.item(), step_y.item()))
        assert torch.equal(out_masks[i], masks[i][yi[i], xi[i]])
        assert torch.allclose(out_images[i], images[i][:, yi[i], xi[i]], atol=1e-4)
    assert steps <= {(1, 1), (-1, 1), (1, -1), (-1, -1)} and len(steps) > 1
    assert xi.min() >= 0 and xi.max() < w and yi.min() >= 0 and yi.max() < h
    # uint8 batches come back as uint8: the float result, rounded.
    images8 = (images.abs() * 60).clamp(0, 255).to(torch.uint8)
    out8, _ = augment(images8, masks, torch.Generator().manual_seed(1))
    out_float, _ = augment(images8.float(), masks, torch.Generator().manual_seed(1))
    assert out8.dtype == torch.uint8 and torch.equal(out8, out_float.round().to(torch.uint8))


def test_padding_is_zero_in_the_image_and_void_in_the_mask(masks):
    augment = JointAugment(scale=(0.55, 0.65), hflip=False)  # shrinks: the window overhangs
    b, h, w = masks.shape
    images = torch.rand(b, 2, h, w) + 1  # never 0 inside
    grid = augment.sample_grid(images.shape, torch.Generator().manual_seed(5))
    out_images, out_masks = warp(images, masks, grid, ignore_index=255)
    x, y = _source_pixels(grid, h, w)
    # grid_sample's nearest rounds half to even, as torch.round does.
    outside = (x.round() < 0) | (x.round() > w - 1) | (y.round() < 0) | (y.round() > h - 1)
    assert outside.float().mean() > 0.3
    assert torch.equal(out_masks == 255, outside | _void_inside(masks, x, y, outside))
    far = (x < -1) | (x > w) | (y < -1) | (y > h)  # no input pixel within bilinear reach
    assert (out_images[:, 0][far] == 0).all() and (out_images[:, 0][~outside] > 0).all()


def _void_inside(masks, x, y, outside):
    """Output pixels that read a void input pixel (nearest), away from the padding."""
    b, h, w = masks.shape
    xi, yi = x.round().long().clamp(0, w - 1), y.round().long().clamp(0, h - 1)
    read = torch.stack([masks[i][yi[i], xi[i]] for i in range(b)])
    return (read == 255) & ~outside


def test_settings_are_checked_and_the_identity_is_free(masks):
    with pytest.raises(ValueError, match="scale must be a range"):
        JointAugment(scale=(1.5, 1.0))
    with pytest.raises(ValueError, match="crop_size must be positive"):
        JointAugment(crop_size=0)
    off = JointAugment(hflip=False)
    images = torch.rand(4, 1, 96, 128)
    assert not off.active and off(images, masks, torch.Generator())[0] is images
