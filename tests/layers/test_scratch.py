"""Scratch layers are drop-in replacements: same state_dict, same numbers, same training step."""
import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.scratch import ScratchConv2d, ScratchMaxPool2d
from cnnkit.models import create_model
from cnnkit.utils import CnnkitError

CONV_CONFIGS = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2, groups=4),
    dict(in_channels=4, out_channels=4, kernel_size=5, stride=(1, 2), padding=2, groups=2),
]


def _mnist_batch(mnist_dir, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training digits, read from the official IDX files (16- and 8-byte headers)."""
    with gzip.open(mnist_dir / "train-images-idx3-ubyte.gz") as f:
        header = np.frombuffer(f.read(16), dtype=">i4")
        assert header[0] == 2051 and tuple(header[2:]) == (28, 28)
        pixels = np.frombuffer(f.read(n * 28 * 28), dtype=np.uint8).reshape(n, 1, 28, 28)
    with gzip.open(mnist_dir / "train-labels-idx1-ubyte.gz") as f:
        assert np.frombuffer(f.read(8), dtype=">i4")[0] == 2049
        labels = np.frombuffer(f.read(n), dtype=np.uint8)
    x = (torch.from_numpy(pixels.astype(np.float32)) / 255.0 - 0.1307) / 0.3081
    return x, torch.from_numpy(labels.astype(np.int64))


@pytest.mark.parametrize("cfg", CONV_CONFIGS)
def test_conv_is_a_drop_in_for_nn_conv2d(cfg):
    torch.manual_seed(0)
    ref = nn.Conv2d(**cfg)
    torch.manual_seed(0)
    ours = ScratchConv2d(**cfg)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    for key in ref_state:  # same default initialisation from the same seed
        assert torch.equal(our_state[key], ref_state[key]), key
    ours.load_state_dict(ref_state)
    x = torch.randn(2, cfg["in_channels"], 11, 10, requires_grad=True)
    out, out_ref = ours(x), ref(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out_ref)
    got = torch.autograd.grad(out, [x, *ours.parameters()], grad_out)
    want = torch.autograd.grad(out_ref, [x, *ref.parameters()], grad_out)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-5)
    assert "Conv2d" in type(out.grad_fn).__name__ and out.grad_fn is not None
    assert type(out.grad_fn).__name__ != type(out_ref.grad_fn).__name__  # really our op


def test_conv_rejects_other_padding_modes():
    with pytest.raises(CnnkitError, match="padding_mode='zeros'"):
        ScratchConv2d(3, 4, 3, padding=1, padding_mode="reflect")


def test_max_pool_is_a_drop_in_for_nn_max_pool2d():
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    for args in [((2, 2), (2, 2)), (3, 2, 1), (2, None, 0)]:
        ours, ref = ScratchMaxPool2d(*args), nn.MaxPool2d(*args)
        assert ours.state_dict() == {} and repr(ours).endswith(repr(ref)[len("MaxPool2d"):])
        out, out_ref = ours(x), ref(x)
        torch.testing.assert_close(out, out_ref, atol=0, rtol=0)
        grad_out = torch.randn_like(out_ref)
        (got,) = torch.autograd.grad(out, x, grad_out)
        (want,) = torch.autograd.grad(out_ref, x, grad_out)
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_lenet_backends_share_layout_and_initialisation():
    torch.manual_seed(0)
    ref = create_model("lenet")
    torch.manual_seed(0)
    ours = create_model("lenet", backend="scratch")
    assert type(ref.conv1) is nn.Conv2d and type(ref.maxpool1) is nn.MaxPool2d  # default unchanged
    assert isinstance(ours.conv1, ScratchConv2d) and isinstance(ours.maxpool2, ScratchMaxPool2d)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert [(k, v.shape) for k, v in our_state.items()] == \
        [(k, v.shape) for k, v in ref_state.items()]
    for key in ref_state:
        assert torch.equal(our_state[key], ref_state[key]), key
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_lenet_one_sgd_step_on_real_mnist_matches(mnist_dir):
    x, y = _mnist_batch(mnist_dir)
    models = []
    for backend in ["torch", "scratch"]:
        torch.manual_seed(0)
        model = create_model("lenet", backend=backend)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = F.nll_loss(model(x), y)  # LeNet returns log-probabilities
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        models.append((model, loss.item()))
    (ref, ref_loss), (ours, our_loss) = models
    assert abs(ref_loss - our_loss) < 1e-5
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours, p_ref, atol=1e-5, rtol=0, msg=name)
    # the step really moved the conv weights, so the comparison above is not of two inits
    for name in ["conv1.weight", "conv2.weight"]:
        assert (ours.state_dict()[name] - before[name]).abs().max() > 1e-4, name


def test_unknown_backend():
    with pytest.raises(CnnkitError, match="unknown backend 'scrach'; did you mean scratch"):
        create_model("lenet", backend="scrach")
