"""`train_detection(config)`: detection, instance segmentation and keypoints, top to bottom.

Images and their boxes/masks/keypoints (decoded once into memory) → a registered detector
(Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSDlite; torchvision's train/eval contract: a list
of images in, a dict of losses or a list of predictions out) → augmentation that moves boxes,
masks and keypoints with the image (flip with the left/right keypoint swap, scale jitter) → the
sum of the detector's losses → per epoch COCO box AP of the validation images (pycocotools) and
the engine's table, metrics.csv, last.pt/best.pt by AP → the test set detected, judged with the
COCO tables for every output the model has (bbox, segm, keypoints) and shown: predictions drawn
on test images, precision–recall curves, and the detections as COCO results JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from cnnkit.data import load_dataset
from cnnkit.data.det_augment import DetectionAugment
from cnnkit.data.det_loader import DetectionLoader, spare_core
from cnnkit.data.mosaic import Mosaic
from cnnkit.diffusion.ema import EMA
from cnnkit.engine.distributed import DistEnv, all_gather_objects, shard
from cnnkit.engine.run import Run
from cnnkit.inference.detect import detect
from cnnkit.models import create_model
from cnnkit.models._weights import load_backbone
from cnnkit.train.classify import limit_test, make_optimizer, set_lr, split_validation
from cnnkit.train.coco_eval import CocoScores, coco_evaluate, predictions_to_coco, write_coco_json
from cnnkit.train.config import TrainConfig
from cnnkit.utils import CnnkitError

HSV_GAINS = (0.015, 0.7, 0.4)  # ultralytics' hsv_h, hsv_s, hsv_v

# What each kind of detector predicts, hence which COCO evaluations apply.
IOU_TYPES = {"detection": ("bbox",), "instance-segmentation": ("bbox", "segm"),
             "keypoints": ("bbox", "keypoints")}


@dataclass
class DetectResult:
    run_dir: Path
    history: list[dict]
    test: CocoScores
    classes: list[str]
    train_seconds: float
    model: nn.Module | None = None
    stop_reason: str | None = None


def train_detection(config: TrainConfig, *, log=print) -> DetectResult:
    """Train the detector `config.model` on the detection data set `config.dataset`."""
    with Run.open(config, task="detect", prefix=f"{config.model}-{config.dataset}",
                  log=log) as run:
        return _train(run, run.config, run.log)


def _train(run: Run, config: TrainConfig, log) -> DetectResult:
    env = run.env
    options = dict(data_dir=Path(config.data_dir).expanduser(), quiet=config.quiet,
                   skip_bad=config.skip_bad)
    train_full = load_dataset(config.dataset, "train", **options)
    test_set = limit_test(load_dataset(config.dataset, "test", **options), config)
    if not run.resuming:
        for split, ds in (("train", train_full), ("test", test_set)):
            for problem in getattr(ds, "skipped", []):  # --skip-bad: what was left out
                log(f"skipped ({split}): {problem}")
    train_set, val_set = split_validation(train_full, config)
    model, model_kwargs = _build(config, train_set)
    if model.task != "instance-segmentation":  # masks the model never learns cost augmentation time
        train_set = train_set.without("masks")
    if config.backbone_weights and not run.resuming:
        log(load_backbone(model, config.backbone_weights))
    model, net = run.prepare(model)
    optimizer = make_optimizer(config, model)
    recipe = _yolo_recipe(config, model)
    ema = EMA(model, decay=recipe["ema_decay"]) if recipe["ema_decay"] else None
    run.restore(models={"model": model}, optimizers={"model": optimizer},
                ema={"model": ema} if ema else None, spec=_spec(config, model_kwargs, train_set))
    judged = ema.model if ema else model  # the weights validation, test and inference use

    loader, mosaic = _train_loader(config, train_set, model, recipe, env)
    steps_per_epoch = len(loader) // config.accumulate
    total_steps = config.epochs * steps_per_epoch
    if not run.resuming:
        log(f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
            f"{len(test_set)} test, {len(train_set.classes)} classes | {config.epochs} epochs × "
            f"{steps_per_epoch} steps | {run.device.type}, {run.precision} | run {run.dir}")
        if recipe["mosaic"] or ema:
            mosaic_line = (f"mosaic on (off for the last {recipe['close_mosaic']} epochs), HSV "
                           f"gains {HSV_GAINS}" if recipe["mosaic"] else "mosaic and HSV off")
            log(f"YOLO recipe: {mosaic_line}, EMA decay {recipe['ema_decay']}")

    lr = config.lr
    for epoch, batches in run.epochs(loader, epochs=config.epochs, accumulate=config.accumulate):
        net.train()
        if mosaic is not None:  # ultralytics' close_mosaic: the last epochs see whole images
            loader.mosaic = mosaic if epoch < config.epochs - recipe["close_mosaic"] else None
        for images, targets in batches:
            lr = set_lr(optimizer, config, run.step_count, total_steps, steps_per_epoch)
            with run.autocast():
                losses = net(images, targets)  # {"loss_classifier": ..., ...}
            loss = sum(v.float() for v in losses.values())
            run.sums["loss"] += run.step(loss, optimizer, clip=config.grad_clip) * len(images)
            if ema is not None:
                ema.update()
            for key, value in losses.items():  # each term, for the table (loss_mask, ...)
                run.sums[key] += float(value.detach()) * len(images)
            run.sums["seen"] += len(images)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)
        row = {"train_loss": sums["loss"] / sums["seen"], "val_map": None, "val_ap50": None,
               "lr": lr}
        if val_set is not None:
            scores = evaluate_detection(judged, val_set, precision=run.precision, env=env)
            row.update(val_map=scores.stats["bbox"]["AP"], val_ap50=scores.stats["bbox"]["AP50"])
        row.update({key.removeprefix("loss_"): sums[key] / sums["seen"]  # the loss's terms
                    for key in sorted(sums) if key not in ("loss", "seen")})
        run.end_epoch(row, batches=batches,
                      monitor=("val_map", "max") if val_set is not None else ("train_loss", "min"))
    run.finish()

    iou_types = IOU_TYPES[model.task]
    # The test is judged in fp32, as `cnnkit eval` does: bf16 activations, fine for training and
    # for choosing the best epoch, cost mnist-det 0.007 box AP and 0.02 mask AP (measured).
    test, predictions = evaluate_detection(judged, test_set, precision="fp32", env=env,
                                           iou_types=iou_types, keep_predictions=True)
    if env.is_main:
        _write_outputs(run.dir, test_set, predictions, test, iou_types, model)
    log(f"test ({len(test_set)} images): " + "  ".join(
        f"{t} AP {test.stats[t]['AP']:.4f} AP50 {test.stats[t]['AP50']:.4f}" for t in iou_types))
    log(test.table())
    return DetectResult(run.dir, run.history, test, list(train_set.classes), run.train_seconds,
                        judged, run.stop_reason)


# --- the model ---

def _build(config: TrainConfig, ds) -> tuple[nn.Module, dict]:
    """The detector for the data set: K classes + background, its keypoint count; checked
    against what the data has (a Mask R-CNN needs masks, a Keypoint R-CNN keypoints)."""
    kwargs = dict(num_classes=len(ds.classes) + 1, **config.model_args)
    has_keypoints = "keypoints" in ds.targets[0] if len(ds) else False
    if has_keypoints and config.model.startswith("keypointrcnn"):
        kwargs["num_keypoints"] = ds.targets[0]["keypoints"].shape[1]
    model = create_model(config.model, **kwargs)
    if not getattr(model, "detector", False):
        raise CnnkitError(f"{config.model} is not a detector; {config.dataset} needs one "
                          f"(fasterrcnn_resnet18_fpn, maskrcnn_resnet18_fpn, ...: `cnnkit models`)")
    needs = {"instance-segmentation": "masks", "keypoints": "keypoints"}.get(model.task)
    if needs and not all(needs in t for t in ds.targets):
        raise CnnkitError(f"{config.model} learns {needs}, but {config.dataset} has none; "
                          f"choose a box detector (e.g. fasterrcnn_resnet18_fpn)")
    return model, kwargs


def _train_loader(config: TrainConfig, train_set, model: nn.Module, recipe: dict, env):
    """The augmented training loader, and its mosaic (None without one) for close_mosaic."""
    augment = DetectionAugment(hflip=config.hflip and train_set.hflip_ok,
                               scale=(1 / config.max_scale, config.max_scale),
                               flip_index=getattr(train_set, "flip_index", None),
                               hsv=HSV_GAINS if recipe["mosaic"] else None)
    mosaic = Mosaic(model.img_size) if recipe["mosaic"] else None
    loader = DetectionLoader(train_set, config.batch_size, shuffle=True, drop_last=True,
                             seed=config.seed, augment=augment, mosaic=mosaic, rank=env.rank,
                             world_size=env.world_size, prefetch=2 if spare_core() else 0)
    return loader, mosaic


def _yolo_recipe(config: TrainConfig, model: nn.Module) -> dict:
    """Mosaic, its closing epochs and the EMA decay: the flags given, else YOLO's defaults
    (ultralytics: mosaic on, closed for the last 10 of 100+ epochs, EMA decay 0.9999) for a
    model marked `yolo_recipe`, else off."""
    yolo = getattr(model, "yolo_recipe", False)
    mosaic = yolo if config.mosaic is None else config.mosaic
    if mosaic and not hasattr(model, "img_size"):
        raise CnnkitError(f"--mosaic needs a detector with a fixed input size (img_size), "
                          f"which {config.model} has not")
    close = math.ceil(config.epochs / 10) if config.close_mosaic is None else config.close_mosaic
    ema_decay = (0.9999 if yolo else 0.0) if config.ema_decay is None else config.ema_decay
    return {"mosaic": mosaic, "close_mosaic": close, "ema_decay": ema_decay}


def _spec(config: TrainConfig, model_kwargs: dict, ds) -> dict:
    """How to rebuild the detector for inference, and what names its outputs."""
    spec = {"models": {"model": {"name": config.model, "kwargs": model_kwargs}}, "infer": "model",
            "classes": list(ds.classes), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "image_shape": [3, 0, 0],  # any size: the detector resizes inside
            "category_ids": list(ds.category_ids)}
    for key in ("keypoint_names", "skeleton", "flip_index"):
        value = getattr(ds, key, None)
        if value is not None:
            spec[key] = [list(v) if isinstance(v, (tuple, list)) else v for v in value]
    sigmas = getattr(ds, "kpt_sigmas", None)
    if sigmas is not None:
        spec["kpt_sigmas"] = [float(s) for s in sigmas]
    return spec


# --- evaluation ---

def evaluate_detection(model: nn.Module, ds, *, precision: str = "fp32", env: DistEnv = DistEnv(),
                       iou_types=("bbox",), keep_predictions: bool = False):
    """COCO scores of `model` on `ds`: each rank detects its shard, every rank gathers all the
    predictions and scores them (so a monitored metric is the same on every rank)."""
    local = detect(model, shard(ds, env).images, precision=precision)
    predictions = [None] * len(ds)
    for rank, part in enumerate(all_gather_objects(local, env)):
        predictions[rank::env.world_size] = part  # undo the strided shard: r, r + W, ...
    scores = coco_evaluate(list(ds.targets), ds.image_sizes(), predictions, list(ds.classes),
                           iou_types=iou_types, category_ids=list(ds.category_ids),
                           kpt_sigmas=getattr(ds, "kpt_sigmas", None),
                           keypoint_names=getattr(ds, "keypoint_names", None))
    return (scores, predictions) if keep_predictions else scores


# --- outputs ---

def _write_outputs(run_dir: Path, ds, predictions: list[dict], scores: CocoScores,
                   iou_types: tuple[str, ...], model: nn.Module) -> None:
    """detections.json (COCO results), predictions.png and pr_curve.png in the run folder."""
    from cnnkit.viz.detection import (plot_detections, plot_pr_curves,  # noqa: PLC0415
                                      shown_score)
    image_ids = [int(t["image_id"]) for t in ds.targets]
    write_coco_json(run_dir / "detections.json",
                    predictions_to_coco(predictions, image_ids, list(ds.category_ids),
                                        iou_types=iou_types))
    shown = list(range(min(8, len(ds))))
    plot_detections([ds.images[i] for i in shown], [predictions[i] for i in shown],
                    [ds.targets[i] for i in shown], list(ds.classes),
                    run_dir / "predictions.png", skeleton=getattr(ds, "skeleton", None),
                    score_threshold=shown_score(model))
    plot_pr_curves(scores, run_dir / "pr_curve.png", iou_type="bbox")
