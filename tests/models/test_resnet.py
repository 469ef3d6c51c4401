"""ResNet-family behaviour the registry-wide tests (test_zoo.py) do not cover."""
import logging
import math

import pytest
import torch

from cnnkit.models import create_model
from cnnkit.utils import CnnkitError


def test_small_input_stem_keeps_the_resolution():
    torch.manual_seed(0)
    small = create_model("resnet18", small_input=True, num_classes=10).eval()
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    default = create_model("resnet18", num_classes=10).eval()
    assert default.conv1.kernel_size == (7, 7) and default.conv1.stride == (2, 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert small.forward_features(x).shape == (2, 512, 4, 4)  # only the 3 stage strides
        assert default.forward_features(x).shape == (2, 512, 1, 1)  # /32
    # everything but conv1 has the same layout, so ImageNet weights transfer to the small form
    small_sd, default_sd = small.state_dict(), default.state_dict()
    assert small_sd.keys() == default_sd.keys()
    assert [k for k in small_sd if small_sd[k].shape != default_sd[k].shape] == ["conv1.weight"]


def test_grey_28x28_images():
    model = create_model("resnet50", small_input=True, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        x = torch.randn(2, 1, 28, 28)
        assert model.forward_features(x).shape == (2, 2048, 4, 4)
        assert model(x).shape == (2, 10)


def test_bottleneck_strides_on_its_3x3_conv_and_resnext_groups():
    # ResNet v1.5 (torchvision): the stride sits on conv2 (3×3), not conv1 (1×1) as in the paper
    for name in ("resnet50", "resnext50_32x4d"):
        first = create_model(name).layer2[0]
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
        assert first.downsample[0].stride == (2, 2)
    block = create_model("resnext50_32x4d").layer1[0]
    assert block.conv2.groups == 32 and block.conv2.in_channels == 128  # 32 groups × 4 channels
    with pytest.raises(CnnkitError, match="groups=1"):
        create_model("resnet18", groups=32)


def test_conv_init_is_kaiming_normal_fan_out():
    torch.manual_seed(0)
    conv = create_model("resnet50").layer4[0].conv2  # 512·512·9 ≈ 2.4 M weights
    expected = math.sqrt(2.0 / (conv.out_channels * 9))  # gain √2 over √fan_out
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)
    # PyTorch's default (kaiming_uniform, a=√5) would give 1/√(3·fan_in), less than half of it
    assert expected > 2 / math.sqrt(3 * conv.in_channels * 9)


@pytest.mark.parametrize("name, block_name, last_bn", [("resnet18", "layer1", "bn2"),
                                                         ("resnet50", "layer1", "bn3")])
def test_zero_init_residual_makes_each_block_start_as_identity(name, block_name, last_bn):
    model = create_model(name, zero_init_residual=True, small_input=True).eval()
    block = getattr(model, block_name)[1]  # no downsample: shortcut is the identity
    assert torch.count_nonzero(getattr(block, last_bn).weight) == 0
    channels = block.conv1.in_channels
    x = torch.randn(2, channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))
    plain = getattr(create_model(name, small_input=True), block_name)[1]
    assert torch.all(getattr(plain, last_bn).weight == 1)


def test_weights_round_trip_and_head_reinitialisation(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("resnet18", small_input=True, num_classes=10)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)  # a plain state_dict, as torchvision checkpoints are
    same = create_model("resnet18", small_input=True, num_classes=10, weights=str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[key], value, rtol=0, atol=0)

    with caplog.at_level(logging.WARNING, logger="cnnkit"):
        other = create_model("resnet18", small_input=True, num_classes=7, weights=str(path))
    assert "re-initialised" in caplog.text
    assert other.fc.weight.shape == (7, 512)
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(CnnkitError, match="conv1.weight"):  # the 7×7 stem does not take it
        create_model("resnet18", num_classes=10, weights=str(path))
