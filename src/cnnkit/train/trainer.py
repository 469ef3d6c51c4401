"""`train(config)`: the whole training run in one function that reads top to bottom.

Data (decoded once into memory) → model → optimiser with a pure-function learning-rate schedule →
epochs of whole-batch steps → validation → checkpoints, metrics, plots → test evaluation.
A run killed at any point resumes exactly from its last epoch checkpoint: the data order and the
augmentation depend only on (seed, epoch), and the RNG state is saved with the weights.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from cnnkit.data import (ArrayDataset, BatchAugment, ImageFolderDataset, InMemoryLoader,
                         StreamingLoader, load_dataset)
from cnnkit.models import create_model, get_model_cfg
from cnnkit.train.checkpoint import load_checkpoint, new_run_dir, save_checkpoint
from cnnkit.train.config import TrainConfig
from cnnkit.train.metrics import Evaluation, autocast, evaluate, exact_matches, token_loss
from cnnkit.train.schedules import lr_at
from cnnkit.utils import CnnkitError, atomic_write_text

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr",
                  "epoch_s", "img_per_s"]


class TrainingDiverged(CnnkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    test: Evaluation
    classes: list[str]
    train_seconds: float


# --- set-up ---

def set_reproducibility(config: TrainConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(config.deterministic)


Dataset = ArrayDataset | ImageFolderDataset


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset | None, Dataset, dict]:
    """Train/validation/test sets, converted to the model's channels and size where it needs one.

    Image folders are decoded once into memory, or, with `--stream`, per batch by DataLoader
    workers (for folders larger than RAM).
    """
    cfg = get_model_cfg(config.model)
    image_size = config.image_size
    channels = None
    if config.dataset == "imagefolder":  # arbitrary images: take the model's input format
        channels = cfg["input_size"][0]
        image_size = image_size or cfg["input_size"][1]
    data_dir = Path(config.data_dir).expanduser()
    if config.stream:
        if config.dataset != "imagefolder":
            raise CnnkitError(f"--stream is for image folders; {config.dataset} is held in memory")
        train_full, test = (ImageFolderDataset(data_dir, split, image_size=image_size,
                                               channels=channels) for split in ("train", "test"))
    else:
        options = dict(data_dir=data_dir, mirror=config.mirror, image_size=image_size,
                       channels=channels, quiet=config.quiet)
        train_full = load_dataset(config.dataset, "train", **options)
        test = load_dataset(config.dataset, "test", **options)
    if config.train_limit:
        train_full = train_full.subset(torch.arange(min(config.train_limit, len(train_full))))
    # Seeded split: the same seed always holds out the same images.
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(config.seed))
    n_val = int(round(config.val_fraction * len(train_full)))
    val = train_full.subset(order[:n_val]) if n_val else None
    train = train_full.subset(order[n_val:])
    model_kwargs = dict(num_classes=len(train_full.classes), in_chans=train_full.image_shape[0],
                        **config.model_args)
    if cfg["fixed_input_size"]:
        model_kwargs["img_size"] = train_full.image_shape[-1]
    if config.backend != "torch":
        model_kwargs["backend"] = config.backend
    return train, val, test, model_kwargs


def make_loader(ds: Dataset, batch_size: int, config: TrainConfig, *, train: bool = False):
    """Whole-batch loader over memory, or over files decoded by `config.workers` processes."""
    options = dict(shuffle=train, drop_last=train, seed=config.seed,
                   channels_last=config.channels_last)
    if train:
        options["augment"] = BatchAugment(crop_padding=config.crop_padding,
                                          translate=config.translate,
                                          hflip=config.hflip and ds.hflip_ok)
    if isinstance(ds, ImageFolderDataset):
        return StreamingLoader(ds, batch_size, num_workers=config.workers, **options)
    return InMemoryLoader(ds, batch_size, **options)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                weight_decay=config.weight_decay)




def resume_state(resume: str) -> tuple[TrainConfig, Path, dict]:
    path = Path(resume)
    ckpt = load_checkpoint(path)
    run_dir = path if path.is_dir() else path.parent
    config = TrainConfig.from_dict(ckpt["config"])
    return config, run_dir, ckpt


# --- the run ---

def train(config: TrainConfig, *, log=print) -> TrainResult:
    """Train `config.model` on `config.dataset`; write the run folder; return the test metrics."""
    ckpt = None
    if config.resume:
        quiet = config.quiet
        config, run_dir, ckpt = resume_state(config.resume)
        config.quiet, config.resume = quiet, None
    config.resolve()
    set_reproducibility(config)
    train_set, val_set, test_set, model_kwargs = load_data(config)
    model = create_model(config.model, **model_kwargs)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(config, model)

    train_loader = make_loader(train_set, config.batch_size, config, train=True)
    if len(train_loader) == 0:
        raise CnnkitError(f"--batch-size {config.batch_size} is larger than the training set "
                          f"({len(train_set)} images)")
    eval_batch = max(256, config.batch_size)
    val_loader = make_loader(val_set, eval_batch, config) if val_set else None
    epochs, steps_per_epoch = config.epochs, len(train_loader)
    total_steps = epochs * steps_per_epoch
    num_classes = model_kwargs["num_classes"]

    history: list[dict] = []
    start_epoch, step = 0, 0
    best = {"value": None, "epoch": None, "stale": 0}
    if ckpt is not None:  # exact resume: weights, moments, RNG, step counter, history
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        history, best = list(ckpt["history"]), dict(ckpt["best"])
        log(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}/{epochs}")
    else:
        run_dir = new_run_dir(config.out_dir, config.name, f"{config.model}-{config.dataset}")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    writer = _tensorboard(run_dir, purge_step=start_epoch + 1)

    def checkpoint_state(epoch: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"name": config.schedule, "step": step, "total_steps": total_steps},
                "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "step": step,
                "history": history, "best": best, "config": config.to_dict(),
                "model_name": config.model, "model_kwargs": model_kwargs,
                "classes": train_set.classes, "mean": list(train_set.mean),
                "std": list(train_set.std), "image_size": list(train_set.image_shape)}

    if start_epoch == 0:
        log(f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
            f"{len(test_set)} test | {epochs} epochs × {steps_per_epoch} steps | run {run_dir}")
    log(_table_header())
    for row in history:
        log(_table_row(row))
    train_start, stopped_early = time.perf_counter(), False
    for epoch in range(start_epoch, epochs):
        model.train()
        train_loader.set_epoch(epoch)
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", config.quiet)
        for x, y in train_loader:
            lr = lr_at(step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                       lr=config.lr, schedule=config.schedule, warmup_epochs=config.warmup_epochs,
                       step_size=config.step_size, gamma=config.gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(config.precision):
                logits = model(x)
            loss = token_loss(logits.float(), y, label_smoothing=config.label_smoothing)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                writer.close()
                kept = (f"the last good checkpoint is {run_dir / 'last.pt'} (epoch {epoch})"
                        if (run_dir / "last.pt").exists() else "no checkpoint was written")
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step "
                                       f"{step + 1}: training stopped; {kept}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss_value * len(y)
            correct += exact_matches(logits, y)
            seen += len(y)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        epoch_s = time.perf_counter() - t0

        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": None, "val_acc": None, "val_top5": None, "lr": lr,
               "epoch_s": epoch_s, "img_per_s": seen / epoch_s}
        if val_loader:
            val, _ = evaluate(model, val_loader, num_classes, precision=config.precision)
            row.update(val_loss=val.loss, val_acc=val.top1, val_top5=val.top5)
        history.append(row)
        log(_table_row(row))
        _write_metrics(run_dir, history, writer)

        improved = _update_best(best, row, config.monitor, epoch)
        state = checkpoint_state(epoch)
        save_checkpoint(run_dir / "last.pt", state)
        if improved:
            save_checkpoint(run_dir / "best.pt", state)
        stopped_early = bool(config.early_stop) and best["stale"] >= config.early_stop
        if stopped_early:
            log(f"early stop: {config.monitor} has not improved for {config.early_stop} epochs "
                f"(best {best['value']:.4f} at epoch {best['epoch'] + 1})")
            break
    train_seconds = time.perf_counter() - train_start
    writer.close()

    # Test the final weights (the schedule has annealed them); after an early stop, the best ones.
    chosen = "best.pt" if stopped_early else "last.pt"
    final = load_checkpoint(run_dir / chosen)
    model.load_state_dict(final["model"])
    test_loader = make_loader(test_set, eval_batch, config)
    test, log_probs = evaluate(model, test_loader, num_classes, precision=config.precision,
                               keep_outputs=True)
    _write_figures(run_dir, history, test, log_probs, test_set, model, config)
    if test_set.labels.dim() == 2:  # sequences: whole-sequence and per-token accuracy
        scores = f"sequence accuracy {test.top1:.4f}  token accuracy {test.token_acc:.4f}"
    else:
        scores = f"top-1 {test.top1:.4f}  top-5 {test.top5:.4f}"
    log(f"test, weights of {chosen} (epoch {final['epoch'] + 1}): loss {test.loss:.4f}  "
        f"{scores}  ({test.count} images)")
    return TrainResult(run_dir, history, test, train_set.classes, train_seconds)


# --- helpers of the loop ---

def _update_best(best: dict, row: dict, monitor: str, epoch: int) -> bool:
    value = row[monitor] if row[monitor] is not None else -row["train_loss"]
    sign = -1.0 if monitor == "val_loss" and row[monitor] is not None else 1.0
    if best["value"] is None or sign * value > sign * best["value"]:
        best.update(value=value, epoch=epoch, stale=0)
        return True
    best["stale"] += 1
    return False


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm  # noqa: PLC0415
    return tqdm(total=total, desc=desc, leave=False, disable=quiet or not sys.stderr.isatty(),
                dynamic_ncols=True)


def _tensorboard(run_dir: Path, purge_step: int):
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (slow import)
    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)


def _fmt(value) -> str:
    return "      -" if value is None else f"{value:7.4f}"


def _table_header() -> str:
    return "epoch  train_loss  train_acc  val_loss  val_acc        lr  time_s    img/s"


def _table_row(r: dict) -> str:
    return (f"{r['epoch']:5d}     {_fmt(r['train_loss'])}    {_fmt(r['train_acc'])}   "
            f"{_fmt(r['val_loss'])}  {_fmt(r['val_acc'])}  {r['lr']:.2e}  {r['epoch_s']:6.1f}  "
            f"{r['img_per_s']:7.0f}")


def _write_metrics(run_dir: Path, history: list[dict], writer) -> None:
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=METRIC_COLUMNS)
    table.writeheader()
    table.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", out.getvalue())
    row = history[-1]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s"):
        if row[key] is not None:
            writer.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])
    writer.flush()


def _write_figures(run_dir: Path, history, test: Evaluation, log_probs, test_set, model,
                   config: TrainConfig) -> None:
    from cnnkit.viz import plot_confusion, plot_curves, plot_predictions  # noqa: PLC0415
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
