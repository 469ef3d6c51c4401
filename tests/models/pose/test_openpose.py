"""OpenPose: shapes, intermediate supervision, and a network that learns to parse two people."""
import pytest
import torch

from cnnkit.data.lsp import SKELETON
from cnnkit.models import create_model, list_models
from cnnkit.models.pose.openpose import (openpose_hrnet, openpose_resnet18, openpose_small,
                                         openpose_vgg19, stage_loss)
from cnnkit.models.resnet import resnet18
from cnnkit.ops.paf import affinity_fields, confidence_maps, parse_people
from cnnkit.utils import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_stage_predicts_fields_and_maps_at_stride_8():
    model = openpose_small()
    fields, maps = model(torch.randn(2, 3, 64, 96))
    assert fields.shape == (3, 2, 2 * len(SKELETON), 8, 12)
    assert maps.shape == (3, 2, 14, 8, 12)


def test_resnet18_trunk_is_the_classifier_up_to_layer2_under_its_names():
    model = openpose_resnet18()
    classifier = resnet18().state_dict()
    trunk = model.features.state_dict()
    assert all(k in classifier and classifier[k].shape == v.shape for k, v in trunk.items())
    assert {k.split(".")[0] for k in trunk} == {"conv1", "bn1", "layer1", "layer2"}
    fields, maps = model(torch.randn(1, 3, 64, 96))  # stride 8, as the VGG trunk
    assert fields.shape == (3, 1, 2 * len(SKELETON), 8, 12) and maps.shape == (3, 1, 14, 8, 12)


def test_hrnet_trunk_is_the_small_pose_hrnet_with_all_four_branches_at_stride_8():
    model = openpose_hrnet()
    pose = create_model("pose_hrnet_w16_small").state_dict()
    trunk = {k: v.shape for k, v in model.features.state_dict().items()}
    assert all(trunk[k] == v.shape for k, v in pose.items() if not k.startswith("final_layer"))
    # All that the trunk adds: the last module's fusion into the three lower branches.
    extra = set(trunk) - set(pose)
    lower_rows = tuple(f"stage4.0.fuse_layers.{row}." for row in (1, 2, 3))
    assert extra and all(k.startswith(lower_rows) for k in extra)
    assert model.reduce[0].conv.in_channels == 16 + 32 + 64 + 128
    # Any side that is a multiple of 8, as whole images at a scale are.
    fields, maps = model(torch.randn(1, 3, 72, 104))
    assert fields.shape == (3, 1, 2 * len(SKELETON), 9, 13) and maps.shape == (3, 1, 14, 9, 13)


def test_hrnet_trunk_pads_at_the_bottom_right_only():
    # Padding to the trunk's multiple of 32 must move no pixel: the features of an image equal
    # those of the same image that the caller zero-padded at the bottom and right.
    torch.manual_seed(0)
    trunk = openpose_hrnet().features.eval()
    image = torch.randn(1, 3, 72, 104)
    with torch.no_grad():
        own = trunk(image)
        padded = trunk(torch.nn.functional.pad(image, (0, 24, 0, 24)))
    assert own.shape[-2:] == (9, 13)
    torch.testing.assert_close(own, padded[..., :9, :13])


def test_paper_layout_has_six_stages_and_a_vgg19_trunk():
    model = openpose_vgg19()
    assert len(model.field_stages) == len(model.map_stages) == 6
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 256, 512, 512]
    assert model.field_stages[1][0].conv.kernel_size == (7, 7)


def test_batchnorm_follows_every_hidden_conv_of_the_cpu_variant_and_none_of_the_paper_layout():
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in openpose_vgg19().modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in openpose_small(norm=None).modules())
    model = openpose_small()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    outputs = len(model.field_stages) + len(model.map_stages)  # each branch's last 1×1
    assert len(norms) == len(convs) - outputs
    assert model.field_stages[0][-2].bn.num_features == model.field_stages[0][-1].in_channels
    with pytest.raises(CnnkitError, match="norm 'groupnorm': use batchnorm"):
        openpose_small(norm="groupnorm")  # the VGG trunk would silently have none


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("openpose_")])
def test_every_parameter_learns_from_the_stage_losses(name):
    model = create_model(name)
    fields, maps = model(torch.randn(1, 3, 64, 64))  # HRNet's 1/32 branch: BatchNorm of 2×2
    stage_loss(fields, maps, torch.zeros_like(fields[0]), torch.rand_like(maps[0])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_skeleton_with_an_unknown_joint_is_refused():
    with pytest.raises(CnnkitError, match="outside"):
        openpose_small(num_joints=5)  # the LSP tree names joints up to 13


def test_fits_two_people_and_parses_them_apart():
    # Two stick figures on one 64×64 image; after a few hundred steps the network's own
    # predictions must parse into two people with the right joints (within 2 map pixels).
    torch.manual_seed(0)
    limbs = [(0, 1), (1, 2), (1, 3), (1, 4)]
    people = torch.tensor([[[3.0, 1.0], [3.0, 3.0], [1.0, 4.0], [5.0, 4.0], [3.0, 6.0]],
                           [[10.0, 1.0], [10.0, 3.0], [8.0, 4.0], [12.0, 4.0], [10.0, 6.0]]])
    visible = torch.ones(2, 5, dtype=torch.bool)
    target_maps = confidence_maps(people, visible, (8, 14), sigma=0.7)[None]
    target_fields = affinity_fields(people, visible, limbs, (8, 14), width=0.8)[None]
    image = torch.zeros(1, 3, 64, 112)
    for x, y in (people * 8 + 4).reshape(-1, 2).long().tolist():  # a bright dot per joint
        image[0, :, y - 3:y + 4, x - 3:x + 4] = 1.0
    model = openpose_small(num_joints=5, limbs=limbs, stages=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        loss = stage_loss(*model(image), target_fields, target_maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fields, maps = model(image)
    found = parse_people(maps[-1, 0], fields[-1, 0], limbs, min_joints=5)
    assert len(found) == 2
    for person in found:
        truth = min(people, key=lambda p: float((p - person.joints[:, :2]).abs().sum()))
        assert (person.joints[:, :2] - truth).abs().max() <= 2.0
