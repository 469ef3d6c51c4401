"""GoogLeNet and Inception v3 behaviour the registry-wide tests (test_zoo.py) do not cover."""
import pytest
import torch
from torch import nn

from cnnkit.models import count_parameters, create_model
from cnnkit.utils import CnnkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- GoogLeNet ---

def test_googlenet_small_input():
    torch.manual_seed(0)
    model = create_model("googlenet", small_input=True, in_chans=1, num_classes=10).eval()
    assert model.conv1.conv.kernel_size == (3, 3) and model.conv1.conv.stride == (1, 1)
    assert isinstance(model.maxpool1, nn.Identity) and isinstance(model.maxpool2, nn.Identity)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 1024, 7, 7)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    colour = create_model("googlenet", small_input=True).eval()
    with torch.no_grad():
        assert colour.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1024, 8, 8)


def test_googlenet_aux_classifiers():
    torch.manual_seed(0)
    # torchvision's googlenet() builds the aux heads by default: 13,004,888 parameters
    model = create_model("googlenet", aux_logits=True)
    assert count_parameters(model) == 13_004_888
    keys = model.state_dict()
    assert keys["aux1.conv.conv.weight"].shape == (128, 512, 1, 1)
    assert keys["aux2.conv.conv.weight"].shape == (128, 528, 1, 1)
    assert keys["aux1.fc1.weight"].shape == (1024, 2048)
    assert keys["aux2.fc2.weight"].shape == (1000, 1024)

    small = create_model("googlenet", aux_logits=True, small_input=True, num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == (2, 5)  # forward: main logits only, as every cnnkit model
    logits, aux1, aux2 = small.forward_with_aux(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 5)
    (logits.logsumexp(1) + 0.3 * (aux1.logsumexp(1) + aux2.logsumexp(1))).sum().backward()
    assert all(p.grad is not None for p in small.parameters())
    with pytest.raises(ValueError, match="aux_logits=True"):
        create_model("googlenet", small_input=True).forward_with_aux(x)


def test_aux_keys_load_with_aux_logits_and_are_dropped_without(tmp_path):
    path = tmp_path / "googlenet_with_aux.pt"
    torch.save(create_model("googlenet", aux_logits=True).state_dict(), path)
    loaded = create_model("googlenet", aux_logits=True, weights=str(path))
    assert count_parameters(loaded) == 13_004_888
    # torchvision's own files carry the aux heads; the aux-free model drops them with a log line
    plain = create_model("googlenet", weights=str(path))
    assert count_parameters(plain) == 6_624_904


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_transform_input_rescales_imagenet_normalisation(name):
    torch.manual_seed(0)
    # float64: an untrained Inception v3 in eval mode (std-0.1 init, BN at identity) produces
    # logits around 1e9, where float32 rounding alone exceeds assert_close's tolerance
    plain = create_model(name, small_input=True, num_classes=4).eval().double()
    transformed = create_model(name, small_input=True, num_classes=4, transform_input=True)
    transformed.double().eval().load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    # what the TF weights expect: undo the ImageNet normalisation, then map [0, 1] → [-1, 1]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(transformed(x), plain((x * std + mean - 0.5) / 0.5))
    with pytest.raises(CnnkitError, match="in_chans=3"):
        create_model(name, in_chans=1, transform_input=True)


# --- Inception v3 ---

def test_inception_v3_small_input_keeps_every_weight_shape():
    small = create_model("inception_v3", small_input=True)
    default = create_model("inception_v3")
    assert {k: v.shape for k, v in small.state_dict().items()} == \
        {k: v.shape for k, v in default.state_dict().items()}
    small.eval()
    with torch.no_grad():
        assert small.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 3, 3)
        assert small.forward_features(torch.randn(1, 3, 28, 28)).shape == (1, 2048, 2, 2)
    grey = create_model("inception_v3", small_input=True, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_inception_v3_default_grid_sizes():
    model = create_model("inception_v3").eval()
    with torch.no_grad():  # torchvision documents 75×75 as the smallest input
        assert model.forward_features(torch.randn(1, 3, 75, 75)).shape == (1, 2048, 1, 1)
        assert model.forward_features(torch.randn(1, 3, 107, 107)).shape == (1, 2048, 2, 2)


def test_inception_v3_aux_classifier():
    torch.manual_seed(0)
    model = create_model("inception_v3", aux_logits=True, num_classes=1000).eval()
    # torchvision's Inception_V3_Weights meta "num_params", which counts AuxLogits
    assert count_parameters(model) == 27_161_264
    assert model.state_dict()["AuxLogits.conv1.conv.weight"].shape == (768, 128, 5, 5)
    assert model.AuxLogits.fc.weight.std().item() == pytest.approx(0.001, rel=0.05)
    with torch.no_grad():  # the aux head needs the 17×17 map of a 299×299 input
        logits, aux = model.forward_with_aux(torch.randn(1, 3, 299, 299))
    assert logits.shape == aux.shape == (1, 1000)
    with pytest.raises(CnnkitError, match="small_input"):
        create_model("inception_v3", aux_logits=True, small_input=True)
