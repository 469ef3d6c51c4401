"""Joints from a pose network: top-down crops with the flip test, or bottom-up parsing.

Top-down (HRNet, Sun et al. 2019 §4): each person's box is warped to the input size, the heatmaps
of the crop and of its mirror image (flipped back, shifted one pixel) are averaged, decoded with
the quarter-pixel offset and mapped back into the image. Bottom-up (OpenPose, Cao et al. 2017):
the whole image at the training pixel scale, the last stage's maps and fields upsampled ×4 (the
authors upsample before non-maximum suppression, for sub-stride peaks) and parsed into people;
with the flip test, averaged first with the mirror image's maps and fields, mirrored back.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.pose_loader import MEAN, STD, bottom_up_box, bottom_up_size
from cnnkit.engine.device import autocast
from cnnkit.ops.heatmaps import crop_matrix, decode_heatmaps, flip_back, heatmap_to_image, warp_crop
from cnnkit.ops.paf import Person, parse_people, unmirror_channels

UPSAMPLE = 4  # bottom-up: parse at stride 8 / 4 = 2 input pixels


def normalise_crops(crops: torch.Tensor) -> torch.Tensor:
    """Crops (N, 3, H, W) in 0..255 → normalised with the ImageNet statistics, as in training."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (crops - mean) / std


