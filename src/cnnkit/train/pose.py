"""`train_pose(config)`: human pose estimation, top-down (HRNet) or bottom-up (OpenPose).

Images and their joints (LSP: decoded once into memory) → affine crops with the reference
augmentation (scale, rotation, flip with the left/right swap, half-body) → a registered pose
network: HRNet's heatmaps with the target-weighted MSE (Sun et al. 2019), or OpenPose's confidence
maps and part affinity fields with the loss of every stage (Cao et al. 2017, eq. 5) → per epoch
the validation PCK@0.2 and the engine's table, metrics.csv, last.pt/best.pt by PCK → the test set
predicted (top-down: the person's box and the flip test; bottom-up: the whole image, parsed into
people, the best one scored), judged by PCK@0.2 per joint (the LSP protocol: torso = left shoulder
to right hip, every joint scored) and OKS AP (pycocotools), and shown: skeletons on test images,
the heatmaps (and fields) of one image, PCK per joint. Bottom-up models are also judged on
`lsp-multi` canvases of 2–3 test people: are the people assembled from their own joints?
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cnnkit.data import load_dataset
from cnnkit.data.lsp import PoseDataset, lsp_multi
from cnnkit.data.pose_loader import PoseLoader
from cnnkit.engine.run import Run
from cnnkit.inference.pose import (best_person, heatmaps_of, predict_bottom_up,
                                   predict_top_down)
from cnnkit.models import create_model
from cnnkit.models._weights import load_backbone
from cnnkit.models.pose.openpose import stage_loss
from cnnkit.ops.heatmaps import crop_matrix, joints_mse_loss, warp_crop
from cnnkit.train.classify import limit_test, make_optimizer, set_lr, split_validation
from cnnkit.train.config import TrainConfig
from cnnkit.train.pose_metrics import half_right, oks_ap, pck, pck_by_part
from cnnkit.utils import CnnkitError

BOTTOM_UP_SCALE = 1.25  # input pixels per image pixel: LSP's ~150 px people become ~190 px


@dataclass
class PoseResult:
    run_dir: Path
    history: list[dict]
    test: dict  # pck (mean), pck_per_joint, oks_ap, ...; bottom-up also the lsp-multi scores
    classes: list[str]
    train_seconds: float
    model: nn.Module | None = None
    stop_reason: str | None = None


def train_pose(config: TrainConfig, *, log=print) -> PoseResult:
    """Train the pose network `config.model` on the pose data set `config.dataset`."""
    with Run.open(config, task="pose", prefix=f"{config.model}-{config.dataset}",
                  log=log) as run:
        return _train(run, run.config, run.log)


def _build(config: TrainConfig, train_set) -> tuple[nn.Module, dict, bool]:
    """The pose network for the data set's joints (and, bottom-up, its limbs); a one-line error
    for a model that is not one."""
    model_kwargs = dict(num_joints=len(train_set.keypoint_names), **config.model_args)
    try:
        model = create_model(config.model, **model_kwargs)
    except CnnkitError:  # a classifier has no num_joints: say what is wrong, not the keyword
        if getattr(create_model(config.model), "pose", False):
            raise
        model = None
    if not getattr(model, "pose", False):
        raise CnnkitError(f"{config.model} is not a pose network; {config.dataset} needs one "
                          f"(pose_hrnet_w16_small, openpose_small, ...: `cnnkit models`)")
    bottom_up = getattr(model, "bottom_up", False)
    if bottom_up:  # its fields follow the data set's limbs
        model_kwargs["limbs"] = [list(limb) for limb in train_set.skeleton]
        model = create_model(config.model, **model_kwargs)
    return model, model_kwargs, bottom_up


def _train(run: Run, config: TrainConfig, log) -> PoseResult:
    env = run.env
    options = dict(data_dir=Path(config.data_dir).expanduser(), quiet=config.quiet)
    train_full = load_dataset(config.dataset, "train", **options)
    test_set = limit_test(load_dataset(config.dataset, "test", **options), config)
    train_set, val_set = split_validation(train_full, config)
    model, model_kwargs, bottom_up = _build(config, train_set)
    if config.backbone_weights and not run.resuming:
        log(load_backbone(model, config.backbone_weights))
    input_size = _input_size(config, bottom_up)
    model, net = run.prepare(model, channels_last=config.channels_last)
    optimizer = make_optimizer(config, model)
    run.restore(models={"model": model}, optimizers={"model": optimizer}, spec={
        "models": {"model": {"name": config.model, "kwargs": model_kwargs}}, "infer": "model",
        "classes": list(train_set.keypoint_names), "mean": None, "std": None,
        "image_shape": [3, *input_size], "bottom_up": bottom_up, "scale": BOTTOM_UP_SCALE,
        "skeleton": [list(limb) for limb in train_set.skeleton],
        "flip_index": list(train_set.flip_index), "kpt_sigmas": list(train_set.kpt_sigmas)})

    loader = PoseLoader(train_set, config.batch_size, input_size=input_size, bottom_up=bottom_up,
                        limbs=train_set.skeleton, scale=BOTTOM_UP_SCALE, augment=True,
                        shuffle=True, drop_last=True, seed=config.seed, rank=env.rank,
                        world_size=env.world_size)
    steps_per_epoch = len(loader) // config.accumulate
    total_steps = config.epochs * steps_per_epoch
    if not run.resuming:
        log(f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{'bottom-up' if bottom_up else 'top-down'}, input {input_size[0]}×{input_size[1]}"
            f" | {config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
            f"{len(test_set)} test, {len(train_set.keypoint_names)} joints | {config.epochs} epochs × "
            f"{steps_per_epoch} steps | {run.device.type}, {run.precision} | run {run.dir}")

    lr = config.lr
    for epoch, batches in run.epochs(loader, epochs=config.epochs, accumulate=config.accumulate):
        net.train()
        for x, target in batches:
            lr = set_lr(optimizer, config, run.step_count, total_steps, steps_per_epoch)
            with run.autocast():
                out = net(x)
            if bottom_up:  # every stage supervised
                loss = stage_loss(out[0].float(), out[1].float(), target["fields"], target["maps"])
            else:
                loss = joints_mse_loss(out.float(), target["heatmaps"], target["weights"])
            run.sums["loss"] += run.step(loss, optimizer, clip=config.grad_clip) * len(x)
            run.sums["seen"] += len(x)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)
        row = {"train_loss": sums["loss"] / sums["seen"], "val_pck": None, "lr": lr}
        if val_set is not None:
            row["val_pck"] = evaluate_pose(model, val_set, run.spec, precision=run.precision)["pck"]
        run.end_epoch(row, batches=batches,
                      monitor=("val_pck", "max") if val_set is not None else ("train_loss", "min"))
    run.finish()

    test, predicted = evaluate_pose(model, test_set, run.spec, precision=run.precision,
                                    with_oks=True, keep=True)
    if bottom_up:
        test.update(evaluate_multi(model, test_set, precision=run.precision,
                                   flip_index=run.spec["flip_index"]))
    log(f"test ({len(test_set)} images): PCK@0.2 {test['pck']:.4f}  OKS AP {test['oks_ap']:.4f}"
        f"  AP50 {test['oks_ap50']:.4f}")
    log(pck_table(test["pck_per_joint"], train_set.keypoint_names))
    if bottom_up:
        log(multi_line(test))
    if env.is_main:
        _write_figures(run.dir, model, test_set, predicted, test, run.spec,
                       precision=run.precision)
    return PoseResult(run.dir, run.history, test, list(train_set.keypoint_names),
                      run.train_seconds, model, run.stop_reason)


def _input_size(config: TrainConfig, bottom_up: bool) -> tuple[int, int]:
    """(H, W): top-down crops of aspect 4:3 (HRNet's 256×192), bottom-up squares; both sides
    multiples of 32 (HRNet halves four times; OpenPose's stride is 8)."""
    height = config.image_size or (256 if bottom_up else 128)
    step = 32 if bottom_up else 128  # 128: then ¾ of it is a multiple of 32 too
    if height % step:
        raise CnnkitError(f"--image-size {height}: {'bottom-up' if bottom_up else 'top-down'} "
                          f"pose inputs need a multiple of {step} (e.g. "
                          f"{'256' if bottom_up else '128, 256 or 384'})")
    return (height, height) if bottom_up else (height, height * 3 // 4)


# --- evaluation ---

def predict_joints(model: nn.Module, ds: PoseDataset, spec: dict, *, precision: str = "fp32",
                   scales: Sequence[float] = (1.0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (N, J, 2) in image pixels and a score per image (the mean heatmap peak, or the
    person's parse score); bottom-up: the best person, completed from the maps (LSP shows one
    person per photo); both with the flip test; `scales`: bottom-up's scale search
    (inference/pose.py)."""
    if spec.get("bottom_up"):
        joints, scores = [], []
        for image in ds.images:
            people, _, _ = predict_bottom_up(model, image, scale=BOTTOM_UP_SCALE,
                                             precision=precision, scales=scales,
                                             single_person=True, flip_index=spec["flip_index"])
            joints.append(best_person(people, len(ds.keypoint_names)))
            scores.append(people[0].score if people else 0.0)
        return torch.stack(joints), torch.tensor(scores)
    input_size = tuple(spec["image_shape"][1:])
    joints, peaks = predict_top_down(model, ds.images, ds.boxes, input_size=input_size,
                                     flip_index=spec["flip_index"], precision=precision)
    return joints, peaks.mean(dim=1)


def evaluate_pose(model: nn.Module, ds: PoseDataset, spec: dict, *, precision: str = "fp32",
                  with_oks: bool = False, keep: bool = False, scales: Sequence[float] = (1.0,)):
    """PCK@0.2 (mean and per joint) of `model` on `ds`, the people with half their joints right
    (lsp-multi's bar), and with `with_oks` the OKS AP."""
    joints, scores = predict_joints(model, ds, spec, precision=precision, scales=scales)
    per_joint, mean = pck(joints, ds.joints)
    out = {"pck": mean, "pck_per_joint": [float(v) for v in per_joint],
           "half_right": half_right(joints, ds.joints)}
    if with_oks:
        # A joint the parse did not find sits far away: wrong, as PCK counts it.
        placed = torch.where(torch.isnan(joints), torch.full_like(joints, -1e4), joints)
        coco = oks_ap(placed, ds.joints, ds.visible, ds.image_sizes(), scores.clamp(min=0),
                      sigmas=spec["kpt_sigmas"], keypoint_names=list(ds.keypoint_names))
        keypoints = coco.stats["keypoints"]
        out.update(oks_ap=keypoints["AP"], oks_ap50=keypoints["AP50"])
    return (out, joints) if keep else out


def evaluate_multi(model: nn.Module, ds: PoseDataset, *, canvases: int | None = None,
                   seed: int = 0, precision: str = "fp32", scales: Sequence[float] = (1.0,),
                   flip_index: Sequence[int] | None = None) -> dict:
    """Bottom-up on `lsp-multi`: canvases (default 100, fewer for a data set under 200 images)
    of 2–3 test images side by side (data/lsp.py), each parsed whole (`flip_index`: with the
    flip test) and scored by `score_canvas`; the fractions are of all people (found, assembled
    correctly) and of all parsed skeletons (right person, joints mixed from two people, a
    second skeleton of someone already matched, nobody's)."""
    canvases = min(100, max(1, len(ds) // 2)) if canvases is None else canvases
    counts = dict.fromkeys(("people", "found", "correct", "skeletons", "right", "mixed",
                            "duplicate", "nobody"), 0)
    for canvas in lsp_multi(ds, count=canvases, seed=seed):
        parsed, _, _ = predict_bottom_up(model, canvas.image, scale=BOTTOM_UP_SCALE,
                                         precision=precision, scales=scales,
                                         flip_index=flip_index)
        for key, value in score_canvas([p.joints[:, :2] for p in parsed], canvas).items():
            counts[key] += value
    people, skeletons = max(counts["people"], 1), max(counts["skeletons"], 1)
    return {"multi_canvases": canvases, "multi_people": counts["people"],
            "multi_found": counts["found"] / people,
            "assembly_accuracy": counts["correct"] / people,
            "multi_skeletons": counts["skeletons"],
            **{f"skeletons_{key}": counts[key] / skeletons
               for key in ("right", "mixed", "duplicate", "nobody")}}


def score_canvas(skeletons: list[torch.Tensor], canvas) -> dict[str, int]:
    """Counts for one lsp-multi canvas; `skeletons` are parsed (J, 2) joints, NaN where missing,
    best first.

    A skeleton *matches* a person when at least half of its found joints lie within PCK@0.2 of
    that person's joints (the person with most such joints wins). Per person: *found* when some
    skeleton matches them, *correct* when the skeleton with most joints near them also takes
    every joint from their tile — no limb borrowed from a neighbour. Per skeleton, in order:
    *right* (it matches a person not yet taken by a better skeleton, all joints on that person's
    tile), *mixed* (the same, with a joint from another tile), *duplicate* (its person was
    taken), *nobody* (it matches no one).
    """
    torsos = torch.linalg.vector_norm(canvas.joints[:, 9] - canvas.joints[:, 2], dim=1)
    near = torch.zeros(len(skeletons), len(canvas.joints), dtype=torch.long)
    on_own_tile = torch.zeros(len(skeletons), len(canvas.joints), dtype=torch.bool)
    for s, xy in enumerate(skeletons):
        found = torch.isfinite(xy[:, 0])
        close = torch.linalg.vector_norm(xy[None] - canvas.joints, dim=2) <= 0.2 * torsos[:, None]
        near[s] = (close & found).sum(1)
        near[s, 2 * near[s] < int(found.sum())] = 0  # matches only with half its joints close
        xs = xy[found, 0]
        on_own_tile[s] = torch.tensor([bool(((xs >= left) & (xs < right)).all())
                                       for left, right in canvas.tiles])
    counts = dict(people=len(canvas.joints), skeletons=len(skeletons), found=0, correct=0,
                  right=0, mixed=0, duplicate=0, nobody=0)
    for person in range(len(canvas.joints)):
        if len(skeletons) and int(near[:, person].max()) > 0:
            counts["found"] += 1
            counts["correct"] += int(on_own_tile[int(near[:, person].argmax()), person])
    taken = set()
    for s in range(len(skeletons)):
        if int(near[s].max()) == 0:
            counts["nobody"] += 1
            continue
        person = int(near[s].argmax())
        if person in taken:
            counts["duplicate"] += 1
        else:
            taken.add(person)
            counts["right" if on_own_tile[s, person] else "mixed"] += 1
    return counts


def multi_line(scores: dict) -> str:
    """The lsp-multi scores of `evaluate_multi` in two lines."""
    return (f"lsp-multi ({scores['multi_people']} people on {scores['multi_canvases']} canvases): "
            f"assembled correctly {scores['assembly_accuracy']:.4f}, found "
            f"{scores['multi_found']:.4f}\n  {scores['multi_skeletons']} skeletons parsed: right "
            f"person {scores['skeletons_right']:.3f}, mixed {scores['skeletons_mixed']:.3f}, "
            f"duplicate {scores['skeletons_duplicate']:.3f}, nobody's "
            f"{scores['skeletons_nobody']:.3f}")


def pck_table(per_joint, names) -> str:
    """PCK@0.2 per body part (left/right averaged, the LSP table's columns) and the mean."""
    parts = pck_by_part(per_joint, names)
    head = "".join(f"{p[:9]:>10}" for p in parts) + f"{'mean':>10}"
    values = "".join(f"{v:>10.3f}" for v in parts.values())
    return f"PCK@0.2 {head}\n        {values}{float(np.nanmean(per_joint)):>10.3f}"


# --- figures ---

def _write_figures(run_dir: Path, model: nn.Module, ds: PoseDataset, joints: torch.Tensor,
                   test: dict, spec: dict, *, precision: str) -> None:
    """skeletons.png (test images, prediction and truth), heatmaps.png (one image's maps),
    pck_per_joint.png."""
    from cnnkit.viz.pose import plot_maps, plot_pck, plot_skeletons  # noqa: PLC0415
    shown = list(range(min(8, len(ds))))
    plot_skeletons([ds.images[i] for i in shown], joints[shown], ds.joints[shown], ds.skeleton,
                   run_dir / "skeletons.png")
    plot_pck(test["pck_per_joint"], ds.keypoint_names, run_dir / "pck_per_joint.png")
    if not len(ds):
        return
    shown = ds.images[0]
    if spec.get("bottom_up"):
        _, maps, fields = predict_bottom_up(model, shown, scale=BOTTOM_UP_SCALE,
                                            precision=precision)
    else:  # the person crop the heatmaps belong to, not the whole photo
        size = tuple(spec["image_shape"][1:])
        maps, fields = heatmaps_of(model, shown, ds.boxes[0], size), None
        crop = warp_crop(shown, crop_matrix(ds.boxes[0].tolist(), size), size)
        shown = crop.round().clamp(0, 255).to(torch.uint8)
    plot_maps(shown, maps, fields, ds.keypoint_names, run_dir / "heatmaps.png")
