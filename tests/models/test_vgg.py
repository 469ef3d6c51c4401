"""VGG behaviour the registry-wide tests (test_zoo.py) do not cover."""
import math

import pytest
import torch
from torch import nn

from cnnkit.models import count_parameters, create_model


@pytest.mark.parametrize("name, params", [("vgg13_bn", 133_053_736), ("vgg19_bn", 143_678_248)])
def test_parameter_count_of_variants_without_manifest(name, params):
    # torchvision's VGG13_BN_Weights / VGG19_BN_Weights meta "num_params"; built on the meta
    # device, since only the shapes matter here
    with torch.device("meta"):
        assert count_parameters(create_model(name)) == params


def test_bn_variant_layout_is_conv_bn_relu_triples():
    with torch.device("meta"):
        features = create_model("vgg13_bn").features
    kinds = [type(m) for m in features]
    # configuration B: 10 convs in 5 stacks, each stack closed by a max-pool
    assert kinds.count(nn.Conv2d) == 10 and kinds.count(nn.MaxPool2d) == 5
    for i, kind in enumerate(kinds):
        if kind is nn.Conv2d:
            assert kinds[i + 1:i + 3] == [nn.BatchNorm2d, nn.ReLU]
            assert features[i].bias is not None  # torchvision's VGG convs keep their bias


def test_small_input_handles_28x28_grey_and_32x32_colour():
    torch.manual_seed(0)
    grey = create_model("vgg11_bn", small_input=True, in_chans=1, num_classes=10).eval()
    colour = create_model("vgg11", small_input=True, num_classes=10).eval()
    with torch.no_grad():
        assert grey.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 512, 1, 1)
        assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert colour.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, 2, 2)
        assert colour(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert colour.classifier[0].in_features == 512
    assert count_parameters(colour.classifier) < 1_000_000


def test_small_input_keeps_the_conv_layout():
    small = create_model("vgg16_bn", small_input=True).state_dict()
    with torch.device("meta"):
        full = create_model("vgg16_bn").state_dict()
    conv_keys = [k for k in full if k.startswith("features.")]
    assert conv_keys == [k for k in small if k.startswith("features.")]
    assert all(small[k].shape == full[k].shape for k in conv_keys)
    assert full["classifier.0.weight"].shape == (4096, 512 * 7 * 7)


def test_init_scheme_matches_torchvision():
    torch.manual_seed(0)
    model = create_model("vgg16", small_input=True)
    conv = model.features[-2]  # the last 512→512 conv; features[-1] is its ReLU
    assert isinstance(conv, nn.Conv2d)
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std √(2 / (512·3·3)), bias 0
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.01)
    assert torch.count_nonzero(conv.bias) == 0
    fc = model.classifier[0]  # N(0, 0.01²), bias 0
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.count_nonzero(fc.bias) == 0
