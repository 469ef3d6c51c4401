"""cnnkit.ops.conv2d against the oracle F.conv2d, in float64 (STYLE.md habit 9)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from cnnkit.ops import conv2d, conv_output_size
from cnnkit.utils import CnnkitError

IMPLS = ["im2col", "direct"]
MODES = ["cross_correlation", "convolution"]
# the oracle's own note that "same" with an even kernel copies the input: expected, not a problem
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

# every stride × padding × dilation combination torch allows ("same" needs stride 1); groups and
# bias cycle through 1/2/4 and with/without so each value meets every stride and padding
GRID = [
    dict(stride=s, padding=p, dilation=d, groups=(1, 2, 4)[i % 3], bias=i % 2 == 0)
    for i, (s, p, d) in enumerate(
        (s, p, d)
        for s, p, d in itertools.product([1, 2, 3], [0, 1, (2, 1), "same", "valid"], [1, 2])
        if not (p == "same" and s != 1))
]


def _case(groups: int, bias: bool, kernel=(3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, 4 // groups, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64) if bias else None
    return x, w, b


def _oracle_weight(w, mode):
    return w.flip(-2, -1) if mode == "convolution" else w  # true convolution = flipped kernel


def _assert_matches_oracle(x, w, b, impl, mode, **kw):
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    ours = conv2d(*leaves[:2], leaves[2] if b is not None else None, impl=impl, mode=mode, **kw)
    ref_leaves = [t.clone().requires_grad_() for t in leaves]
    ref = F.conv2d(ref_leaves[0], _oracle_weight(ref_leaves[1], mode),
                   ref_leaves[2] if b is not None else None, **kw)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(ours, leaves, grad_out)
    want = torch.autograd.grad(ref, ref_leaves, grad_out)
    for name, a, e in zip(["input", "weight", "bias"], got, want):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0, msg=f"grad {name} differs")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "s{stride}-p{padding}-d{dilation}-g{groups}"
                         .format(**c).replace(" ", ""))
def test_grid_against_functional_conv2d(cfg, impl, mode):
    cfg = dict(cfg)
    groups = cfg.pop("groups")
    x, w, b = _case(groups, cfg.pop("bias"))
    _assert_matches_oracle(x, w, b, impl, mode, groups=groups, **cfg)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel, kw", [
    ((4, 4), dict(padding="same")),                        # even kernel: torch pads 1 top, 2 bottom
    ((4, 2), dict(padding="same", dilation=(1, 3))),       # odd total on one axis only
    ((1, 1), dict(stride=2)),                              # 1×1 conv: a per-pixel linear map
    ((9, 8), dict()),                                      # kernel as large as the input: 1×1 out
    ((3, 3), dict(stride=(1, 3), padding=(0, 2), dilation=(2, 1))),
])
def test_special_shapes(impl, kernel, kw):
    x, w, b = _case(1, True, kernel=kernel, seed=1)
    _assert_matches_oracle(x, w, b, impl, "cross_correlation", **kw)


@pytest.mark.parametrize("impl", IMPLS)
def test_unbatched_input(impl):
    x, w, b = _case(2, True)
    out = conv2d(x[0], w, b, padding=1, groups=2, impl=impl)
    torch.testing.assert_close(out, F.conv2d(x[0], w, b, padding=1, groups=2), atol=1e-10, rtol=0)


def test_convolution_mode_is_the_chapters_formula():
    # (I ∗ K)(x, y) = Σ_i Σ_j I(i, j) K(x − i, y − j), K zero outside its support: the "full"
    # convolution, i.e. padding k − 1, written as the literal double sum
    g = torch.Generator().manual_seed(2)
    image, kernel = torch.randn(4, 5, generator=g, dtype=torch.float64), \
        torch.randn(3, 2, generator=g, dtype=torch.float64)
    (h, w), (kh, kw) = image.shape, kernel.shape
    full = torch.zeros(h + kh - 1, w + kw - 1, dtype=torch.float64)
    for x, y in itertools.product(range(full.shape[0]), range(full.shape[1])):
        for i, j in itertools.product(range(h), range(w)):
            if 0 <= x - i < kh and 0 <= y - j < kw:
                full[x, y] += image[i, j] * kernel[x - i, y - j]
    for impl in IMPLS:
        ours = conv2d(image[None, None], kernel[None, None], padding=(kh - 1, kw - 1),
                      mode="convolution", impl=impl)[0, 0]
        torch.testing.assert_close(ours, full, atol=1e-12, rtol=0)
    cross = conv2d(image[None, None], kernel[None, None], padding=(kh - 1, kw - 1))[0, 0]
    assert not torch.allclose(cross, full)  # without the flip it is a different operation


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck(impl, mode):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return conv2d(x, w, b, stride=2, padding=(1, 0), dilation=(1, 2), groups=2,
                      mode=mode, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_no_grad_needed_for_constant_weight():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)  # a fixed filter, e.g. Sobel
    (gx,) = torch.autograd.grad(conv2d(x, w).sum(), x)
    (ref,) = torch.autograd.grad(F.conv2d(x, w).sum(), x)
    torch.testing.assert_close(gx, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", [
    (28, 5, 1, 0, 1), (12, 5, 1, 0, 1), (32, 3, 2, 1, 1), (7, 3, 3, 2, 2), (9, 2, 2, 0, 4),
    (224, 7, 2, 3, 1), (5, 5, 1, 0, 1),
])
def test_output_size_formula_matches_torch(size, kernel, stride, padding, dilation):
    out = F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, kernel, kernel),
                   stride=stride, padding=padding, dilation=dilation)
    assert conv_output_size(size, kernel, stride, padding, dilation) == out.shape[-1]


def test_output_size_rejects_a_kernel_that_does_not_fit():
    with pytest.raises(CnnkitError, match="larger than the padded input"):
        conv_output_size(4, 3, padding=0, dilation=2)
    with pytest.raises(CnnkitError, match="stride must be positive"):
        conv_output_size(8, 3, stride=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_shape, w_shape, kw, match", [
    ((1, 3, 4, 4), (2, 3, 5, 5), {}, "larger than the padded input"),
    ((1, 3, 4, 4), (2, 3, 3, 3), dict(dilation=2), "larger than the padded input"),
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(stride=0), "stride must be positive"),
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(stride=(1, -1)), "stride must be positive"),
    ((1, 3, 8, 8), (2, 1, 3, 3), {}, "channel mismatch: the input has 3 channels"),
    ((1, 4, 8, 8), (4, 4, 3, 3), dict(groups=2), "channel mismatch"),
    ((1, 3, 8, 8), (2, 1, 3, 3), dict(groups=2), "3 input channels are not divisible by groups=2"),
    ((1, 4, 8, 8), (3, 2, 3, 3), dict(groups=2), "3 output channels"),
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(padding=-1), "padding must be non-negative"),
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(padding="same", stride=2), "needs stride 1"),
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(padding="sane"), "did you mean same"),
    ((3, 8, 8, 1, 1), (2, 3, 3, 3), {}, "expects an input of shape"),
    ((1, 3, 8, 8), (2, 3, 3), {}, "expects a weight of shape"),
])
def test_bad_arguments_raise_one_line_errors(impl, x_shape, w_shape, kw, match):
    with pytest.raises(CnnkitError, match=match) as err:
        conv2d(torch.zeros(x_shape), torch.zeros(w_shape), impl=impl, **kw)
    assert "\n" not in str(err.value)


def test_unknown_mode_or_impl():
    x, w = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)
    with pytest.raises(CnnkitError, match="did you mean convolution"):
        conv2d(x, w, mode="convolutoin")
    with pytest.raises(CnnkitError, match="did you mean im2col"):
        conv2d(x, w, impl="im2cl")
    with pytest.raises(CnnkitError, match=r"bias must have shape \(1,\)"):
        conv2d(x, w, torch.zeros(2))
