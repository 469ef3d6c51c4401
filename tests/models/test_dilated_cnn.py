"""plain_cnn vs dilated_cnn: equal parameters, receptive field 1 + 2·Σd (9 vs 31) checked by
hand, with an output unit's gradient support as oracle, and through the receptive-field command."""
import pytest
import torch
from torch import nn

from cnnkit.cli.main import main
from cnnkit.models import count_parameters, create_model
from cnnkit.models.dilated_cnn import DilatedCNN
from cnnkit.ops import receptive_fields

DILATIONS = {"plain_cnn": (1, 1, 1, 1), "dilated_cnn": (1, 2, 4, 8)}


def test_equal_parameter_counts_by_hand():
    # 4 bias-free 3×3 convs (1→32, then 32→32 three times), 4 BatchNorms (γ, β), fc 32→10
    expected = 9 * (1 * 32 + 3 * 32 * 32) + 4 * 2 * 32 + (32 * 10 + 10)
    assert [count_parameters(create_model(n)) for n in DILATIONS] == [expected, expected] == \
        [28_522, 28_522]


@pytest.mark.parametrize("name", DILATIONS)
def test_receptive_field_is_one_plus_twice_the_dilation_sum(name):
    rows = [r for r in receptive_fields(create_model(name), (1, 28, 28)) if r.layer == "Conv2d"]
    d = DILATIONS[name]
    # each 3×3 conv of dilation d at jump 1 adds (k_eff − 1) = 2d pixels
    assert [r.rf[0] for r in rows] == [1 + 2 * sum(d[:i + 1]) for i in range(len(d))]
    assert [r.dilation for r in rows] == [(x, x) for x in d]
    assert all(r.jump == (1, 1) and r.out_size == (28, 28) for r in rows)
    assert rows[-1].rf == {"plain_cnn": (9, 9), "dilated_cnn": (31, 31)}[name]


def _gradient_support(dilations) -> torch.Tensor:
    """Input pixels that reach the centre unit of the last feature map, all-ones weights (no
    cancellation, every ReLU open), BatchNorm in eval mode: boolean (64, 64)."""
    model = DilatedCNN(1, 10, channels=2, dilations=dilations).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    model.forward_features(x)[0, 0, 32, 32].backward()
    return x.grad[0, 0] != 0


@pytest.mark.parametrize("name", DILATIONS)
def test_gradient_support_is_the_whole_square(name):
    support = _gradient_support(DILATIONS[name])
    side = {"plain_cnn": 9, "dilated_cnn": 31}[name]
    rows, cols = torch.nonzero(support, as_tuple=True)
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (side, side)
    assert int(support.sum()) == side * side  # 1, 2, 4, 8 reach every offset: no holes


def test_common_factor_dilations_leave_holes():
    # gridding (Wang et al. 2018): with dilations 2, 2, 2, 2 only even offsets are reached, so the
    # 17×17 field holds just 9×9 pixels that the unit actually sees
    support = _gradient_support((2, 2, 2, 2))
    rows, cols = torch.nonzero(support, as_tuple=True)
    assert int(rows.max() - rows.min()) + 1 == 17
    assert int(support.sum()) == 9 * 9


def test_other_inputs_and_interface():
    model = create_model("dilated_cnn", num_classes=5, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 32, 32, 32)  # size-preserving stack
    assert model.forward_head(features).shape == model(x).shape == (2, 5)


def test_visualize_receptive_field_command(capsys):
    for name, side in (("plain_cnn", "9"), ("dilated_cnn", "31")):
        with pytest.raises(SystemExit) as exit_info:
            main(["visualize", "receptive-field", name])
        assert exit_info.value.code == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()
                if line.startswith("features.")]
        assert len(rows) == 4 and rows[-1][-2] == side  # the rf column of the last conv
