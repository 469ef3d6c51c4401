import pytest
import torch

from cnnkit.models import count_parameters, create_model, list_models
from cnnkit.models.lenet import LeNet
from cnnkit.utils import CnnkitError


def test_chapter_parameter_count():
    # conv1 20·1·25+20, conv2 50·20·25+50, fc1 800·500+500, fc2 500·10+10
    assert count_parameters(LeNet(1, 10)) == 431_080
    assert LeNet(1, 10).fc1.in_features == 800


def test_outputs_are_log_probabilities():
    out = create_model("lenet", num_classes=10, in_chans=1)(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))


def test_colour_and_other_sizes():
    assert create_model("lenet", in_chans=3, img_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        LeNet(1, 10, img_size=12)


def test_registry_fails_loudly():
    assert "lenet" in list_models("le*")
    assert list_models("nothing*") == []
    with pytest.raises(CnnkitError, match="did you mean lenet"):
        create_model("lenat")
