"""Swin-specific behaviour; the layout against torchvision's manifest is checked in test_zoo.py."""
import logging

import pytest
import torch

import cnnkit.models.swin as swin
from cnnkit.models import create_model
from cnnkit.models.swin import ShiftedWindowAttention, shifted_window_mask


def _shifted_attention() -> ShiftedWindowAttention:
    torch.manual_seed(0)
    return ShiftedWindowAttention(16, 2, (4, 4), (2, 2)).double().eval()


def _response(attn, source: tuple[int, int], target: tuple[int, int]) -> float:
    """How much the output at `target` moves when the input at `source` changes."""
    x = torch.randn(1, 8, 8, 16, dtype=torch.float64)
    moved = x.clone()
    moved[0, source[0], source[1]] += 10.0
    with torch.no_grad():
        return (attn(moved) - attn(x))[0, target[0], target[1]].abs().max().item()


def test_shift_mask_keeps_wrapped_around_tokens_apart():
    """After the cyclic shift by (2, 2) on an 8×8 map, pixels (0, 0) and (7, 7) land in the same
    4×4 window (rolled to (6, 6) and (5, 5)) though they are opposite corners of the image: the
    mask must stop them from attending to each other, while (6, 6) still reaches (7, 7)."""
    attn = _shifted_attention()
    assert _response(attn, (0, 0), (7, 7)) < 1e-12
    assert _response(attn, (6, 6), (7, 7)) > 1e-3


def test_without_the_mask_the_corners_would_interact(monkeypatch):
    """Negative control for the test above: with the mask zeroed, (0, 0) does reach (7, 7)."""
    monkeypatch.setattr(swin, "shifted_window_mask",
                        lambda h, w, window, shift, device=None: torch.zeros(
                            h * w // (window[0] * window[1]), window[0] * window[1],
                            window[0] * window[1], device=device))
    assert _response(_shifted_attention(), (0, 0), (7, 7)) > 1e-3


def test_mask_counts_follow_the_regions_of_the_paper_figure():
    mask = shifted_window_mask(8, 8, (4, 4), (2, 2))  # (windows, 16, 16)
    masked = (mask == -100.0).sum(dim=(1, 2)).tolist()
    # top-left window: one region; top-right and bottom-left: two regions of 8 tokens
    # (each token blocks 8); bottom-right: four regions of 4 tokens (each token blocks 12)
    assert masked == [0, 16 * 8, 16 * 8, 16 * 12]
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_window_attention_equals_the_formula_on_a_map_smaller_than_the_window():
    """On a 3×3 map a 7×7 window shrinks to the map; the result must equal
    softmax(q kᵀ/√d + B) v with B[h, i, j] = table[(Δy + 6)·13 + Δx + 6, h] written out."""
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(8, 2, (7, 7), (3, 3)).double().eval()
    x = torch.randn(2, 3, 3, 8, dtype=torch.float64)
    tokens = x.reshape(2, 9, 8)
    q, k, v = attn.qkv(tokens).view(2, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ys, xs = torch.arange(9) // 3, torch.arange(9) % 3
    rows = (ys[:, None] - ys[None, :] + 6) * 13 + (xs[:, None] - xs[None, :] + 6)  # (9, 9)
    bias = attn.relative_position_bias_table[rows].permute(2, 0, 1)  # (heads, 9, 9)
    weights = (q @ k.transpose(-2, -1) / 2.0 + bias).softmax(-1)  # √d = 2
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 9, 8)).view(2, 3, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected)


def test_small_input_stem_and_mnist_shapes():
    model = create_model("swin_t", small_input=True, in_chans=1, num_classes=10)
    assert model.features[0][0].weight.shape == (96, 1, 2, 2)  # 2×2 patches
    assert model.features[1][1].attn.window_size == (4, 4)
    assert model.features[1][1].attn.shift_size == (2, 2)
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 768, 2, 2)  # 14 → 7 → 4 → 2
    assert model(x).shape == (2, 10)


def test_stochastic_depth_grows_linearly_to_the_variant_rate():
    model = create_model("swin_t")
    rates = [block.stochastic_depth.p for stage in model.features[1::2] for block in stage]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist())


def test_weights_with_other_classes_reinitialise_only_the_head(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("swin_t", small_input=True, num_classes=10)
    path = tmp_path / "swin.pt"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="cnnkit"):
        model = create_model("swin_t", small_input=True, num_classes=7, weights=str(path))
    assert "re-initialised" in caplog.text
    saved, got = source.state_dict(), model.state_dict()
    assert got["head.weight"].shape == (7, 768)
    for key in saved:
        if not key.startswith("head."):
            assert torch.equal(got[key], saved[key]), key
