"""`train_segmentation(config)`: the semantic-segmentation task, top to bottom.

Images and masks (decoded once into memory) → a registered dense model (U-Net, FCN, DeepLabV3,
LR-ASPP) → whole-batch joint augmentation (flips, scale/crop, the U-Net paper's elastic
deformation) → cross-entropy (class weights, ignore index, the paper's border weight map) and/or
soft Dice → per epoch the validation scores (pixel accuracy, per-class IoU, mIoU, Dice) and the
engine's table, metrics.csv, last.pt/best.pt by mIoU → the test set segmented whole (overlap-tile
for valid-convolution U-Nets), scored, and shown: overlays and a per-class IoU chart; for ISBI
also the challenge's foreground-restricted Rand and information scores (scikit-image).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.data import load_dataset
from cnnkit.data.seg_augment import JointAugment
from cnnkit.data.seg_loader import SegmentationLoader
from cnnkit.data.segmentation import SegmentationDataset
from cnnkit.engine.distributed import shard
from cnnkit.engine.run import Run
from cnnkit.inference.segment import predict_and_challenge, predict_masks
from cnnkit.models import create_model
from cnnkit.train.classify import limit_test, make_optimizer, set_lr, split_validation
from cnnkit.train.config import TrainConfig
from cnnkit.train.seg_losses import cross_entropy, soft_dice_loss, unet_weight_map
from cnnkit.train.seg_metrics import SegmentationScores
from cnnkit.utils import CnnkitError


@dataclass
class SegmentResult:
    run_dir: Path
    history: list[dict]
    test: SegmentationScores
    classes: list[str]
    train_seconds: float
    model: nn.Module | None = None
    stop_reason: str | None = None
    challenge: dict | None = None  # ISBI: Rand F-score and information scores of the test set


def train_segmentation(config: TrainConfig, *, log=print) -> SegmentResult:
    """Train `config.model` on the segmentation data set `config.dataset`; write the run folder."""
    with Run.open(config, task="segment", prefix=f"{config.model}-{config.dataset}",
                  log=log) as run:
        return _train(run, run.config, run.log)


def _train(run: Run, config: TrainConfig, log) -> SegmentResult:
    env = run.env
    options = dict(data_dir=Path(config.data_dir).expanduser(), image_size=config.image_size,
                   quiet=config.quiet)
    train_full = load_dataset(config.dataset, "train", **options)
    test_set = limit_test(load_dataset(config.dataset, "test", **options), config)
    train_set, val_set = split_validation(train_full, config)
    classes, channels = train_set.classes, train_set.image_shape[0]
    model_kwargs = dict(num_classes=len(classes), in_chans=channels, **config.model_args)
    model = create_model(config.model, **model_kwargs)
    if not getattr(model, "dense_output", False):
        raise CnnkitError(f"{config.model} is a classifier; {config.dataset} needs a segmentation "
                          f"model (unet, unet_small, deeplabv3_resnet50, ...: `cnnkit models`)")
    crop = config.crop_size or min(train_set.image_shape[1:])
    margin = _margin(model, crop)
    model, net = run.prepare(model, channels_last=config.channels_last)
    optimizer = make_optimizer(config, model)
    run.restore(models={"model": model}, optimizers={"model": optimizer}, spec={
        "models": {"model": {"name": config.model, "kwargs": model_kwargs}}, "infer": "model",
        "classes": classes, "mean": list(train_set.mean), "std": list(train_set.std),
        "image_shape": list(train_set.image_shape), "ignore_index": train_set.ignore_index})

    weights = _class_weights(train_set, config.class_weights)
    if config.border_weight and len(classes) != 2:
        raise CnnkitError(f"--border-weight is the U-Net paper's weight map for touching objects "
                          f"of two classes; {config.dataset} has {len(classes)}")
    augment = JointAugment(crop_size=crop, hflip=config.hflip, vflip=config.vflip,
                           scale=(1 / config.max_scale, config.max_scale),
                           elastic=config.elastic, ignore_index=train_set.ignore_index)
    loader = SegmentationLoader(
        train_set, config.batch_size, shuffle=True, drop_last=True, seed=config.seed,
        augment=augment, margin=margin, channels_last=config.channels_last, rank=env.rank,
        world_size=env.world_size, weight_map=_border_weights if config.border_weight else None)
    steps_per_epoch = len(loader) // config.accumulate
    total_steps = config.epochs * steps_per_epoch
    if not run.resuming:
        log(_header(config, run, model, (train_set, val_set, test_set), crop, margin,
                    steps_per_epoch))

    lr = config.lr
    for epoch, batches in run.epochs(loader, epochs=config.epochs, accumulate=config.accumulate):
        net.train()
        for x, y, *pixel_weights in batches:
            lr = set_lr(optimizer, config, run.step_count, total_steps, steps_per_epoch)
            with run.autocast():
                logits = net(x)  # (B, K, H, W)
            loss = _loss(logits.float(), y, config.seg_loss, weights, pixel_weights,
                         train_set.ignore_index)
            run.sums["loss"] += run.step(loss, optimizer, clip=config.grad_clip) * len(y)
            run.sums["seen"] += len(y)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)
        row = {"train_loss": sums["loss"] / sums["seen"], "val_pixel_acc": None,
               "val_miou": None, "lr": lr}
        if val_set is not None:
            scores = evaluate_segmentation(model, shard(val_set, env), run,
                                           reduce_sum=run.reduce_tensor)
            row.update(val_pixel_acc=scores.pixel_accuracy, val_miou=scores.miou)
        run.end_epoch(row, batches=batches,
                      monitor=("val_miou", "max") if val_set is not None else ("train_loss", "min"))
    run.finish()

    predictions, challenge, cell_probability = predict_and_challenge(
        model, test_set, config.dataset, test_set.mean, test_set.std, precision=run.precision)
    test = SegmentationScores(len(classes), ignore_index=test_set.ignore_index)
    test.update(predictions, test_set.masks)
    if env.is_main:
        _write_figures(run.dir, test_set, predictions, test, classes, cell_probability)
    log(f"test ({len(test_set)} images, whole): pixel accuracy {test.pixel_accuracy:.4f}  "
        f"mIoU {test.miou:.4f}  Dice {test.mean_dice:.4f}")
    log(test.table(classes))
    if challenge:
        log("ISBI scores: " + "  ".join(f"{k} {v:.4f}" for k, v in challenge.items()))
    return SegmentResult(run.dir, run.history, test, classes, run.train_seconds, model,
                         run.stop_reason, challenge)


def _header(config: TrainConfig, run: Run, model: nn.Module, sets: tuple, crop: int, margin: int,
            steps_per_epoch: int) -> str:
    """The run's first line: model, data, crops, schedule, device."""
    train_set, val_set, test_set = sets
    return (f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
            f"{len(test_set)} test, {len(train_set.classes)} classes | crops {crop}×{crop}"
            f"{f' + {margin} px mirrored context' if margin else ''} | {config.epochs} epochs × "
            f"{steps_per_epoch} steps | {run.device.type}, {run.precision} | run {run.dir}")


