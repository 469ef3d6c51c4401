"""Part confidence maps and part affinity fields: OpenPose's targets and its parsing step.

Cao et al. 2017/2019, "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields"
(https://arxiv.org/abs/1812.08008). A bottom-up pose network predicts, for every joint type, a
confidence map (a peak at each person's joint), and for every limb a 2-D vector field that points
from the limb's first joint to its second wherever the limb lies. Parsing turns them into people:

1. peaks: local maxima of each confidence map above a threshold (non-maximum suppression);
2. limb scores: for each pair of candidate joints, the line integral of the limb's field along the
   segment between them (eq. 10, sampled at `samples` points), with a penalty for limbs longer
   than half the image;
3. matching: per limb, the highest-scoring pairs taken greedily so that each joint is used once
   (the paper's relaxation of the bipartite matching, §3.4);
4. assembly: limbs that share a joint candidate are merged into one person, following the
   skeleton tree.

Coordinates are (x, y) in map pixels; maps are (J, H, W) and fields (2L, H, W) with the x- and
y-components of limb l at channels 2l and 2l + 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnkit.utils import CnnkitError


def check_skeleton(limbs: list[tuple[int, int]], num_joints: int) -> None:
    """A skeleton must name existing joints and form a tree (parsing assembles along it)."""
    for a, b in limbs:
        if not (0 <= a < num_joints and 0 <= b < num_joints) or a == b:
            raise CnnkitError(f"skeleton limb ({a}, {b}) names a joint outside 0..{num_joints - 1}")
    parent = list(range(num_joints))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in limbs:  # union-find: a repeated root means a cycle
        ra, rb = root(a), root(b)
        if ra == rb:
            raise CnnkitError(f"skeleton limb ({a}, {b}) closes a cycle: parsing needs a tree")
        parent[ra] = rb


# --- targets (§3.1 and §3.2) ---

def confidence_maps(joints: torch.Tensor, visible: torch.Tensor, size: tuple[int, int],
                    sigma: float) -> torch.Tensor:
    """Eq. 6–7: per joint type the maximum over people of a Gaussian around each visible joint.

    joints (P, J, 2) in map pixels, visible (P, J) bool → (J, H, W). Taking the maximum, not the
    mean, keeps two nearby peaks distinct.
    """
    height, width = size
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    dx = xs - joints[..., 0, None, None]  # (P, J, 1, W)
    dy = ys - joints[..., 1, None, None]  # (P, J, H, 1)
    peaks = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))  # (P, J, H, W)
    peaks = peaks * visible[..., None, None]
    return peaks.amax(dim=0) if len(joints) else torch.zeros(joints.shape[1], height, width)


def affinity_fields(joints: torch.Tensor, visible: torch.Tensor, limbs: list[tuple[int, int]],
                    size: tuple[int, int], width: float) -> torch.Tensor:
    """Eq. 8–9: the unit vector from joint a to joint b on the points of each limb, averaged over
    the people whose limbs overlap there. A point is on the limb when its projection lies within
    the segment and its distance from the segment's line is at most `width` map pixels.

    joints (P, J, 2), visible (P, J) → (2L, H, W).
    """
    height, width_px = size
    fields = torch.zeros(len(limbs), 2, height, width_px)
    counts = torch.zeros(len(limbs), 1, height, width_px)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width_px, dtype=torch.float32), indexing="ij")
    for limb, (a, b) in enumerate(limbs):
        for person in range(len(joints)):
            if not (visible[person, a] and visible[person, b]):
                continue
            start, end = joints[person, a], joints[person, b]
            length = torch.linalg.vector_norm(end - start)
            if length < 1e-6:
                continue
            unit = (end - start) / length
            along = (xs - start[0]) * unit[0] + (ys - start[1]) * unit[1]
            across = ((xs - start[0]) * unit[1] - (ys - start[1]) * unit[0]).abs()
            on = ((along >= 0) & (along <= length) & (across <= width)).float()  # (H, W)
            fields[limb] += unit.view(2, 1, 1) * on
            counts[limb, 0] += on
    return (fields / counts.clamp(min=1)).reshape(2 * len(limbs), height, width_px)


def unmirror_channels(stacked: torch.Tensor, num_joints: int, limbs: list[tuple[int, int]],
                      flip_index: Sequence[int]) -> torch.Tensor:
    """Maps and fields (J + 2L, H, W) of a mirrored image, already mirrored back in space, with
    their channels made the unmirrored image's: joint j takes the map of its partner
    flip_index[j]; limb (a, b) takes the field of the limb between the partners, its x component
    negated (the mirror reverses x), and the whole vector negated when the skeleton lists that
    limb the other way round. The flip test of bottom-up parsing."""
    index = {limb: k for k, limb in enumerate(limbs)}
    maps = stacked[:num_joints][list(flip_index)]
    fields = []
    for a, b in limbs:
        partner = (flip_index[a], flip_index[b])
        if partner in index:
            k, sign = index[partner], 1.0
        elif partner[::-1] in index:
            k, sign = index[partner[::-1]], -1.0
        else:
            raise CnnkitError(f"the skeleton has no mirror of limb ({a}, {b}): no flip test")
        x, y = stacked[num_joints + 2 * k], stacked[num_joints + 2 * k + 1]
        fields += [-sign * x, sign * y]
    return torch.cat([maps, torch.stack(fields)])


# --- parsing (§3.3–3.5) ---

def find_peaks(maps: torch.Tensor, threshold: float = 0.1) -> list[torch.Tensor]:
    """Local maxima (3×3 non-maximum suppression) above `threshold` of each map in (J, H, W).

    Returns per joint a (K, 3) tensor of (x, y, score), best first.
    """
    pooled = F.max_pool2d(maps[None], 3, stride=1, padding=1)[0]
    is_peak = (maps == pooled) & (maps > threshold)
    peaks = []
    for j in range(maps.shape[0]):
        ys, xs = torch.nonzero(is_peak[j], as_tuple=True)
        scores = maps[j, ys, xs]
        order = torch.argsort(scores, descending=True, stable=True)
        peaks.append(torch.stack([xs.float(), ys.float(), scores], dim=1)[order])
    return peaks


def limb_scores(field: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, *,
                samples: int = 10, image_height: int,
                hit_threshold: float = 0.05, hit_fraction: float = 0.8
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 for every pair of candidates: the mean over `samples` points of the field's
    component along the segment from each start to each end, plus the paper's length prior
    min(0, H / (2d) - 1) that penalises limbs longer than half the image.

    field (2, H, W); starts (A, 2), ends (B, 2) → scores (A, B) and a bool (A, B) mask of the
    pairs the original implementation accepts: at least `hit_fraction` of the samples above
    `hit_threshold` and a positive score.
    """
    height, width = field.shape[-2:]
    vec = ends[None, :, :] - starts[:, None, :]  # (A, B, 2)
    dist = torch.linalg.vector_norm(vec, dim=-1).clamp(min=1e-6)  # (A, B)
    unit = vec / dist[..., None]
    t = torch.linspace(0, 1, samples)
    points = starts[:, None, None, :] + t[None, None, :, None] * vec[:, :, None, :]  # (A, B, S, 2)
    px = points[..., 0].round().long().clamp(0, width - 1)
    py = points[..., 1].round().long().clamp(0, height - 1)
    sampled = field[:, py, px]  # (2, A, B, S)
    along = sampled[0] * unit[..., 0, None] + sampled[1] * unit[..., 1, None]  # (A, B, S)
    prior = torch.clamp(image_height / (2 * dist) - 1, max=0)
    score = along.mean(dim=-1) + prior
    accepted = ((along > hit_threshold).float().mean(dim=-1) >= hit_fraction) & (score > 0)
    return score, accepted


