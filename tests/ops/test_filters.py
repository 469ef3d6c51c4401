"""Edge kernels and edge maps: orientation, the chapter's channel rule, F.conv2d as the oracle."""
import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnkit.ops import (EDGE_KERNELS, LAPLACIAN, PREWITT_X, PREWITT_Y, SCHARR_X, SCHARR_Y, SOBEL_X,
                        SOBEL_Y, conv2d, edge_maps)
from cnnkit.ops.filters import gaussian_blur
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS


def _cifar_image() -> torch.Tensor:
    """A real colour image, (3, 32, 32) in [0, 1]."""
    with zipfile.ZipFile(DATASETS / "cifar10-jpg" / "test.zip") as archive:
        data = archive.read("test/airplane/0000.jpg")
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)                            # (3, H, W)


def _membrane_image() -> torch.Tensor:
    """A real grey image, (512, 512) uint8."""
    path = DATASETS / "isbi2012-membrane" / "train" / "image" / "0.png"
    return torch.from_numpy(np.asarray(Image.open(path).convert("L")).copy())


def test_kernels_are_transposes_and_sum_to_zero():
    for kx, ky in [(SOBEL_X, SOBEL_Y), (PREWITT_X, PREWITT_Y), (SCHARR_X, SCHARR_Y)]:
        assert torch.equal(ky, kx.T)
        assert kx.sum() == 0 and torch.equal(kx, -kx.flip(1))  # a difference across columns
    assert LAPLACIAN.sum() == 0 and torch.equal(LAPLACIAN, LAPLACIAN.T)


def test_flip_changes_the_sign_of_sobel_but_not_the_laplacian():
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    for kernel, sign in [(SOBEL_X, -1.0), (LAPLACIAN, 1.0)]:
        w = kernel.double()[None, None]
        conv, corr = conv2d(x, w, mode="convolution"), conv2d(x, w, mode="cross_correlation")
        torch.testing.assert_close(conv, sign * corr)


@pytest.mark.parametrize("kernel", sorted(EDGE_KERNELS))
def test_vertical_step_is_a_vertical_edge(kernel):
    # dark left half, bright right half: intensity changes across columns only
    image = torch.zeros(8, 10, dtype=torch.float64)
    image[:, 5:] = 1.0
    maps = edge_maps(image, kernel)
    kx = EDGE_KERNELS[kernel][0]
    column_weight = kx[:, 2].sum().item()   # the response to a unit step: sum of the + column
    assert torch.count_nonzero(maps["horizontal"]) == 0
    expected = torch.zeros_like(image)
    expected[:, 4:6] = column_weight         # the two columns whose window straddles the step
    torch.testing.assert_close(maps["vertical"], expected)
    torch.testing.assert_close(maps["magnitude"], expected.abs())
    # and the transposed image is a horizontal edge
    turned = edge_maps(image.T, kernel)
    assert torch.count_nonzero(turned["vertical"]) == 0
    torch.testing.assert_close(turned["horizontal"], expected.T)


def test_colour_image_uses_one_filter_spanning_all_channels():
    image = _cifar_image()
    maps = edge_maps(image, "sobel", padding="zeros")
    # oracle: F.conv2d with one (1, 3, 3, 3) filter, the Sobel kernel on every channel
    weight = SOBEL_X.double().expand(1, 3, 3, 3)
    torch.testing.assert_close(maps["vertical"], F.conv2d(image[None], weight, padding=1)[0, 0])
    # the filter sums over channels: the map is the sum of the per-channel maps
    per_channel = sum(edge_maps(image[c], "sobel", padding="zeros")["vertical"] for c in range(3))
    torch.testing.assert_close(maps["vertical"], per_channel)
    assert maps["magnitude"].shape == image.shape[1:]


def test_real_grey_image_paddings():
    image = _membrane_image()                                                # uint8 (512, 512)
    x = image.float()[None, None] / 255.0
    maps = edge_maps(image, "scharr")                                        # replicate border
    ref_v = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), SCHARR_X[None, None])[0, 0]
    ref_h = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), SCHARR_Y[None, None])[0, 0]
    torch.testing.assert_close(maps["vertical"], ref_v, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(maps["magnitude"], torch.hypot(ref_v, ref_h), atol=1e-4, rtol=1e-5)
    valid = edge_maps(image, "scharr", padding="valid")["vertical"]
    assert valid.shape == (510, 510)
    torch.testing.assert_close(valid, maps["vertical"][1:-1, 1:-1], atol=1e-4, rtol=1e-5)


def test_constant_image_has_no_edges_with_replicate_padding_but_a_frame_with_zeros():
    image = torch.full((3, 6, 6), 0.5)
    assert torch.count_nonzero(edge_maps(image)["magnitude"]) == 0
    framed = edge_maps(image, padding="zeros")["magnitude"]
    assert framed[0].abs().sum() > 0 and torch.count_nonzero(framed[1:-1, 1:-1]) == 0


def test_explicit_kernels_equal_named_ones():
    image = _cifar_image()
    named = edge_maps(image, "prewitt")
    for explicit in (edge_maps(image, PREWITT_X, PREWITT_Y), edge_maps(image, PREWITT_X)):
        for key in named:
            torch.testing.assert_close(explicit[key], named[key])
    # any kernel size: a 5×5 Sobel (smoothing [1, 4, 6, 4, 1] × difference), against the oracle
    sobel5 = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([-1.0, -2, 0, 2, 1]))
    maps = edge_maps(image, sobel5.double(), padding="zeros")
    ref = F.conv2d(image[None], sobel5.double().expand(1, 3, 5, 5), padding=2)[0, 0]
    torch.testing.assert_close(maps["vertical"], ref)
    ref = F.conv2d(image[None], sobel5.T.double().expand(1, 3, 5, 5), padding=2)[0, 0]
    torch.testing.assert_close(maps["horizontal"], ref)


def test_bad_inputs():
    with pytest.raises(CnnkitError, match="did you mean sobel"):
        edge_maps(torch.zeros(5, 5), "sobol")
    with pytest.raises(CnnkitError, match="did you mean zeros"):
        edge_maps(torch.zeros(5, 5), padding="zero")
    with pytest.raises(CnnkitError, match=r"\(C, H, W\) or \(H, W\)"):
        edge_maps(torch.zeros(1, 3, 5, 5))
    with pytest.raises(CnnkitError, match="two square 2-D tensors of one shape"):
        edge_maps(torch.zeros(5, 5), SOBEL_X, torch.zeros(2, 2))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5 / 3])
def test_gaussian_blur_equals_one_2d_convolution_with_the_outer_product_kernel(sigma):
    x = torch.rand(2, 3, 9, 11)
    radius = max(1, round(3 * sigma))
    g = torch.exp(-torch.arange(-radius, radius + 1.0) ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(g, g) / g.sum() ** 2                  # (K, K), sums to 1
    padded = F.pad(x, [radius] * 4, mode="reflect")
    expected = F.conv2d(padded, kernel.expand(3, 1, -1, -1), groups=3)
    assert torch.allclose(gaussian_blur(x, sigma, padding="reflect"), expected, atol=1e-6)
    flat = torch.full((1, 1, 5, 5), 0.25)
    assert torch.allclose(gaussian_blur(flat, sigma), flat)  # weights sum to 1
