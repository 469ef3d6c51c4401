"""EfficientNet specifics: per-variant BatchNorm and dropout, stochastic depth, small inputs."""
import pytest
import torch
from torch import nn

from cnnkit.layers import DropPath
from cnnkit.models import create_model
from cnnkit.models.efficientnet import MBConv


# torchvision's efficientnet.py: B0–B4 keep nn.BatchNorm2d's defaults and B5–B7 pass
# partial(nn.BatchNorm2d, eps=0.001, momentum=0.01); classifier dropout 0.2 … 0.5.
@pytest.mark.parametrize("name, eps, momentum, dropout", [
    ("efficientnet_b0", 1e-5, 0.1, 0.2),
    ("efficientnet_b4", 1e-5, 0.1, 0.4),
    ("efficientnet_b5", 1e-3, 0.01, 0.4),
])
def test_batchnorm_and_dropout_per_variant(name, eps, momentum, dropout):
    model = create_model(name)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == eps and bn.momentum == momentum for bn in bns)
    assert model.classifier[0].p == dropout


def test_stochastic_depth_grows_linearly_and_acts_only_in_training():
    model = create_model("efficientnet_b0", stochastic_depth_prob=0.3)
    blocks = [m for m in model.modules() if isinstance(m, MBConv)]
    assert len(blocks) == 16  # B0's 1+2+2+3+3+4+1 blocks
    probs = [b.stochastic_depth.p for b in blocks]
    assert probs == pytest.approx([0.3 * i / 16 for i in range(16)])

    block = blocks[-2]  # 192 → 192 channels at stride 1: residual
    assert block.use_res_connect
    block.stochastic_depth = DropPath(1.0 - 1e-9)  # drop (almost) surely: output ≈ input
    x = torch.randn(4, block.out_channels, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(block.train()(x), x)
        assert not torch.allclose(block.eval()(x), x)  # no dropping at evaluation


def test_small_input_downsamples_by_8_and_loads_default_checkpoints(tmp_path):
    torch.manual_seed(0)
    default = create_model("efficientnet_b0").eval()
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(default.state_dict(), path)
    small = create_model("efficientnet_b0", small_input=True, weights=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert default.forward_features(x).shape == (1, 1280, 1, 1)
        assert small.forward_features(x).shape == (1, 1280, 4, 4)
    expected = default.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in small.state_dict().items())


def test_grey_28x28_input():
    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, small_input=True)
    assert model.features[0][0].in_channels == 1 and model.in_chans == 1
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
