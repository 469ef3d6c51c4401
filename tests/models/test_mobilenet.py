"""MobileNet specifics: channel rounding, the SE layer against torch ops, small inputs, heads."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import SqueezeExcitation, make_divisible
from cnnkit.models import create_model


def test_make_divisible_rounds_to_nearest_multiple_keeping_90_percent():
    for tenths in range(5, 5000):
        value = tenths / 10
        got = make_divisible(value, 8)
        nearest = max(8, int(round(value / 8)) * 8) if value % 8 != 4 else None
        assert got % 8 == 0 and got >= 8 and got >= 0.9 * value
        if nearest is not None and nearest >= 0.9 * value:
            assert got == nearest, value
    assert make_divisible(3, 8, min_value=16) == 16


@pytest.mark.parametrize("act, gate, act_fn, gate_fn", [
    ("relu", nn.Hardsigmoid, F.relu, F.hardsigmoid),
    ("silu", nn.Sigmoid, F.silu, torch.sigmoid),
])
def test_squeeze_excitation_against_torch_ops(act, gate, act_fn, gate_fn):
    torch.manual_seed(0)
    se = SqueezeExcitation(12, 4, act=act, gate=gate).double()
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    squeezed = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    hidden = act_fn(F.conv2d(squeezed, se.fc1.weight, se.fc1.bias))  # (N, 4, 1, 1)
    expected = x * gate_fn(F.conv2d(hidden, se.fc2.weight, se.fc2.bias))
    torch.testing.assert_close(se(x), expected)
    assert set(se.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_small_input_downsamples_by_8_with_the_same_layout(name):
    default, small = create_model(name).eval(), create_model(name, small_input=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert default.forward_features(x).shape[-2:] == (1, 1)
        assert small.forward_features(x).shape[-2:] == (4, 4)
    a, b = default.state_dict(), small.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert small.features[0][0].stride == (1, 1) and default.features[0][0].stride == (2, 2)


def test_v3_se_gate_activation_and_batchnorm_as_torchvision():
    model = create_model("mobilenet_v3_large")
    ses = [m for m in model.modules() if isinstance(m, SqueezeExcitation)]
    assert len(ses) == 8  # the SE column of Table 1 of the paper
    assert all(isinstance(se.scale_activation, nn.Hardsigmoid) for se in ses)
    assert isinstance(model.features[0][2], nn.Hardswish)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)


def test_residual_skip_where_shape_allows():
    model = create_model("mobilenet_v2").eval()
    block = model.features[3]  # 24 → 24 channels, stride 1
    assert block.use_res_connect and not model.features[2].use_res_connect
    with torch.no_grad():  # a zero projection BatchNorm leaves only the skip
        block.conv[-1].weight.zero_()
        block.conv[-1].bias.zero_()
        x = torch.randn(1, 24, 8, 8)
        torch.testing.assert_close(block(x), x)


def test_grey_28x28_input():
    for name in ("mobilenet_v2", "mobilenet_v3_small"):
        model = create_model(name, num_classes=10, in_chans=1, small_input=True)
        assert model.features[0][0].in_channels == 1 and model.in_chans == 1
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_weights_with_other_num_classes_reinitialise_only_last_linear(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("mobilenet_v3_small").state_dict()
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(source, path)
    with caplog.at_level(logging.WARNING, logger="cnnkit"):
        model = create_model("mobilenet_v3_small", num_classes=10, weights=str(path))
    assert "classifier.3" in caplog.text
    state = model.state_dict()
    assert state["classifier.3.weight"].shape == (10, 1024)
    # the hidden Linear of the head (classifier.0) is part of the checkpoint and is loaded
    assert all(torch.equal(v, source[k]) for k, v in state.items()
               if not k.startswith("classifier.3."))
