"""`train(config)`: the classification task (incl. the attention sequence reader), top to bottom.

Data (decoded once into memory) → model → optimiser with a pure-function learning-rate schedule →
epochs of whole-batch steps → validation → the engine's table, metrics.csv, last.pt/best.pt →
test evaluation and figures. The run's life (folder, resume, limits, signals, device, precision,
DDP) is cnnkit.engine.run.Run's; under torchrun each rank steps on batch_size images of its shard,
metrics are summed over ranks, and only rank 0 prints and writes files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import (ArrayDataset, BatchAugment, ImageFolderDataset, InMemoryLoader,
                         StreamingLoader, load_dataset)
from cnnkit.engine.distributed import DistEnv, gather_shards, shard
from cnnkit.engine.run import Run, TrainingDiverged
from cnnkit.data.imagefolder import EVAL_CROP, model_image_size, train_crop_scale
from cnnkit.models import create_model, get_model_cfg
from cnnkit.models._weights import freeze_model, load_weights, split_head
from cnnkit.train.config import TrainConfig
from cnnkit.train.metrics import Evaluation, evaluate, exact_matches, token_loss
from cnnkit.train.schedules import lr_at
from cnnkit.utils import CnnkitError

__all__ = ["train", "TrainResult", "TrainingDiverged", "load_data", "make_loader",
           "make_optimizer", "set_lr", "split_validation"]


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    test: Evaluation
    classes: list[str]
    train_seconds: float
    model: nn.Module | None = None  # the trained module (this rank's copy under torchrun)
    stop_reason: str | None = None  # the limit that ended an unfinished run (--resume continues)


# --- set-up ---

Dataset = ArrayDataset | ImageFolderDataset


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset | None, Dataset, dict]:
    """Train/validation/test sets, converted to the model's channels and size where it needs one.

    Image folders are decoded once into memory, or, with `--stream`, per batch by DataLoader
    workers (for folders larger than RAM).
    """
    cfg = get_model_cfg(config.model)
    image_size = config.image_size  # resolve() set it from --weights' checkpoint where it says
    channels = None
    if config.dataset == "imagefolder":  # arbitrary images: take the model's input format
        channels = cfg["input_size"][0]
        image_size = image_size or model_image_size(cfg, config.model_args)
    data_dir = Path(config.data_dir).expanduser()
    if config.stream:
        if config.dataset != "imagefolder":
            raise CnnkitError(f"--stream is for image folders; {config.dataset} is held in memory")
        train_full, test = (ImageFolderDataset(data_dir, split, image_size=image_size,
                                               channels=channels, strict=config.strict)
                            for split in ("train", "test"))
    else:
        options = dict(data_dir=data_dir, mirror=config.mirror, image_size=image_size,
                       channels=channels, quiet=config.quiet, strict=config.strict)
        train_full = load_dataset(config.dataset, "train", **options)
        test = load_dataset(config.dataset, "test", **options)
    train, val = split_validation(train_full, config)
    # Unreadable image files left out of either split: the run header counts them.
    train.unreadable = sum(len(getattr(ds, "skipped", ())) for ds in (train_full, test))
    model_kwargs = dict(num_classes=len(train_full.classes), in_chans=train_full.image_shape[0],
                        **config.model_args)
    model_kwargs.pop("weights", None)  # loaded by _train (config.init_weights), not a keyword
    if cfg["fixed_input_size"]:
        model_kwargs["img_size"] = train_full.image_shape[-1]
    if config.backend != "torch":
        model_kwargs["backend"] = config.backend
    return train, val, limit_test(test, config), model_kwargs


def split_validation(train_full, config: TrainConfig):
    """(train, validation or None): the first --train-limit images, then a seeded split — the
    same seed always holds out the same images."""
    if config.train_limit:
        train_full = train_full.subset(torch.arange(min(config.train_limit, len(train_full))))
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(config.seed))
    n_val = int(round(config.val_fraction * len(train_full)))
    return train_full.subset(order[n_val:]), (train_full.subset(order[:n_val]) if n_val else None)


def limit_test(test_set, config: TrainConfig):
    """The first --test-limit test images (all without it)."""
    if config.test_limit and config.test_limit < len(test_set):
        return test_set.subset(torch.arange(config.test_limit))
    return test_set


def make_loader(ds: Dataset, batch_size: int, config: TrainConfig, *, train: bool = False,
                env: DistEnv = DistEnv()):
    """Whole-batch loader over memory, or over files decoded by `config.workers` processes.

    A training loader gives each rank its strided shard of the epoch's permutation.
    """
    options = dict(shuffle=train, drop_last=train, seed=config.seed,
                   channels_last=config.channels_last, rank=env.rank, world_size=env.world_size)
    if train:
        options["augment"] = BatchAugment(crop_padding=config.crop_padding,
                                          translate=config.translate,
                                          hflip=config.hflip and ds.hflip_ok,
                                          resized_crop=train_crop_scale(ds))
    if isinstance(ds, ImageFolderDataset):
        return StreamingLoader(ds, batch_size, num_workers=config.workers, **options)
    return InMemoryLoader(ds, batch_size, **options)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters; fine-tuning (--weights) gives the backbone
    and the classifier head a parameter group each, so `set_lr` can scale the backbone's."""
    params = [p for p in model.parameters() if p.requires_grad]
    if getattr(config, "init_weights", None):
        backbone, head = split_head(model)
        params = [{"params": ps, "part": part} for part, ps in
                  (("backbone", backbone), ("head", head)) if ps]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                weight_decay=config.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int, total_steps: int,
           steps_per_epoch: int) -> float:
    """Give every parameter group the schedule's learning rate for `step` (the backbone's
    scaled by --backbone-lr-scale, read from the config so a resumed run takes a new one);
    return the head's."""
    lr = lr_at(step, total_steps=total_steps, steps_per_epoch=steps_per_epoch, lr=config.lr,
               schedule=config.schedule, warmup_epochs=config.warmup_epochs,
               step_size=config.step_size, gamma=config.gamma)
    for group in optimizer.param_groups:
        scale = getattr(config, "backbone_lr_scale", 1.0) if group.get("part") == "backbone" \
            else 1.0
        group["lr"] = lr * scale
    return lr