@dataclass
class Person:
    """One assembled skeleton: (J, 3) of (x, y, peak score), NaN where a joint was not found."""
    joints: torch.Tensor
    score: float

    @property
    def num_found(self) -> int:
        return int(torch.isfinite(self.joints[:, 0]).sum())


def parse_people(maps: torch.Tensor, fields: torch.Tensor, limbs: list[tuple[int, int]], *,
                 peak_threshold: float = 0.1, samples: int = 10, min_joints: int = 4,
                 min_mean_score: float = 0.2) -> list[Person]:
    """Confidence maps (J, H, W) and affinity fields (2L, H, W) → people, best first.

    Candidate limbs are matched greedily per limb (each joint candidate used at most once), then
    grown into people along the skeleton: a limb whose first joint already belongs to a person
    adds its second joint to that person, a limb between two partial people merges them when they
    do not overlap, and any other limb starts a new person. People with fewer than `min_joints`
    joints or a low mean score are dropped, as in the authors' demo.
    """
    num_joints = maps.shape[0]
    check_skeleton(limbs, num_joints)
    if fields.shape[0] != 2 * len(limbs):
        raise CnnkitError(f"{fields.shape[0]} field channels for {len(limbs)} limbs: expected "
                          f"{2 * len(limbs)}")
    maps, fields = maps.float(), fields.float()
    peaks = find_peaks(maps, peak_threshold)
    # A person is a row of candidate indices per joint (-1: none) and a running score.
    members: list[list[int]] = []
    scores: list[float] = []
    for limb, (a, b) in enumerate(limbs):
        cand_a, cand_b = peaks[a], peaks[b]
        if len(cand_a) == 0 or len(cand_b) == 0:
            continue
        score, accepted = limb_scores(fields[2 * limb:2 * limb + 2], cand_a[:, :2], cand_b[:, :2],
                                      samples=samples, image_height=maps.shape[-2])
        pairs = torch.nonzero(accepted)
        order = torch.argsort(score[accepted], descending=True, stable=True)
        used_a, used_b = set(), set()
        for i, j in pairs[order].tolist():
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            gain = float(score[i, j]) + float(cand_a[i, 2]) + float(cand_b[j, 2])
            _attach(members, scores, a, i, b, j, gain, num_joints)
    people = []
    for row, total in zip(members, scores):
        found = [j for j in range(num_joints) if row[j] >= 0]
        if len(found) < min_joints or total / len(found) < min_mean_score:
            continue
        joints = torch.full((num_joints, 3), float("nan"))
        for j in found:
            joints[j] = peaks[j][row[j]]
        people.append(Person(joints, total))
    return sorted(people, key=lambda p: -p.score)


def _attach(members, scores, a, i, b, j, gain, num_joints) -> None:
    """Add the limb (joint a = candidate i, joint b = candidate j) to the people found so far."""
    owners = [k for k, row in enumerate(members) if row[a] == i or row[b] == j]
    if len(owners) == 1:
        row = members[owners[0]]
        if row[a] == i and row[b] < 0:
            row[b] = j
        elif row[b] == j and row[a] < 0:
            row[a] = i
        else:  # the person already has another candidate for the free joint: keep it
            return
        scores[owners[0]] += gain
    elif len(owners) == 2:
        first, second = members[owners[0]], members[owners[1]]
        if all(x < 0 or y < 0 for x, y in zip(first, second)):  # disjoint: one person
            for joint in range(num_joints):
                first[joint] = max(first[joint], second[joint])
            scores[owners[0]] += scores[owners[1]] + gain
            del members[owners[1]], scores[owners[1]]
    else:
        row = [-1] * num_joints
        row[a], row[b] = i, j
        members.append(row)
        scores.append(gain)
