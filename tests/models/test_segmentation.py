"""Segmentation models: the paper's U-Net (geometry, size, overlap-tile inference) and torchvision's
FCN / DeepLabV3 / LR-ASPP on cnnkit's dilated ResNet-50 and MobileNetV3-Large backbones.

The registry-wide checks (output shape, gradients, reference counts and manifests) live in
test_zoo.py; this file covers what is particular to dense prediction.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from cnnkit.models import count_parameters, create_model
from cnnkit.models.segmentation import IntermediateLayerGetter
from cnnkit.models.unet_seg import (UNet, overlap_tile_predict, unet_input_size, unet_margin,
                                    unet_output_size)
from cnnkit.utils import CnnkitError
from tests.conftest import REFERENCE
from tests.models.test_zoo import read_manifest

PARAM_COUNTS = json.loads((REFERENCE / "param_counts.json").read_text())
TORCHVISION_SEG = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                   "lraspp_mobilenet_v3_large"]


# --- U-Net (Ronneberger et al. 2015) ---

def test_paper_unet_has_31_0_million_parameters_counted_by_hand():
    with torch.device("meta"):  # shapes only: the 31 M weights are never allocated
        model = create_model("unet")
    assert (model.in_chans, model.num_classes, model.padding, model.depth) == (1, 2, "valid", 4)

    def conv(k, cin, cout):  # weights + biases of one k×k conv
        return k * k * cin * cout + cout

    widths, cin, hand = [64, 128, 256, 512, 1024], 1, 0
    for w in widths:  # contracting path and bottleneck: two 3×3 convs per level
        hand += conv(3, cin, w) + conv(3, w, w)
        cin = w
    for w in reversed(widths[:-1]):  # expanding: 2×2 up-conv halving, two 3×3 on the concatenation
        hand += conv(2, 2 * w, w) + conv(3, 2 * w, w) + conv(3, w, w)
    hand += conv(1, 64, 2)  # the 1×1 head
    assert count_parameters(model) == hand == 31_030_658  # ≈ 31.0 M for Fig. 1's layout


def test_valid_geometry_572_to_388_and_clear_errors_for_other_sizes():
    assert (unet_input_size(388), unet_output_size(572), unet_margin(4)) == (572, 388, 92)
    assert unet_input_size(4, depth=3) == 4 + 2 * unet_margin(3)
    torch.manual_seed(0)
    narrow = UNet(base_channels=2).eval()  # the paper's geometry at 1/32 of its width
    with torch.no_grad():
        assert narrow(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)
        assert narrow.output_size(572, 188) == (388, 4)
        with pytest.raises(CnnkitError, match="556 or 572"):  # 570 − 4 = 566 pools to an odd 283
            narrow(torch.randn(1, 1, 570, 572))
    with pytest.raises(CnnkitError, match="388 or 404"):
        unet_input_size(390)
    with pytest.raises(CnnkitError, match="valid or same"):
        UNet(padding="reflect")


@pytest.mark.parametrize("size", [(64, 64), (45, 37)])
def test_same_padding_keeps_the_size_for_any_channels_and_classes(size):
    torch.manual_seed(0)
    model = create_model("unet_small", in_chans=5, num_classes=4).eval()
    assert model.padding == "same" and model.encoder[0][0].conv.in_channels == 5
    assert isinstance(model.encoder[0][0].bn, torch.nn.BatchNorm2d)  # BN variant
    with torch.no_grad():
        assert model(torch.randn(2, 5, *size)).shape == (2, 4, *size)


@pytest.mark.parametrize("tile", [12, (28, 20)])
def test_overlap_tile_prediction_equals_one_pass_over_the_mirrored_image(tile):
    torch.manual_seed(0)
    model = UNet(in_chans=2, num_classes=3, base_channels=2, depth=3).double().eval()
    image = torch.randn(2, 2, 52, 60, dtype=torch.float64)  # 52, 60 ≡ 4 (mod 8): valid outputs
    margin = unet_margin(3)
    with torch.no_grad():
        whole = model(F.pad(image, (margin,) * 4, mode="reflect"))  # (2, 3, 52, 60)
    tiled = overlap_tile_predict(model, image, tile, tiles_per_batch=8)  # 7 × 8 tiles for 12
    assert tiled.shape == whole.shape == (2, 3, 52, 60)
    # equal but for float64 rounding: conv kernels sum in an order that depends on the input size
    # (|Δ| ≈ 3e-15 here; a tile off the max-pool grid would differ by O(0.1), see below)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(overlap_tile_predict(model, image[1], tile, tiles_per_batch=3),
                               whole[1], rtol=0, atol=1e-12)  # a single (C, H, W) image


def test_tiles_must_start_on_the_max_pool_grid():
    # why overlap_tile_predict steps by multiples of 2^depth: a window shifted by 4 px meets the
    # 8-px pooling grid of a depth-3 U-Net at another phase and computes other logits
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3).double().eval()
    image = torch.randn(1, 1, 124, 100, dtype=torch.float64)
    with torch.no_grad():
        whole = model(image)  # (1, 2, 36, 12)
        on_grid, off_grid = model(image[..., 8:108, :]), model(image[..., 4:104, :])
    torch.testing.assert_close(on_grid, whole[..., 8:20, :], rtol=0, atol=1e-12)
    assert (off_grid - whole[..., 4:16, :]).abs().max() > 1e-3


def test_overlap_tile_prediction_of_a_same_unet_reaches_past_its_receptive_field():
    torch.manual_seed(0)
    model = UNet(in_chans=1, num_classes=2, base_channels=4, depth=2, padding="same",
                 norm="batchnorm").double().eval()
    image = torch.randn(1, 1, 40, 37, dtype=torch.float64)
    margin = unet_margin(2) + 4  # the default context: beyond the receptive field
    with torch.no_grad():
        padded = F.pad(image, (margin,) * 4, mode="reflect")
        whole = model(padded)[..., margin:-margin, margin:-margin]
    torch.testing.assert_close(overlap_tile_predict(model, image, 8), whole, rtol=0, atol=1e-12)
    with pytest.raises(CnnkitError, match="smaller than"):
        overlap_tile_predict(model, image, 3)


# --- dilated backbones (torchvision's replace_stride_with_dilation / dilated=True) ---

def test_dilated_resnet50_has_output_stride_8_and_computes_the_strided_features_densely():
    torch.manual_seed(0)
    plain = create_model("resnet50").double().eval()
    dilated = create_model("resnet50", replace_stride_with_dilation=(False, True, True))
    dilated.load_state_dict(plain.state_dict(), strict=True)  # same layout: ImageNet weights load
    dilated.double().eval()
    # torchvision's _make_layer: a dilated stage's first block keeps the previous dilation
    assert [b.conv2.dilation[0] for b in dilated.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in dilated.layer4] == [2, 4, 4]
    assert all(b.conv2.padding == b.conv2.dilation and b.conv2.stride == (1, 1)
               for b in [*dilated.layer3, *dilated.layer4])
    assert dilated.layer3[0].downsample[0].stride == (1, 1)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        dense, coarse = dilated.forward_features(x), plain.forward_features(x)
    assert dense.shape == (1, 2048, 8, 8) and coarse.shape == (1, 2048, 2, 2)  # 1/8 vs 1/32
    # the "algorithme à trous" (DeepLab §3.1): every 4th dilated output is the strided output
    torch.testing.assert_close(dense[..., ::4, ::4], coarse, rtol=1e-9, atol=1e-9)
    with pytest.raises(CnnkitError, match="dilation"):
        create_model("resnet18", replace_stride_with_dilation=(False, True, True))


def test_dilated_mobilenet_v3_large_has_output_stride_16_with_the_same_layout():
    plain = create_model("mobilenet_v3_large").eval()
    dilated = create_model("mobilenet_v3_large", dilated=True).eval()
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in dilated.state_dict().items()}
    depthwise = [next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
                 for block in dilated.features[1:16]]
    # torchvision's _mobilenet_v3_conf(dilated=True): the C4 stage (blocks 13-15) dilates ×2,
    # its first block included, and that block keeps no skip (its configured stride is 2)
    assert [c.dilation[0] for c in depthwise] == [1] * 12 + [2, 2, 2]
    assert [c.stride[0] for c in depthwise[12:]] == [1, 1, 1]
    assert dilated.features[13].stage_start and not dilated.features[13].use_res_connect
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert dilated.forward_features(x).shape == (1, 960, 4, 4)  # 1/16
        assert plain.forward_features(x).shape == (1, 960, 2, 2)  # 1/32


# --- FCN, DeepLabV3, LR-ASPP ---

@pytest.mark.parametrize("name", TORCHVISION_SEG)
def test_torchvision_state_dict_from_the_manifest_loads_strictly(name):
    """A checkpoint shaped like torchvision's — with its auxiliary head, as the pretrained files
    carry — loads with strict=True; the default (aux-free) model matches the manifest exactly."""
    torch.manual_seed(0)
    manifest = read_manifest(name)
    aux = name != "lraspp_mobilenet_v3_large"
    model = create_model(name, aux_loss=aux)
    shapes = {**manifest, **{k: tuple(v.shape) for k, v in model.state_dict().items()
                             if k.startswith("aux_classifier.")}}
    assert set(shapes) == set(model.state_dict())
    state = {k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape)
             for k, shape in shapes.items()}
    model.load_state_dict(state, strict=True)
    key = next(k for k in manifest if k.startswith("classifier."))
    assert torch.equal(model.state_dict()[key], state[key])
    expected = PARAM_COUNTS[name]["params_aux_loss" if aux else "params"]
    assert count_parameters(model) == expected


@pytest.mark.parametrize("name, kwargs, size", [
    ("fcn_resnet50", {"aux_loss": True}, (32, 40)),
    ("deeplabv3_resnet50", {"aux_loss": True}, (40, 32)),
    ("deeplabv3_mobilenet_v3_large", {"aux_loss": True}, (64, 48)),
    ("lraspp_mobilenet_v3_large", {}, (48, 64)),
    ("unet_small", {}, (40, 56)),
    ("unet", {"base_channels": 4}, (188, 204)),
])
def test_forward_backward_with_cross_entropy_on_small_inputs(name, kwargs, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_chans=1, **kwargs).train()
    x = torch.randn(2, 1, *size)
    outputs = model.forward_dict(x) if hasattr(model, "forward_dict") else {"out": model(x)}
    out = outputs["out"]
    expected = model.output_size(*size) if hasattr(model, "output_size") else size
    assert out.shape == (2, 4, *expected) and torch.isfinite(out).all()
    assert set(outputs) == ({"out", "aux"} if kwargs.get("aux_loss") else {"out"})
    target = torch.randint(0, 4, (2, *expected))
    # torchvision's reference recipe weighs the auxiliary loss by 0.5
    loss = sum(w * F.cross_entropy(outputs[k], target) for k, w in (("out", 1.0), ("aux", 0.5))
               if k in outputs)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    if "aux" in outputs:  # forward gives the main logits alone, the same as forward_dict's
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.forward_dict(x)["out"])


def test_model_structure_errors_are_one_line():
    with pytest.raises(CnnkitError, match="no auxiliary head"):
        create_model("lraspp_mobilenet_v3_large", aux_loss=True)
    with pytest.raises(CnnkitError, match="not children"):
        IntermediateLayerGetter(torch.nn.Sequential(torch.nn.ReLU()), {"layer9": "out"})
