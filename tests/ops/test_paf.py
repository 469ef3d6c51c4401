"""OpenPose targets and parsing (cnnkit.ops.paf) on hand-made people."""
import math

import pytest
import torch

from cnnkit.ops.paf import (affinity_fields, check_skeleton, confidence_maps, find_peaks,
                            limb_scores, parse_people, unmirror_channels)
from cnnkit.utils import CnnkitError

# A five-joint stick figure: head(0)-neck(1), neck-left hand(2), neck-right hand(3), neck-hip(4).
LIMBS = [(0, 1), (1, 2), (1, 3), (1, 4)]


def _person(x0: float, y0: float) -> torch.Tensor:
    return torch.tensor([[x0, y0], [x0, y0 + 8], [x0 - 7, y0 + 14], [x0 + 7, y0 + 14],
                         [x0, y0 + 24]])


def _render(people: list[torch.Tensor], size=(64, 64)):
    joints = torch.stack(people)
    visible = torch.ones(joints.shape[:2], dtype=torch.bool)
    return (confidence_maps(joints, visible, size, sigma=1.5),
            affinity_fields(joints, visible, LIMBS, size, width=1.0))


def test_two_people_are_assembled_from_their_own_joints():
    truth = [_person(16.0, 10.0), _person(44.0, 20.0)]
    maps, fields = _render(truth)
    people = parse_people(maps, fields, LIMBS)
    assert len(people) == 2
    for person in people:
        found = person.joints[:, :2]
        owner = min(truth, key=lambda t: float((t - found).abs().sum()))
        assert torch.allclose(found, owner, atol=0.5)  # every joint from the same person


def test_adjacent_people_whose_hands_nearly_touch_stay_apart():
    # Hands 2 px apart: a nearest-joint grouping would mix them, the affinity fields do not.
    truth = [_person(20.0, 12.0), _person(36.0, 12.0)]
    maps, fields = _render(truth)
    people = parse_people(maps, fields, LIMBS)
    assert len(people) == 2
    xs = sorted(float(p.joints[0, 0]) for p in people)
    assert xs == pytest.approx([20.0, 36.0])
    for person in people:  # the right hand of each is right of its own neck
        assert person.joints[3, 0] > person.joints[1, 0] and person.num_found == 5


def test_missing_joint_leaves_nan_and_the_rest_assembled():
    joints = torch.stack([_person(30.0, 10.0)])
    visible = torch.ones(1, 5, dtype=torch.bool)
    visible[0, 2] = False  # left hand not annotated
    maps = confidence_maps(joints, visible, (64, 64), sigma=1.5)
    fields = affinity_fields(joints, visible, LIMBS, (64, 64), width=1.0)
    (person,) = parse_people(maps, fields, LIMBS)
    assert person.num_found == 4 and math.isnan(float(person.joints[2, 0]))


def test_empty_maps_give_no_people():
    assert parse_people(torch.zeros(5, 32, 32), torch.zeros(8, 32, 32), LIMBS) == []


def test_peaks_are_local_maxima_above_threshold_best_first():
    maps = torch.zeros(1, 16, 16)
    maps[0, 3, 4], maps[0, 10, 12], maps[0, 10, 13], maps[0, 1, 1] = 0.5, 0.9, 0.8, 0.05
    (peaks,) = find_peaks(maps, threshold=0.1)
    assert peaks[:, :2].tolist() == [[12.0, 10.0], [4.0, 3.0]]  # the 0.8 neighbour is suppressed


def test_limb_score_is_the_field_component_along_the_segment():
    field = torch.zeros(2, 32, 32)
    field[0] = 1.0  # a field pointing in +x everywhere
    starts, ends = torch.tensor([[4.0, 8.0]]), torch.tensor([[12.0, 8.0], [4.0, 16.0]])
    score, accepted = limb_scores(field, starts, ends, image_height=32)
    # Along +x the integral is 1 (no length penalty: 8 px < half of 32); across it, 0.
    assert score[0, 0] == pytest.approx(1.0) and score[0, 1] == pytest.approx(0.0)
    assert accepted.tolist() == [[True, False]]
    reverse, accepted = limb_scores(field, ends[:1], starts, image_height=32)
    assert reverse[0, 0] == pytest.approx(-1.0) and not accepted.any()


def test_fields_average_where_limbs_of_two_people_overlap():
    joints = torch.tensor([[[2.0, 5.0], [12.0, 5.0]], [[2.0, 5.0], [2.0, 15.0]]])
    fields = affinity_fields(joints, torch.ones(2, 2, dtype=torch.bool), [(0, 1)], (20, 20), 1.0)
    assert fields[:, 5, 8].tolist() == [1.0, 0.0]  # only the horizontal limb
    assert fields[:, 5, 2].tolist() == pytest.approx([0.5, 0.5])  # both: the mean


@pytest.mark.parametrize("limbs, message", [([(0, 7)], "outside"), ([(0, 1), (1, 2), (2, 0)], "cycle")])
def test_bad_skeletons_are_one_line_errors(limbs, message):
    with pytest.raises(CnnkitError, match=message):
        check_skeleton(limbs, 5)


def test_targets_of_the_mirrored_person_unmirror_to_the_persons_own():
    """Flip test: render the mirror image's person (x ↦ W − 1 − x, left ↔ right), mirror the
    maps and fields back in space, fix the channels: the original targets, exactly. One limb
    listed backwards, (3, 1), so its partner (1, 2) is found reversed."""
    limbs = [(0, 1), (1, 2), (3, 1), (1, 4)]
    flip_index = [0, 1, 3, 2, 4]
    size, width = (40, 48), 48
    joints = torch.tensor([[20.0, 6.0], [21.0, 14.0], [12.0, 19.0], [31.0, 22.0], [22.0, 32.0]])
    mirrored = joints[flip_index].clone()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    visible = torch.ones(1, 5, dtype=torch.bool)

    def render(j):
        return torch.cat([confidence_maps(j[None], visible, size, sigma=1.5),
                          affinity_fields(j[None], visible, limbs, size, width=1.0)])

    back = unmirror_channels(render(mirrored).flip(-1), 5, limbs, flip_index)
    assert torch.allclose(back, render(joints), atol=1e-5)
    assert not torch.allclose(render(mirrored).flip(-1), render(joints), atol=1e-2)
    with pytest.raises(CnnkitError, match=r"no mirror of limb \(1, 2\)"):
        unmirror_channels(back, 5, [(0, 1), (1, 2), (1, 4), (0, 3)], flip_index)