# --- losses ---

def _loss(logits, y, kind: str, class_weights, pixel_weights, ignore_index: int):
    weights = pixel_weights[0] if pixel_weights else None
    loss = 0.0
    if kind in ("ce", "ce+dice"):
        loss = cross_entropy(logits, y, class_weights=class_weights, ignore_index=ignore_index,
                             pixel_weights=weights)
    if kind in ("dice", "ce+dice"):
        loss = loss + soft_dice_loss(logits, y, ignore_index=ignore_index)
    return loss


def _class_weights(ds: SegmentationDataset, how: str) -> torch.Tensor | None:
    """Median-frequency balancing (Eigen & Fergus 2015, as SegNet trains CamVid): class c gets
    median(f) / f_c, with f_c its share of the labelled pixels."""
    if how == "none":
        return None
    k = len(ds.classes)
    labelled = ds.masks[ds.masks != ds.ignore_index]
    freq = torch.bincount(labelled, minlength=k).double() / max(len(labelled), 1)
    present = freq > 0
    weights = torch.zeros(k, dtype=torch.float64)
    weights[present] = freq[present].median() / freq[present]
    return weights.float()


def _border_weights(masks: torch.Tensor) -> torch.Tensor:
    """The U-Net paper's weight map (eq. 2) of each mask in the batch, float32 (B, H, W)."""
    return torch.stack([torch.as_tensor(unet_weight_map(m.numpy())) for m in masks.cpu()])


def _margin(model: nn.Module, crop: int) -> int:
    """Mirrored context a valid-convolution network needs around a crop (0 for "same" ones)."""
    if not hasattr(model, "output_size") or getattr(model, "padding", "same") != "valid":
        return 0
    from cnnkit.models.unet_seg import unet_input_size  # noqa: PLC0415
    return (unet_input_size(crop, model.depth) - crop) // 2


# --- evaluation ---

def evaluate_segmentation(model: nn.Module, ds: SegmentationDataset, run: Run, *,
                          reduce_sum=None) -> SegmentationScores:
    """Scores of `model` on whole images of `ds` (this rank's shard; summed over ranks)."""
    scores = SegmentationScores(len(ds.classes), ignore_index=ds.ignore_index,
                                reduce_sum=reduce_sum)
    scores.update(predict_masks(model, ds.images, ds.mean, ds.std, precision=run.precision),
                  ds.masks)
    return scores


# --- figures ---

def _write_figures(run_dir: Path, ds: SegmentationDataset, predictions: torch.Tensor,
                   scores: SegmentationScores, classes: list[str],
                   cell_probability: torch.Tensor | None = None) -> None:
    from cnnkit.viz.segmentation import plot_cells, plot_class_iou, plot_overlays  # noqa: PLC0415
    if cell_probability is not None:  # ISBI: the cells as the challenge counts them
        plot_cells(ds.images[:2], ds.masks[:2], cell_probability[:2], run_dir / "cells.png")
    shown = np.linspace(0, len(ds) - 1, min(6, len(ds))).round().astype(int)
    plot_overlays(ds.images[shown], ds.masks[shown], predictions[shown], classes,
                  run_dir / "overlays.png", ignore_index=ds.ignore_index,
                  names=[ds.files[i] for i in shown])
    plot_class_iou(scores.iou, classes, run_dir / "class_iou.png")
