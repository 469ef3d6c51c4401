"""The chapter's blocks: layer-arrangement schemes, residual block, soft attention, dilation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.attention import Attention, attend
from cnnkit.layers.residual import DilatedConvStack, ResidualBlock
from cnnkit.models import count_parameters, create_model


@pytest.mark.parametrize("scheme, types", [
    (0, [nn.Conv2d, nn.ReLU, nn.Dropout]),
    (1, [nn.Conv2d, nn.ReLU, nn.Dropout, nn.BatchNorm2d]),
    (2, [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]),
])
def test_simple_cnn_schemes_order_layers(scheme, types):
    model = create_model("simple_cnn", scheme=scheme)
    assert [type(m) for m in model.block1] == types
    # the chapter's layout: 32@3×3, 64@3×3, fc 64·28·28 → 10
    assert model.fc.in_features == 64 * 28 * 28
    bn = 64 if scheme else 0
    assert count_parameters(model) == 32 * 9 + 32 + bn + 64 * 32 * 9 + 64 + 64 * 784 * 10 + 10


def test_scheme_2_equals_hand_written_chapter_code():
    torch.manual_seed(0)
    block = ConvNormAct(1, 32, 3, padding=1, bias=True, drop_rate=0.5)
    x = torch.randn(4, 1, 28, 28)
    block.eval()
    conv, bn = block.conv, block.bn
    torch.testing.assert_close(block(x), F.relu(bn(conv(x))))


def test_residual_block_identity_and_projection():
    same = ResidualBlock(8, 8)
    assert isinstance(same.skip, nn.Identity)
    down = ResidualBlock(8, 16, stride=2)
    x = torch.randn(2, 8, 10, 10)
    assert down(x).shape == (2, 16, 5, 5)
    # with the residual branch zeroed the block is ReLU(skip(x))
    nn.init.zeros_(same.conv2.conv.weight)
    nn.init.zeros_(same.conv2.conv.bias)
    torch.testing.assert_close(same(x), F.relu(x))


def test_attention_weights_and_context():
    torch.manual_seed(0)
    att = Attention(enc_hid_dim=6, dec_hid_dim=5)
    hidden, enc = torch.randn(3, 5), torch.randn(7, 3, 6)  # (B, dec), (L, B, enc)
    w = att(hidden, enc)
    assert w.shape == (3, 7)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    # the chapter's formula, written out for one batch element
    b = 1
    e = torch.stack([att.v(torch.tanh(att.attn(torch.cat([hidden[b], enc[i, b]])))) for i in range(7)])
    torch.testing.assert_close(w[b], e.squeeze(1).softmax(0))
    torch.testing.assert_close(attend(w, enc)[b], (w[b, :, None] * enc[:, b]).sum(0))


def test_dilation_keeps_parameters_and_size():
    dilated, plain = DilatedConvStack(1, 8, (1, 2, 4)), DilatedConvStack(1, 8, (1, 1, 1))
    assert count_parameters(dilated) == count_parameters(plain)
    assert dilated(torch.randn(1, 1, 20, 20)).shape == (1, 8, 20, 20)
