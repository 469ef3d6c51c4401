"""ViT-specific behaviour; the layout against torchvision's manifest is checked in test_zoo.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from cnnkit.models import create_model
from cnnkit.models.vit import EncoderBlock
from cnnkit.utils import CnnkitError

SMALL = {"img_size": 32, "patch_size": 8}  # a 4×4 grid of patches: fast


def test_small_input_builds_a_grid_for_mnist():
    model = create_model("vit_b_32", small_input=True, img_size=28, in_chans=1, num_classes=10)
    assert model.conv_proj.weight.shape == (768, 1, 4, 4)  # small_input: 4×4 patches
    assert model.encoder.pos_embedding.shape == (1, 7 * 7 + 1, 768)  # 7×7 grid + class token
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 50, 768)


def test_wrong_image_size_and_bad_patch_are_one_line_errors():
    model = create_model("vit_b_32", num_classes=3, **SMALL)
    with pytest.raises(CnnkitError, match="img_size=28"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(CnnkitError, match="does not divide"):
        create_model("vit_b_32", img_size=30, patch_size=8)


def test_torchvision_initialisation():
    torch.manual_seed(0)
    model = create_model("vit_b_16", num_classes=5, **SMALL)
    assert model.heads.head.weight.abs().max() == 0 and model.class_token.abs().max() == 0
    # LeCun-normal patch projection: std sqrt(1 / fan_in), fan_in = 3·8·8
    assert model.conv_proj.weight.std().item() == pytest.approx(math.sqrt(1 / 192), rel=0.05)
    block = model.encoder.layers.encoder_layer_0
    assert block.mlp[0].bias.abs().max() < 1e-4  # N(0, 1e-6) biases
    # xavier_uniform on (3072, 768): bound sqrt(6 / (768 + 3072))
    assert block.mlp[0].weight.abs().max() <= math.sqrt(6 / 3840)
    assert block.self_attention.in_proj_bias.abs().max() == 0


def test_encoder_block_equals_pre_norm_attention_written_out():
    """Oracle: the block's output equals x + softmax(q kᵀ/√d) v W_o, then x + MLP(LN(x)),
    with q, k, v the three row blocks of in_proj (so batch_first and key order are wired right)."""
    torch.manual_seed(0)
    block = EncoderBlock(dim=32, num_heads=4, mlp_dim=64, dropout=0.0, attention_dropout=0.0)
    block = block.double().eval()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    attn = block.self_attention
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(3, 5, 4, 8).transpose(1, 2) for t in (q, k, v))  # (N, heads, L, d)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    a = (weights @ v).transpose(1, 2).reshape(3, 5, 32)
    x1 = x + attn.out_proj(a)
    expected = x1 + block.mlp(block.ln_2(x1))
    torch.testing.assert_close(block(x), expected)


def test_saved_state_dict_round_trips_strictly(tmp_path):
    torch.manual_seed(0)
    model = create_model("vit_b_32", num_classes=7, **SMALL).eval()
    with torch.no_grad():  # the head starts at zero: give it values so outputs differ from 0
        model.heads.head.weight.normal_()
    path = tmp_path / "vit.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("vit_b_32", num_classes=7, weights=str(path), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).abs().max() > 0
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
