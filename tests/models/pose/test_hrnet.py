"""Pose HRNet: the official layout (manifests and counts of ../shared/reference), the joint count,
and a fast forward/backward of the CPU variant."""
import time

import pytest
import torch

from cnnkit.models import count_parameters, create_model, get_model_cfg, list_models
from cnnkit.models.pose import PoseHighResolutionNet
from cnnkit.utils import CnnkitError
from tests.models.test_zoo import PARAM_COUNTS, read_manifest


@pytest.mark.parametrize("name", ["pose_hrnet_w32", "pose_hrnet_w48"])
def test_official_layout_and_count(name):
    model = create_model(name)
    assert model.num_joints == PARAM_COUNTS[name]["num_joints"] == 17
    assert count_parameters(model) == PARAM_COUNTS[name]["params"]
    expected = read_manifest(name)  # the zoo test's own reader: same comparison
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same keys, in the official module order
    assert got == expected


def test_registered_with_pose_attributes():
    assert {"pose_hrnet_w32", "pose_hrnet_w48", "pose_hrnet_w16_small"} <= set(list_models())
    cfg = get_model_cfg("pose_hrnet_w32")
    assert cfg["input_size"] == (3, 256, 192)
    model = create_model("pose_hrnet_w16_small")
    assert isinstance(model, PoseHighResolutionNet)
    assert model.task == "pose" and model.pose is True and model.num_joints == 17


def test_num_joints_14_for_lsp():
    model = create_model("pose_hrnet_w32", num_joints=14)
    # Only the 1×1 head changes: 32 inputs + 1 bias per joint.
    assert count_parameters(model) == PARAM_COUNTS["pose_hrnet_w32"]["params"] - 3 * (32 + 1)
    assert model.final_layer.weight.shape == (14, 32, 1, 1) and model.num_joints == 14
    # num_classes is the synonym the registry-wide tools pass; disagreeing with num_joints fails.
    assert create_model("pose_hrnet_w16_small", num_classes=14).num_joints == 14
    with pytest.raises(CnnkitError, match="num_joints=14 and num_classes=17 disagree"):
        create_model("pose_hrnet_w16_small", num_joints=14, num_classes=17)


def test_small_variant_forward_backward_fast():
    torch.manual_seed(0)
    model = create_model("pose_hrnet_w16_small", num_joints=14).train()
    assert count_parameters(model) < 0.05 * PARAM_COUNTS["pose_hrnet_w32"]["params"]
    x = torch.randn(2, 3, 64, 64)  # the smallest input: 1/32 of it is 2×2
    start = time.perf_counter()
    out = model(x)
    assert out.shape == (2, 14, 16, 16)  # heatmaps at 1/4 of the input
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    elapsed = time.perf_counter() - start
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    # ~1 s on an idle core; generous, as the two cores are shared with other test runs.
    assert elapsed < 30, f"forward + backward took {elapsed:.1f} s"


def test_every_branch_reaches_the_heatmaps():
    # The fusion brings the low-resolution branches (large receptive fields) back into the 1/4
    # output: a change in one corner of the input reaches the opposite corner of the heatmaps.
    torch.manual_seed(0)
    model = create_model("pose_hrnet_w16_small", num_joints=2).eval()
    for m in model.modules():  # larger weights than the official N(0, 0.001²), to see the signal
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    x = torch.zeros(1, 3, 128, 128)
    with torch.no_grad():
        base = model(x)
        x[..., :8, :8] = 1.0  # top-left corner
        moved = model(x)
    assert (moved - base)[..., -4:, -4:].abs().max() > 0  # bottom-right of the heatmaps changes


def test_input_not_divisible_by_32_is_one_line():
    model = create_model("pose_hrnet_w16_small")
    with pytest.raises(CnnkitError, match=r"multiples of 32 .* got 100×96"):
        model(torch.zeros(1, 3, 100, 96))
