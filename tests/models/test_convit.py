"""ConViT-specific behaviour; the layout against timm's manifest is checked in test_zoo.py."""
import torch

from cnnkit.models import create_model
from cnnkit.models.convit import GPSA

SMALL = {"img_size": 32, "patch_size": 8}  # a 4×4 grid of patches: fast


def test_gpsa_at_init_attends_to_each_heads_offset():
    """With 9 heads, local init gives head h = h1 + 3·h2 the offset (Δx, Δy) = (h2 − 1, h1 − 1),
    the nine taps of a 3×3 convolution (paper section 3.1): for every query away from the
    border, the key it attends to most is the query's patch moved by that offset."""
    torch.manual_seed(0)
    model = create_model("convit_small", small_input=True)  # 8×8 grid, 9 heads, 432 channels
    gpsa = model.blocks[0].attn
    with torch.no_grad():
        attn = gpsa.attention_weights(torch.randn(2, 64, 432))  # (B, heads, 64, 64)
    for h1 in range(3):
        for h2 in range(3):
            dx, dy = h2 - 1, h1 - 1
            for y in range(1, 7):
                for x in range(1, 7):
                    best = attn[:, h1 + 3 * h2, y * 8 + x].argmax(dim=-1)
                    assert best.tolist() == [(y + dy) * 8 + (x + dx)] * 2, (h1, h2, y, x)


def test_gpsa_fast_path_equals_the_explicit_mixture():
    """Oracle for the SDPA split in GPSA.forward: proj(attention_weights(x) @ v), as timm computes."""
    torch.manual_seed(0)
    gpsa = GPSA(24, 4, grid=3).double().eval()
    with torch.no_grad():
        gpsa.gating_param.normal_()  # heads with different content/position mixes
        x = torch.randn(2, 9, 24, dtype=torch.float64)
        v = gpsa.v(x).view(2, 9, 4, 6).transpose(1, 2)
        expected = gpsa.proj((gpsa.attention_weights(x) @ v).transpose(1, 2).reshape(2, 9, 24))
        torch.testing.assert_close(gpsa(x), expected)


def test_class_token_joins_after_the_gpsa_blocks():
    model = create_model("convit_tiny", num_classes=3, **SMALL)
    lengths = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 17, 192)
    assert lengths == [16] * 10 + [17] * 2  # local_up_to_layer = 10
    assert [type(b.attn).__name__ for b in model.blocks].count("GPSA") == 10


def test_relative_offsets_are_a_buffer_outside_the_state_dict():
    model = create_model("convit_tiny", num_classes=3, **SMALL)
    rel = dict(model.named_buffers())["blocks.0.attn.rel_indices"]
    assert rel.shape == (16, 16, 3)
    assert rel[0, 1].tolist() == [1, 0, 1]  # key one patch right of the query
    assert rel[5, 0].tolist() == [-1, -1, 2]  # key one up and one left
    assert not any("rel_indices" in key for key in model.state_dict())


def test_small_input_for_mnist():
    model = create_model("convit_tiny", small_input=True, img_size=28, in_chans=1, num_classes=10)
    assert model.patch_embed.proj.weight.shape == (192, 1, 4, 4)
    assert model.pos_embed.shape == (1, 49, 192)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_saved_state_dict_round_trips_strictly(tmp_path):
    torch.manual_seed(0)
    model = create_model("convit_tiny", num_classes=7, **SMALL).eval()
    path = tmp_path / "convit.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("convit_tiny", num_classes=7, weights=str(path), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
