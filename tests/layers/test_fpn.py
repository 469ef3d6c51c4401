"""Feature Pyramid Network: output names and shapes, torchvision's keys, the top-down sum."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.fpn import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from cnnkit.utils import CnnkitError


def _maps(batch=2):
    # a ResNet-18 pyramid for a 64×96 image: strides 4..32, an odd width at the coarsest
    return OrderedDict([("feat0", torch.randn(batch, 8, 16, 24)),
                        ("feat1", torch.randn(batch, 16, 8, 12)),
                        ("feat2", torch.randn(batch, 32, 4, 6)),
                        ("feat3", torch.randn(batch, 64, 2, 3))])


def test_fpn_keeps_names_and_sizes_and_adds_pool_level():
    fpn = FeaturePyramidNetwork([8, 16, 32, 64], 12, extra_blocks=LastLevelMaxPool())
    out = fpn(_maps())
    assert list(out) == ["feat0", "feat1", "feat2", "feat3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [(2, 12, 16, 24), (2, 12, 8, 12),
                                                      (2, 12, 4, 6), (2, 12, 2, 3),
                                                      (2, 12, 1, 2)]
    # the pool level is P5 subsampled by 2 (kernel 1, stride 2)
    assert torch.equal(out["pool"], out["feat3"][..., ::2, ::2])


def test_fpn_top_down_pathway_by_hand():
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([3, 5], 4)
    x = OrderedDict([("a", torch.randn(1, 3, 6, 7)), ("b", torch.randn(1, 5, 3, 4))])
    out = fpn(x)
    inner = [blk[0] for blk in fpn.inner_blocks]
    layer = [blk[0] for blk in fpn.layer_blocks]
    top = inner[1](x["b"])
    lateral = inner[0](x["a"]) + F.interpolate(top, size=(6, 7), mode="nearest")
    torch.testing.assert_close(out["b"], layer[1](top))
    torch.testing.assert_close(out["a"], layer[0](lateral))


def test_fpn_state_dict_keys_follow_torchvision():
    plain = FeaturePyramidNetwork([8, 16], 12)
    assert sorted(plain.state_dict()) == sorted(
        f"{kind}.{i}.0.{p}" for kind in ("inner_blocks", "layer_blocks") for i in (0, 1)
        for p in ("weight", "bias"))
    normed = FeaturePyramidNetwork([8, 16], 12, norm_layer=nn.BatchNorm2d)
    keys = normed.state_dict()
    assert "inner_blocks.0.0.bias" not in keys  # a norm follows: no conv bias
    assert keys["layer_blocks.1.1.running_var"].shape == (12,)
    assert keys["inner_blocks.1.0.weight"].shape == (12, 16, 1, 1)


@pytest.mark.parametrize("c5_channels, use_p5", [(12, True), (64, False)])
def test_last_level_p6p7_reads_p5_or_c5(c5_channels, use_p5):
    block = LastLevelP6P7(c5_channels, 12)
    assert block.use_P5 is use_p5
    maps = _maps()
    maps["feat3"] = torch.randn(2, c5_channels, 2, 3)
    fpn = FeaturePyramidNetwork([8, 16, 32, c5_channels], 12, extra_blocks=block)
    out = fpn(maps)
    assert list(out)[-2:] == ["p6", "p7"]
    assert out["p6"].shape == (2, 12, 1, 2) and out["p7"].shape == (2, 12, 1, 1)
    source = out["feat3"] if use_p5 else maps["feat3"]
    torch.testing.assert_close(out["p6"], block.p6(source))


def test_fpn_rejects_wrong_number_of_maps():
    fpn = FeaturePyramidNetwork([8, 16, 32], 12)
    with pytest.raises(CnnkitError, match="built for 3 maps"):
        fpn(_maps())