@torch.inference_mode()
def predict_top_down(model: nn.Module, images: Sequence[torch.Tensor], boxes: torch.Tensor, *,
                     input_size: tuple[int, int], flip_index: Sequence[int] | None = None,
                     batch_size: int = 32, precision: str = "fp32"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (N, J, 2) in image pixels and their heatmap peaks (N, J), one person per box
    (cx, cy, w, h); `flip_index` turns on the flip test."""
    model.eval()
    device = next(model.parameters()).device
    coords, peaks = [], []
    for start in range(0, len(images), batch_size):
        chunk = range(start, min(start + batch_size, len(images)))
        crops = torch.stack([warp_crop(images[i], crop_matrix(boxes[i].tolist(), input_size),
                                       input_size) for i in chunk])
        x = normalise_crops(crops).to(device)
        with autocast(precision, device.type):
            heatmaps = model(x).float()
            if flip_index is not None:
                heatmaps = (heatmaps + flip_back(model(x.flip(-1)).float(), flip_index)) / 2
        found, value = decode_heatmaps(heatmaps.cpu())
        coords.append(heatmap_to_image(found, boxes[list(chunk)], tuple(heatmaps.shape[-2:]),
                                       input_size))
        peaks.append(value)
    return torch.cat(coords), torch.cat(peaks)


@torch.inference_mode()
def predict_bottom_up(model: nn.Module, image: torch.Tensor, *, scale: float,
                      precision: str = "fp32", min_joints: int = 4,
                      scales: Sequence[float] = (1.0,), single_person: bool = False,
                      flip_index: Sequence[int] | None = None
                      ) -> tuple[list[Person], torch.Tensor, torch.Tensor]:
    """The people in one uint8 image (3, H, W), joints in image pixels, best first; and the
    last stage's confidence maps and fields (at stride 8 of the input) for figures.

    `scales` (multiples of `scale`) is the authors' scale search: the maps and fields of each
    scale are resampled onto the grid of `scale` and averaged before parsing (Cao et al.'s
    evaluation code searches 0.5, 1, 1.5 and 2). `single_person`: the image shows one person
    (LSP's protocol), so every joint the parse left out of the best person — a limb whose
    field was too weak breaks the tree there — is taken from its map's strongest peak, and with
    nobody parsed the best person is made of those peaks. `flip_index` (each joint's mirror
    partner) adds the flip test at every scale: the mirrored image's maps and fields, mirrored
    back onto the same grid, joints and limbs swapped left ↔ right (`unmirror_channels`)."""
    model.eval()
    device = next(model.parameters()).device
    size = bottom_up_size(*image.shape[-2:], scale)
    grid = (size[0] // 8 * UPSAMPLE, size[1] // 8 * UPSAMPLE)
    summed, shown, passes = None, None, 0
    for factor in scales:
        width = bottom_up_size(*image.shape[-2:], scale * factor)[1]
        outputs = _bottom_up_pass(model, image, scale * factor, precision, device,
                                  with_mirror=flip_index is not None)
        for mirrored, (maps, fields) in zip((False, True), outputs):
            stacked = torch.cat([maps, fields])[None]
            if factor == 1 and not mirrored:  # the plain upsampling: as without the search
                big = F.interpolate(stacked, size=grid, mode="bicubic", align_corners=False)[0]
            else:
                big = _resample(stacked, grid, scale, scale * factor,
                                mirror_width=width if mirrored else None)[0]
            if mirrored:
                big = unmirror_channels(big, len(maps), model.limbs, flip_index)
            summed = big if summed is None else summed + big
            passes += 1
        if factor == 1 or shown is None:  # figures show the training scale's own maps
            shown = outputs[0]
    big = summed / passes
    maps = big[:len(shown[0])]
    people = parse_people(maps, big[len(shown[0]):], model.limbs, min_joints=min_joints)
    if single_person:
        people = [_complete(people[0] if people else None, maps), *people[1:]]
    # Upsampled cell u ↦ map cell (u + ½)/4 − ½ (align_corners=False) ↦ input pixel × 8 (the
    # targets put input pixel x at map x/8) ↦ image pixel / scale (the crop is a pure scale).
    for person in people:
        on_map = (person.joints[:, :2] + 0.5) / UPSAMPLE - 0.5
        person.joints[:, :2] = on_map * 8 / scale
    return people, *shown


def _complete(person: Person | None, maps: torch.Tensor) -> Person:
    """`person` (or nobody) with each missing joint at the strongest cell of its map (J, H, W),
    the peak's value as the joint's score; the person's score is kept."""
    peak_values, flat = maps.flatten(1).max(dim=1)
    strongest = torch.stack([flat % maps.shape[-1], flat // maps.shape[-1], peak_values], 1)
    if person is None:
        return Person(strongest.float(), 0.0)
    missing = torch.isnan(person.joints[:, 0])
    joints = torch.where(missing[:, None], strongest.to(person.joints.dtype), person.joints)
    return Person(joints, person.score)


def _bottom_up_pass(model: nn.Module, image: torch.Tensor, scale: float, precision: str,
                    device: torch.device, *, with_mirror: bool = False
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The last stage's (maps, fields) (at stride 8) of the whole image at `scale`; with
    `with_mirror` also those of its mirror image (input pixel x ↦ W − 1 − x), from the same
    warped input in one batch of two (eval mode: the batch does not change either)."""
    size = bottom_up_size(*image.shape[-2:], scale)
    matrix = crop_matrix(bottom_up_box(*image.shape[-2:], scale, size), size)
    x = normalise_crops(warp_crop(image, matrix, size)[None]).to(device)  # (1, 3, H, W)
    if with_mirror:
        x = torch.cat([x, x.flip(-1)])  # (2, 3, H, W)
    with autocast(precision, device.type):
        fields, maps = model(x)  # (stages, B, C, H/8, W/8)
    return [(maps[-1, b].float().cpu(), fields[-1, b].float().cpu()) for b in range(len(x))]


def _resample(stacked: torch.Tensor, grid: tuple[int, int], scale: float, other: float, *,
              mirror_width: int | None = None) -> torch.Tensor:
    """Maps (1, C, h, w) computed at input scale `other` onto the upsampled grid of `scale`:
    grid cell u is image pixel ((u + ½)/4 − ½)·8/scale, which is map cell (that)·other/8.
    `mirror_width`: the maps are of the mirrored input, `mirror_width` pixels wide, where input
    pixel x sits at x' = W − 1 − x, i.e. map cell c at (W − 1)/8 − c (not the array mirror,
    W/8 − 1 − c: the two differ by 7/8 of a cell)."""
    cells = [((torch.arange(n, dtype=torch.float32) + 0.5) / UPSAMPLE - 0.5) * other / scale
             for n in grid]
    if mirror_width is not None:
        cells[1] = (mirror_width - 1) / 8 - cells[1]
    h, w = stacked.shape[-2:]
    ys, xs = (2 * cells[0] / max(h - 1, 1) - 1), (2 * cells[1] / max(w - 1, 1) - 1)
    sample = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(stacked, sample, mode="bicubic", padding_mode="border",
                         align_corners=True)


@torch.inference_mode()
def heatmaps_of(model: nn.Module, image: torch.Tensor, box, input_size: tuple[int, int]
                ) -> torch.Tensor:
    """The heatmaps (J, h, w) of one person crop, for figures."""
    model.eval()
    crop = warp_crop(image, crop_matrix(list(box), input_size), input_size)[None]
    return model(normalise_crops(crop).to(next(model.parameters()).device))[0].float().cpu()


def best_person(people: list[Person], num_joints: int) -> torch.Tensor:
    """The highest-scoring person's joints (J, 2), NaN where not found or nobody is."""
    if not people:
        return torch.full((num_joints, 2), float("nan"))
    return people[0].joints[:, :2].clone()


def image_box(image: torch.Tensor) -> np.ndarray:
    """A box (cx, cy, w, h) around the whole image, aspect ¾ (a person crop when no joints are
    known, e.g. `cnnkit predict` on a photo of one person)."""
    h, w = image.shape[-2:]
    bw, bh = (w, w / 0.75) if w / h > 0.75 else (h * 0.75, h)
    return np.array([w / 2, h / 2, bw, bh])



def pose_files(loaded, paths, out_dir) -> list[tuple]:
    """`cnnkit predict` for a pose checkpoint: per image file the people found — top-down: one
    person, the whole image taken as the person's box; bottom-up: everyone parsed — and a
    drawing of their skeletons, <image>_pose.png in `out_dir`. Returns (figure, joints (P, J, 2))
    per file."""
    from pathlib import Path  # noqa: PLC0415

    from cnnkit.data.detection import decode_rgb  # noqa: PLC0415
    from cnnkit.viz.pose import plot_people  # noqa: PLC0415
    spec, out_dir = loaded.spec, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skeleton = [tuple(limb) for limb in spec["skeleton"]]
    results = []
    for path in paths:
        image = decode_rgb(path)
        if spec.get("bottom_up"):
            people, _, _ = predict_bottom_up(loaded.model, image, scale=spec["scale"],
                                             flip_index=spec["flip_index"])
            joints = torch.stack([p.joints[:, :2] for p in people]) if people else \
                torch.zeros(0, len(loaded.classes), 2)
        else:
            box = torch.tensor(image_box(image), dtype=torch.float32)[None]
            joints, _ = predict_top_down(loaded.model, [image], box,
                                         input_size=tuple(spec["image_shape"][1:]),
                                         flip_index=spec["flip_index"])
        figure = plot_people(image, joints, skeleton, out_dir / f"{Path(path).stem}_pose.png")
        results.append((figure, joints))
    return results
