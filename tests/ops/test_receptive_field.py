"""Receptive fields: hand-computed numbers, and an output unit's gradient support as oracle."""
import pytest
import torch
from torch import nn

from cnnkit.models import create_model
from cnnkit.ops import format_receptive_fields, receptive_fields
from cnnkit.utils import CnnkitError


def test_lenet_by_hand():
    # r_out = r_in + (k−1)·j_in, j_out = j_in·s; 28 → conv5 24 → pool2 12 → conv5 8 → pool2 4
    #   conv1: r 1+4·1 = 5, j 1;  maxpool1: r 5+1·1 = 6, j 2
    #   conv2: r 6+4·2 = 14, j 2; maxpool2: r 14+1·2 = 16, j 4
    rows = receptive_fields(create_model("lenet"), (1, 28, 28))
    assert [r.name for r in rows] == ["conv1", "maxpool1", "conv2", "maxpool2"]
    assert [r.out_size for r in rows] == [(24, 24), (12, 12), (8, 8), (4, 4)]
    assert [r.jump for r in rows] == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert [r.rf for r in rows] == [(5, 5), (6, 6), (14, 14), (16, 16)]
    # centre of the first unit: 0 + 2 → +0.5·1 → +2·2 → +0.5·2
    assert [r.start for r in rows] == [(2, 2), (2.5, 2.5), (6.5, 6.5), (7.5, 7.5)]


def test_scratch_lenet_gives_the_same_table():
    torch_rows = receptive_fields(create_model("lenet"), (1, 28, 28))
    scratch_rows = receptive_fields(create_model("lenet", backend="scratch"), (28, 28))
    assert [(r.rf, r.jump, r.out_size) for r in scratch_rows] == \
        [(r.rf, r.jump, r.out_size) for r in torch_rows]
    assert scratch_rows[0].layer == "ScratchConv2d"


def _dilated_stack() -> nn.Sequential:
    # context-module style (Yu & Koltun 2016): 3×3 convs, dilation 1, 2, 4, then a strided pool
    # and one more dilated conv
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=4, dilation=4), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(2, 1, (3, 1), padding=(2, 0), dilation=2),
    )


def test_dilated_stack_by_hand():
    rows = receptive_fields(_dilated_stack(), (1, 32, 32))
    # k_eff = d(k−1)+1: 3, 5, 9, 2, (5, 1)
    #   r: 1+2 = 3, 3+4 = 7, 7+8 = 15, pool 15+1 = 16 (j 2), then (16+4·2, 16+0) = (24, 16)
    assert [r.rf for r in rows] == [(3, 3), (7, 7), (15, 15), (16, 16), (24, 16)]
    assert [r.jump for r in rows] == [(1, 1), (1, 1), (1, 1), (2, 2), (2, 2)]
    assert [r.dilation for r in rows] == [(1, 1), (2, 2), (4, 4), (1, 1), (2, 2)]
    assert rows[-1].out_size == (16, 16)


def test_receptive_field_equals_gradient_support():
    # with all-ones weights there is no cancellation: an output unit's gradient w.r.t. the input
    # is non-zero exactly on the pixels it sees
    model = _dilated_stack()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    out = model(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows_hit, cols_hit = torch.nonzero(x.grad[0, 0], as_tuple=True)
    extent = (int(rows_hit.max() - rows_hit.min()) + 1, int(cols_hit.max() - cols_hit.min()) + 1)
    assert extent == receptive_fields(model, (1, 64, 64))[-1].rf


class _TinyResidual(nn.Module):
    """A strided residual block with a 1×1 projection shortcut, as in ResNet."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.downsample = nn.Conv2d(4, 4, 1, stride=2)
        self.head = nn.Conv2d(4, 4, 3, padding="same")

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(y + self.downsample(x)))


def test_branches_follow_the_graph_not_the_hook_order():
    model = _TinyResidual().train()
    rows = {r.name: r for r in receptive_fields(model, (3, 16, 16))}
    assert model.training  # mode restored
    # the shortcut starts from the stem (rf 3, j 1), not from conv2 after it in hook order
    assert rows["downsample"].rf == (3, 3) and rows["downsample"].jump == (2, 2)
    # conv1: 3+2·1 = 5, j 2; conv2: 5+2·2 = 9; the sum follows the wider branch (9):
    # head 9+2·2 = 13, jump still 2 — a sequential walk would have said jump 4
    assert rows["conv2"].rf == (9, 9)
    assert rows["head"].rf == (13, 13) and rows["head"].jump == (2, 2)


class _SqueezeExcite(nn.Module):
    """conv → x · σ(fc(global pool(x))) → conv (Hu et al. 2018): the gate is broadcast."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(x * torch.sigmoid(self.fc(self.pool(x))))


def test_broadcast_gate_is_not_followed():
    rows = {r.name: r for r in receptive_fields(_SqueezeExcite(), (3, 12, 12))}
    # the global pool sees everything: 3 + (12−1)·1 = 14, jump 12
    assert rows["pool"].rf == (14, 14) and rows["pool"].jump == (12, 12)
    # conv2 continues the map from conv1 (3 + 2·1 = 5, jump 1), not the gate's jump of 12
    assert rows["conv2"].rf == (5, 5) and rows["conv2"].jump == (1, 1)


def test_format_and_errors():
    rows = receptive_fields(_dilated_stack(), (1, 32, 32))
    text = format_receptive_fields(rows).splitlines()
    assert text[0].split() == ["layer", "type", "kernel", "stride", "dilation", "padding", "output",
                               "jump", "rf", "start"]
    assert len(text) == 1 + len(rows)
    assert text[-1].split()[:4] == ["7", "Conv2d", "3×1", "1"] and "24×16" in text[-1]
    with pytest.raises(CnnkitError, match="input_size"):
        receptive_fields(_dilated_stack(), (32,))
    with pytest.raises(CnnkitError, match="no Conv2d or pooling layer"):
        receptive_fields(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2))
