"""Pose batches: the targets sit on the joints after the crop, the flip and its joint swap;
lsp-multi canvases keep each person's joints on their own tile."""
import numpy as np
import pytest
import torch

from cnnkit.data.lsp import load_lsp, lsp_multi
from cnnkit.data.pose_loader import PoseLoader
from cnnkit.ops.heatmaps import decode_heatmaps, heatmap_to_image
from tests.conftest import DATASETS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lsp_test():
    return load_lsp(DATASETS / "lsp", "test").subset(torch.arange(12))


def test_top_down_targets_decode_back_to_the_annotated_joints(lsp_test):
    loader = PoseLoader(lsp_test, 12, input_size=(128, 96))
    _, target = next(iter(loader))
    coords, _ = decode_heatmaps(target["heatmaps"])
    back = heatmap_to_image(coords, lsp_test.boxes, (32, 24), (128, 96))
    # A quarter heatmap pixel is one input pixel; the box is ~1.5× the crop: ≤ 2 image pixels.
    inside = target["weights"] > 0
    error = (back - lsp_test.joints).norm(dim=-1)[inside]
    assert inside.float().mean() > 0.95 and error.max() < 2.0


def test_flip_mirrors_the_crop_and_swaps_left_and_right(lsp_test):
    loader = PoseLoader(lsp_test, 1, input_size=(128, 96))
    box = lsp_test.boxes[0].numpy().astype(np.float64)
    crop, joints = loader.crop(0, box)
    mirrored, swapped = loader.crop(0, box, flip=True)
    assert torch.equal(mirrored, crop.flip(-1))
    # The left ankle of the mirror image is where the right ankle was, mirrored: x ↦ W−1−x.
    right_ankle, left_ankle = 0, 5
    assert lsp_test.flip_index[right_ankle] == left_ankle
    assert swapped[left_ankle, 0] == pytest.approx((96 - 1) / 4 - float(joints[right_ankle, 0]))
    assert swapped[left_ankle, 1] == pytest.approx(float(joints[right_ankle, 1]))


def test_bottom_up_targets_hold_a_peak_per_joint_and_fields_on_limbs(lsp_test):
    loader = PoseLoader(lsp_test, 4, input_size=(256, 256), bottom_up=True,
                        limbs=lsp_test.skeleton)
    x, target = next(iter(loader))
    assert x.shape == (4, 3, 256, 256)
    assert target["maps"].shape == (4, 14, 32, 32) and target["fields"].shape == (4, 26, 32, 32)
    assert (target["maps"].amax(dim=(2, 3)) > 0.6).float().mean() > 0.9  # peaks on the map
    strength = target["fields"].view(4, 13, 2, 32, 32).norm(dim=2)
    assert torch.allclose(strength[strength > 0], torch.ones(1), atol=1e-5)  # unit vectors


def test_augmented_batches_are_reproducible_per_seed_and_epoch(lsp_test):
    def first(seed, epoch):
        loader = PoseLoader(lsp_test, 4, input_size=(64, 48), augment=True, shuffle=True,
                            seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]
    assert torch.equal(first(1, 0), first(1, 0)) and not torch.equal(first(1, 0), first(1, 1))


def test_lsp_multi_places_each_person_on_its_own_tile(lsp_test):
    canvases = lsp_multi(lsp_test, count=5, seed=3)
    assert [len(c.tiles) for c in canvases] == [len(c.joints) for c in canvases]
    for canvas in canvases:
        assert 2 <= len(canvas.tiles) <= 3 and canvas.tiles[-1][1] == canvas.image.shape[2]
        for joints, (left, right), name in zip(canvas.joints, canvas.tiles, canvas.sources):
            i = lsp_test.file_names.index(name)
            assert torch.allclose(joints - torch.tensor([left, 0.0]), lsp_test.joints[i])
            h, w = lsp_test.images[i].shape[1:]
            assert torch.equal(canvas.image[:, :h, left:right], lsp_test.images[i])
    again = lsp_multi(lsp_test, count=5, seed=3)
    assert [c.sources for c in again] == [c.sources for c in canvases]