# --- the run ---

def train(config: TrainConfig, *, log=print) -> TrainResult:
    """Train `config.model` on `config.dataset`; write the run folder; return the test metrics.

    Under torchrun (WORLD_SIZE set) this joins the process group for the run and leaves it after.
    """
    with Run.open(config, task="classify", prefix=f"{config.model}-{config.dataset}",
                  log=log) as run:
        return _train(run, run.config, run.log)


def _train(run: Run, config: TrainConfig, log) -> TrainResult:
    env = run.env
    train_set, val_set, test_set, model_kwargs = load_data(config)
    model = create_model(config.model, **model_kwargs)  # same seed: same weights on every rank
    if config.init_weights and not run.resuming:  # resuming: restore() loads the run's own
        load_weights(model, config.init_weights, config.model, log=log)
    frozen = freeze_model(model, config.freeze)  # before DDP, which skips frozen parameters
    if env.active:
        torch.manual_seed(config.seed + env.rank)  # but each rank its own dropout masks
    model, net = run.prepare(model, channels_last=config.channels_last, sync_bn=config.sync_bn)
    optimizer = make_optimizer(config, model)
    run.restore(models={"model": model}, optimizers={"model": optimizer}, spec={
        "models": {"model": {"name": config.model, "kwargs": model_kwargs}}, "infer": "model",
        "classes": train_set.classes, "mean": list(train_set.mean), "std": list(train_set.std),
        "image_shape": list(train_set.image_shape)})
    train_loader = make_loader(train_set, _fitted_batch(config, len(train_set), env, log), config,
                               train=True, env=env)
    eval_batch = max(256, config.batch_size)
    val_loader = make_loader(shard(val_set, env), eval_batch, config) if val_set else None
    num_classes = model_kwargs["num_classes"]
    steps_per_epoch = len(train_loader) // config.accumulate
    total_steps = config.epochs * steps_per_epoch
    # best.pt and early stopping follow the validation metric; without a split, the train loss.
    monitor = ((config.monitor, "min" if config.monitor == "val_loss" else "max") if val_loader
               else ("train_loss", "min"))
    if not run.resuming:
        for line in _describe_start(run, model, (train_set, val_set, test_set), steps_per_epoch,
                                    frozen):
            log(line)

    lr = config.lr
    for epoch, batches in run.epochs(train_loader, epochs=config.epochs,
                                     accumulate=config.accumulate):
        net.train()
        for x, y in batches:
            lr = set_lr(optimizer, config, run.step_count, total_steps, steps_per_epoch)
            with run.autocast():
                logits = net(x)
            loss = token_loss(logits.float(), y, label_smoothing=config.label_smoothing)
            run.sums["loss"] += run.step(loss, optimizer, clip=config.grad_clip) * len(y)
            run.sums["correct"] += exact_matches(logits, y)
            run.sums["seen"] += len(y)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)  # the epoch's figures over every rank's images
        row = {"train_loss": sums["loss"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
               "val_loss": None, "val_acc": None, "val_top5": None, "lr": lr}
        if val_loader:
            val, _ = evaluate(model, val_loader, num_classes, precision=run.precision,
                              reduce_sum=run.reduce_tensor)
            row.update(val_loss=val.loss, val_acc=val.top1, val_top5=val.top5)
        run.end_epoch(row, batches=batches, monitor=monitor)
        if config.early_stop and run.best["stale"] >= config.early_stop:
            run.stop_early(f"early stop: {config.monitor} has not improved for "
                           f"{config.early_stop} epochs (best {run.best['value']:.4f} at epoch "
                           f"{run.best['epoch']})")
            break
    run.finish()

    # Test the final weights (the schedule has annealed them); after an early stop, the best ones.
    # The last weights are those in memory (on every rank its own, DDP-synchronised copy).
    chosen, final_epoch = "last.pt", len(run.history)
    if run.early_stopped:
        chosen, final_epoch = "best.pt", run.best["epoch"]
        model.load_state_dict(torch.load(run.dir / chosen, weights_only=True,
                                         map_location=run.device)["models"]["model"])
    test_loader = make_loader(shard(test_set, env), eval_batch, config)
    test, log_probs = evaluate(model, test_loader, num_classes, precision=run.precision,
                               keep_outputs=True, reduce_sum=run.reduce_tensor)
    log_probs = gather_shards(log_probs.cpu(), len(test_set), env)  # (N, ..., K), set order
    if test_set.labels.dim() == 2:  # sequences: whole-sequence and per-token accuracy
        scores = f"sequence accuracy {test.top1:.4f}  token accuracy {test.token_acc:.4f}"
    else:
        scores = f"top-1 {test.top1:.4f}  top-5 {test.top5:.4f}"
    log(f"test, weights of {chosen} (epoch {final_epoch}): loss {test.loss:.4f}  "
        f"{scores}  ({test.count} images)")
    if env.is_main:  # after the result is out: drawing takes ~1 s, a sixth of a MNIST run
        _write_figures(run.dir, run.history, test, log_probs, test_set, model, config)
    return TrainResult(run.dir, run.history, test, train_set.classes, run.train_seconds, model,
                       run.stop_reason)


def _fitted_batch(config: TrainConfig, images: int, env, log) -> int:
    """--batch-size, or all of a small folder's images in one batch (said once)."""
    batch_size = min(config.batch_size, -(-images // env.world_size))
    if batch_size < config.batch_size:
        log(f"note: --batch-size {config.batch_size} is more than the {images} training "
            f"images; using batches of {batch_size}")
    return batch_size


def _describe_start(run: Run, model: nn.Module, splits: tuple, steps_per_epoch: int,
                    frozen: str) -> list[str]:
    """The run's header: model, data, schedule and device; input and normalisation;
    fine-tuning; ranks."""
    config, env = run.config, run.env
    train_set, val_set, test_set = splits
    lines = [f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters | "
             f"{config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
             f"{len(test_set)} test{_unreadable(train_set)} | {config.epochs} epoch"
             f"{'s' * (config.epochs != 1)} × "
             f"{steps_per_epoch} steps | {run.device.type}, {run.precision} | run {run.dir}"]
    mean, std = (", ".join(f"{v:.3f}" for v in vals) for vals in (train_set.mean, train_set.std))
    resize = ""
    if config.dataset == "imagefolder":
        scale = train_crop_scale(train_set)
        side = train_set.image_shape[-1]
        resize = (f" (shorter side → {round(side / EVAL_CROP)}, centre {side}×{side}; "
                  f"training: random-resized crops, area {scale[0]:g}–{scale[1]:g})")
    lines.append(f"input {'×'.join(map(str, train_set.image_shape))}{resize} | normalised with "
                 f"mean ({mean}) std ({std})")
    if config.init_weights:
        lines.append(f"fine-tuning from {config.init_weights}" + (f" | {frozen}" if frozen else "")
                     + (f" | backbone lr × {config.backbone_lr_scale:g}"
                        if config.backbone_lr_scale != 1 else ""))
    elif frozen:
        lines.append(frozen)
    if env.active:
        lines.append(f"distributed: {env.world_size} processes × batch {config.batch_size} = "
                     f"global batch {env.world_size * config.batch_size}")
    return lines


# --- helpers of the loop ---

def _unreadable(train_set) -> str:
    count = getattr(train_set, "unreadable", 0)
    return f", {count} unreadable skipped" if count else ""


def _write_figures(run_dir: Path, history, test: Evaluation, log_probs, test_set, model,
                   config: TrainConfig) -> None:
    from cnnkit.viz import plot_confusion, plot_curves, plot_predictions  # noqa: PLC0415
    if history:  # empty when a limit stopped the run inside its first epoch
        plot_curves(history, run_dir / "curves.png")
    plot_confusion(test.confusion, test_set.classes, run_dir / "confusion.png")
    preds = log_probs.argmax(-1)  # (N,) or, for sequences, (N, T)
    wrong = (preds != test_set.labels).view(len(preds), -1).any(1).nonzero().flatten()[:8]
    shown = torch.cat([torch.arange(min(24, len(test_set))), wrong]).unique(sorted=False)[:32]
    confidence = log_probs[shown].exp().amax(-1).view(len(shown), -1).prod(1)  # (n,)
    names, pred_idx, true_idx = test_set.classes, preds[shown], test_set.labels[shown]
    if preds.dim() == 2:  # sequences: title each image with its whole predicted/true sequence
        names, (pred_idx, true_idx) = _sequence_names(test_set.classes, pred_idx, true_idx)
    plot_predictions(test_set.images_at(shown), pred_idx, true_idx, names,
                     run_dir / "predictions.png", probs=confidence)
    if hasattr(model, "last_attention"):  # soft attention: where each output step looked
        _plot_attention(model, test_set, shown[:6], config, run_dir / "attention.png")


def _plot_attention(model, test_set, index: torch.Tensor, config: TrainConfig, path: Path) -> None:
    from cnnkit.viz.attention import plot_attention  # noqa: PLC0415
    loader = make_loader(test_set.subset(index), len(index), config)
    x, y = next(iter(loader))
    with torch.no_grad():
        preds = model.eval()(x).argmax(-1)
    plot_attention(test_set.images_at(index), model.last_attention, preds, y, test_set.classes,
                   path)


def _sequence_names(classes: list[str], *sequences: torch.Tensor):
    """Token sequences (n, T) → one name per distinct sequence and indices into those names."""
    texts = [["".join(classes[t] for t in row if classes[t] != "end") or "∅" for row in seq.tolist()]
             for seq in sequences]
    names = sorted({t for seq in texts for t in seq})
    return names, [torch.tensor([names.index(t) for t in seq]) for seq in texts]
