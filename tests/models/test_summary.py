"""The model summary: parameters against the reference counts, MACs against hand formulas and
against torch's own FlopCounterMode as an oracle (it counts 2 FLOPs per multiply-accumulate)."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.models import count_parameters, create_model, list_models
from cnnkit.models._summary import count_macs, format_summary, summarize
from cnnkit.utils import CnnkitError


def oracle_macs(model: nn.Module, input_size: tuple) -> int:
    """MACs per image by torch's dispatcher-level counter (bias additions are not counted either).

    Eval mode with autograd on: nn.MultiheadAttention's fused inference path, which the counter
    cannot see into, is only taken under no_grad.
    """
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *input_size))
    return counter.get_total_flops() // 2


class AttentionNet(nn.Module):
    """Dilated conv → grouped conv → transposed conv → self-attention over pixels → linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(24, 8, 2, stride=2, groups=2)
        self.attn = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.up(self.grouped(self.stem(x)))  # (N, 8, 2H, 2W)
        tokens = x.flatten(2).transpose(1, 2)  # (N, 4HW, 8)
        tokens, _ = self.attn(tokens, tokens, tokens)
        return self.fc(tokens.mean(1))


def test_lenet_chapter_numbers():
    model = create_model("lenet")
    s = summarize(model, (1, 28, 28))
    assert s.total_params == s.trainable_params == count_parameters(model) == 431_080
    # the chapter's shapes: conv1 → 20@24×24, conv2 → 50@8×8 (after pool 1), fc1 800→500, fc2 500→10
    by_hand = 24 * 24 * 20 * 1 * 25 + 8 * 8 * 50 * 20 * 25 + 800 * 500 + 500 * 10
    assert s.total_macs == by_hand == count_macs(model, (1, 28, 28))
    assert s.total_macs == oracle_macs(model, (1, 28, 28))
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].output_shape == (1, 20, 24, 24)
    assert rows["maxpool2"].output_shape == (1, 50, 4, 4)
    assert (rows["conv1"].params, rows["fc1"].params) == (20 * 25 + 20, 800 * 500 + 500)
    assert rows[""].type == "LeNet" and rows[""].depth == 0
    assert sum(r.params for r in s.rows) == s.total_params
    assert sum(r.macs for r in s.rows) == s.total_macs


def test_lenet_table_in_torchinfo_layout():
    text = format_summary(summarize(create_model("lenet"), (1, 28, 28)))
    lines = text.splitlines()
    assert lines[1].split() == ["Layer", "(type:depth-idx)", "Output", "Shape", "Param", "#",
                                "Mult-Adds"]
    assert lines[0] == lines[2] == "=" * len(lines[0])
    conv1 = next(line for line in lines if line.startswith("├─Conv2d: 1-1"))
    assert conv1.split()[2:] == ["[1,", "20,", "24,", "24]", "520", "288,000"]
    assert "├─MaxPool2d: 1-6" in text and "[1, 50, 4, 4]" in text
    for expected in ("Total params: 431,080", "Trainable params: 431,080",
                     "Non-trainable params: 0", "Total mult-adds (M): 2.29",
                     "Input size (MB): 0.00", f"Params size (MB): {431_080 * 4 / 1e6:.2f}"):
        assert expected in lines, expected
    # forward/backward: outputs of the 4 layers with weights, float32, ×2 for their gradients
    activations = 2 * 4 * (20 * 24 * 24 + 50 * 8 * 8 + 500 + 10)
    assert f"Forward/backward pass size (MB): {activations / 1e6:.2f}" in lines
    named = format_summary(summarize(create_model("lenet"), (1, 28, 28)), var_names=True)
    assert "├─Conv2d (conv1): 1-1" in named


def test_grouped_dilated_transposed_conv_and_attention_macs():
    model = AttentionNet()
    s = summarize(model, (3, 10, 10), batch_size=2)
    dilated = 10 * 10 * 16 * 3 * 9                   # padding 2 × dilation 2 keeps 10×10
    grouped = 10 * 10 * 24 * (16 // 4) * 9
    transposed = 10 * 10 * 24 * (8 // 2) * 2 * 2     # every input element × (out/groups) × k²
    length, dim = 20 * 20, 8                         # one token per pixel after the 2× upsampling
    attention = (2 * length * dim * dim              # Q and output projections
                 + length * dim * 2 * dim            # K and V projections (kdim = vdim = E)
                 + 2 * length * length * dim)        # Q·Kᵀ and A·V over all heads
    linear = 8 * 5
    rows = {r.name: r for r in s.rows}
    assert rows["attn"].macs == attention and rows["attn"].output_shape == (2, length, dim)
    assert rows["up"].macs == transposed and rows["grouped"].macs == grouped
    assert s.total_macs == dilated + grouped + transposed + attention + linear
    assert s.total_macs == oracle_macs(model, (3, 10, 10))
    # out_proj is used functionally inside MultiheadAttention: its parameters go to the attn row
    assert rows["attn"].params == count_parameters(model.attn)
    assert sum(r.params for r in s.rows) == s.total_params == count_parameters(model)


def test_depth_folding_keeps_totals():
    model = AttentionNet()
    full = summarize(model, (3, 6, 6), depth=3)
    for depth in (0, 1):
        s = summarize(model, (3, 6, 6), depth=depth)
        assert max(r.depth for r in s.rows) == depth
        assert (s.total_params, s.total_macs) == (full.total_params, full.total_macs)
        assert sum(r.params for r in s.rows) == s.total_params
        assert sum(r.macs for r in s.rows) == s.total_macs
    stem = {r.name: r for r in summarize(model, (3, 6, 6), depth=1).rows}["stem"]
    assert stem.params == count_parameters(model.stem) == 3 * 16 * 9 + 16 + 2 * 16
    assert stem.macs == 6 * 6 * 16 * 3 * 9
    assert "stem.0" in {r.name for r in full.rows}


def test_batch_size_mode_frozen_and_shared_weights():
    model = create_model("lenet").train()
    model.conv1.requires_grad_(False)
    s = summarize(model, (1, 28, 28), batch_size=3)
    assert model.training, "the model's mode must be restored"
    assert s.input_size == (3, 1, 28, 28) and s.rows[0].output_shape == (3, 10)
    assert s.total_macs == count_macs(create_model("lenet"), (1, 28, 28))  # per image
    assert s.trainable_params == 431_080 - 520
    assert "Non-trainable params: 520" in format_summary(s)

    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)  # one layer called twice
    s = summarize(twice, (4,))
    assert s.total_params == 20 == sum(r.params for r in s.rows)
    assert s.total_macs == 2 * 16


def test_bad_input_is_a_cnnkit_error():
    with pytest.raises(CnnkitError, match="input_size"):
        summarize(create_model("lenet"), (1, 8, 8))  # too small for two valid 5×5 convs
    with pytest.raises(CnnkitError, match="input_size"):
        summarize(create_model("lenet"), (1, 0, 28))


@pytest.mark.skipif("resnet50" not in list_models(), reason="resnet50 is not registered yet")
def test_resnet50_matches_torchinfo():
    torch.manual_seed(0)
    model = create_model("resnet50")
    s = summarize(model, (3, 224, 224))
    assert s.total_params == 25_557_032
    assert 4.0e9 <= s.total_macs <= 4.2e9  # torchinfo: 4.09 G (it also counts biases and norms)
    assert s.total_macs == oracle_macs(model, (3, 224, 224))
    assert f"Total mult-adds (G): {s.total_macs / 1e9:.2f}" in format_summary(s).splitlines()
