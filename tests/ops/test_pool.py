"""cnnkit.ops pooling against F.max_pool2d / F.avg_pool2d in float64, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from cnnkit.ops import avg_pool2d, conv_output_size, max_pool2d
from cnnkit.utils import CnnkitError

POOLS = [(max_pool2d, F.max_pool2d), (avg_pool2d, F.avg_pool2d)]
CONFIGS = [  # kernel, stride, padding
    (2, None, 0),            # LeNet's 2/2 pool
    (2, 1, 0),               # overlapping windows share winners
    (3, 2, 1),               # ResNet stem pool
    ((3, 2), (2, 1), (1, 0)),
    (3, 3, 1),
    (1, 1, 0),
    (4, 4, 2),               # padding exactly half the kernel: a window of one real pixel row
]


@pytest.mark.parametrize("ours, oracle", POOLS, ids=["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
def test_against_functional(ours, oracle, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    out, ref = ours(x, kernel, stride, padding), oracle(x, kernel, stride, padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (got,), (want,) = torch.autograd.grad(out, x, grad_out), torch.autograd.grad(ref, x, grad_out)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    h, w = x.shape[2:]
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    s = k if stride is None else (stride if isinstance(stride, tuple) else (stride, stride))
    p = padding if isinstance(padding, tuple) else (padding, padding)
    assert out.shape[2:] == (conv_output_size(h, k[0], s[0], p[0]),
                             conv_output_size(w, k[1], s[1], p[1]))


def test_max_pool_ties_follow_torch():
    # after a ReLU whole windows are 0: the gradient must go where torch sends it (first maximum)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (2, 3, 8, 8), generator=g).double().requires_grad_()
    for kernel, stride, padding in [(2, 2, 0), (3, 1, 1), (3, 2, 1)]:
        grad_out = torch.randn(F.max_pool2d(x, kernel, stride, padding).shape, generator=g,
                               dtype=torch.float64)
        (got,) = torch.autograd.grad(max_pool2d(x, kernel, stride, padding), x, grad_out)
        (want,) = torch.autograd.grad(F.max_pool2d(x, kernel, stride, padding), x, grad_out)
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_max_pool_gradient_goes_to_the_arg_max_only():
    x = torch.tensor([[[[1.0, 5.0], [2.0, 3.0]]]], requires_grad=True)
    max_pool2d(x, 2).sum().backward()
    assert x.grad.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]


@pytest.mark.parametrize("ours", [max_pool2d, avg_pool2d], ids=["max", "avg"])
def test_gradcheck(ours):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ours(t, (3, 2), (2, 1), (1, 1)), (x,))


@pytest.mark.parametrize("ours, oracle", POOLS, ids=["max", "avg"])
def test_unbatched_input(ours, oracle):
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x, 2), oracle(x, 2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("ours", [max_pool2d, avg_pool2d], ids=["max", "avg"])
@pytest.mark.parametrize("shape, kw, match", [
    ((1, 1, 4, 4), dict(kernel_size=5), "larger than the padded input"),
    ((1, 1, 4, 4), dict(kernel_size=2, stride=0), "stride must be positive"),
    ((1, 1, 4, 4), dict(kernel_size=2, padding=2), "half the kernel size"),
    ((1, 1, 4, 4), dict(kernel_size=0), "kernel_size must be positive"),
    ((4, 4), dict(kernel_size=2), "expects an input of shape"),
])
def test_bad_arguments(ours, shape, kw, match):
    with pytest.raises(CnnkitError, match=match):
        ours(torch.zeros(shape), **kw)
