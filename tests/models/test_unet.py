"""The DDPM denoiser `ddpm_unet` (a generative model: the classifier zoo test skips it)."""
import math

import pytest
import torch
from torch import nn

from cnnkit.models import create_model, get_model_cfg
from cnnkit.models.unet import UNet, timestep_embedding
from cnnkit.utils import CnnkitError

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,))


def randomize_(model: nn.Module) -> nn.Module:
    """Give the zero-initialised layers weights, so every path reaches the output."""
    torch.manual_seed(1)
    for p in model.parameters():
        if (p == 0).all():
            nn.init.normal_(p, std=0.1)
    return model


def test_registered_as_generative_with_a_small_mnist_default():
    cfg = get_model_cfg("ddpm_unet")
    assert cfg["input_size"] == (1, 28, 28)
    model = create_model("ddpm_unet")
    assert isinstance(model, UNet) and model.generative is True
    assert model.down[-1].attn[0].__class__.__name__ == "AttentionBlock"  # attention at 7×7
    assert model.down[0].attn[0].__class__.__name__ == "Identity"


@pytest.mark.parametrize("kwargs, shape", [
    (dict(TINY), (2, 1, 28, 28)),
    (dict(TINY, in_chans=3, img_size=32, channel_mults=(1, 2, 2), attention_resolutions=(8,)),
     (2, 3, 32, 32)),
    (dict(TINY, img_size=28, channel_mults=(1, 1, 2, 2), attention_resolutions=(4,)),
     (2, 1, 28, 28)),  # 28 → 14 → 7 → 4 and back: the odd side comes back right
])
def test_output_shape_equals_input_shape(kwargs, shape):
    model = create_model("ddpm_unet", **kwargs)
    out = model(torch.randn(shape), torch.tensor([0, 999]))
    assert out.shape == shape
    assert (out == 0).all()  # zero-initialised output conv: ε̂ = 0 at the start


def test_every_parameter_gets_a_gradient():
    model = randomize_(create_model("ddpm_unet", num_classes=3, **TINY)).train()
    x = torch.randn(4, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3])  # 3 = the null class: its embedding row is used too
    model(x, torch.tensor([1, 10, 100, 500]), labels).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or (p.grad == 0).all()]
    assert missing == []


def test_class_and_time_change_the_output_and_none_is_the_null_class():
    model = randomize_(create_model("ddpm_unet", num_classes=10, **TINY)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([50, 50])
    a = model(x, t, torch.tensor([3, 3]))
    b = model(x, t, torch.tensor([7, 7]))
    assert not torch.allclose(a, b, atol=1e-4)
    later = model(x, torch.tensor([600, 600]), torch.tensor([3, 3]))
    assert not torch.allclose(a, later, atol=1e-4)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([10, 10])))
    # per-sample computation: a batch of two equals two batches of one (what guidance relies on)
    assert torch.allclose(model(x[:1], t[:1], torch.tensor([3])), a[:1], atol=1e-5)


def test_time_embedding_matches_the_formula():
    t = torch.tensor([0, 1, 17, 999])
    dim = 32
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for row, step in enumerate(t.tolist()):
        for i in range(half):
            freq = math.exp(-math.log(10000) * i / (half - 1))  # Ho et al.'s get_timestep_embedding
            assert math.isclose(emb[row, i].item(), math.sin(step * freq), abs_tol=1e-4)
            assert math.isclose(emb[row, half + i].item(), math.cos(step * freq), abs_tol=1e-4)
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_attention_block_matches_explicit_softmax_attention():
    from cnnkit.models.unet import AttentionBlock
    torch.manual_seed(0)
    block = randomize_(AttentionBlock(64)).eval()  # 2 heads of 32
    x = torch.randn(2, 64, 5, 5)
    qkv = block.qkv(block.norm(x)).flatten(2)  # (B, 3C, HW)
    q, k, v = qkv.view(2, 3, 2, 32, 25).unbind(1)  # each (B, heads, 32, HW)
    weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(32), dim=-1)  # (B, h, HW, HW)
    out = (v @ weights.transpose(-1, -2)).reshape(2, 64, 5, 5)
    assert torch.allclose(block(x), x + block.proj(out), atol=1e-5)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(CnnkitError, match="base_channels"):
        create_model("ddpm_unet", base_channels=6)
    with pytest.raises(CnnkitError, match="unconditional"):
        create_model("ddpm_unet", **TINY)(torch.randn(1, 1, 28, 28), torch.tensor([1]),
                                          torch.tensor([0]))
