"""`train(config)`: the whole training run in one function that reads top to bottom.

Data (decoded once into memory) → model → optimiser with a pure-function learning-rate schedule →
epochs of whole-batch steps → validation → checkpoints, metrics, plots → test evaluation.
A run killed at any point resumes exactly from its last epoch checkpoint: the data order and the
augmentation depend only on (seed, epoch), and the RNG state is saved with the weights.
Launched by torchrun, the same function trains DistributedDataParallel (see distributed.py):
each rank steps on batch_size images of its shard, metrics are summed over ranks, and only
rank 0 prints and writes files.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnkit.data import (ArrayDataset, BatchAugment, ImageFolderDataset, InMemoryLoader,
                         StreamingLoader, load_dataset)
from cnnkit.models import create_model, get_model_cfg
from cnnkit.train.checkpoint import load_checkpoint, new_run_dir, save_checkpoint
from cnnkit.train.config import TrainConfig
from cnnkit.train.distributed import (DistEnv, all_gather_objects, all_reduce_sum, barrier,
                                      gather_shards, on_main, setup, shard, sync_batchnorm,
                                      teardown)
from cnnkit.train.metrics import Evaluation, autocast, evaluate, exact_matches, token_loss
from cnnkit.train.schedules import lr_at
from cnnkit.utils import CnnkitError, atomic_write_text

RESUME_OVERRIDES = ("quiet", "max_time", "max_epochs")  # a resumed run takes these anew
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
    model: nn.Module | None = None  # the trained module (this rank's copy under torchrun)
    stop_reason: str | None = None  # the limit that ended an unfinished run (--resume continues)


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
    """Train `config.model` on `config.dataset`; write the run folder; return the test metrics.

    Under torchrun (WORLD_SIZE set) this joins the process group for the run and leaves it after.
    """
    env = setup()
    try:
        return _train(config, env, log if env.is_main else lambda *_: None)
    finally:
        teardown(env)


def _train(config: TrainConfig, env: DistEnv, log) -> TrainResult:
    reduce_sum = partial(all_reduce_sum, env=env) if env.active else None
    ckpt = None
    if config.resume:  # the saved config, except what the new command line may change
        invocation = {key: getattr(config, key) for key in RESUME_OVERRIDES}
        config, run_dir, ckpt = resume_state(config.resume)
        config.resume = None
        for key, value in invocation.items():
            setattr(config, key, value)
    config.resolve()
    set_reproducibility(config)
    train_set, val_set, test_set, model_kwargs = load_data(config)
    model = create_model(config.model, **model_kwargs)  # same seed: same weights on every rank
    if env.active:
        torch.manual_seed(config.seed + env.rank)  # but each rank its own dropout masks
        if config.sync_bn:
            model = sync_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(config, model)
    # DDP averages the gradients over ranks during backward; `model` stays the plain module, so
    # checkpoints hold the same state_dict keys as a one-process run.
    net = DistributedDataParallel(model) if env.active else model

    train_loader = make_loader(train_set, config.batch_size, config, train=True, env=env)
    if len(train_loader) == 0:
        raise CnnkitError(f"--batch-size {config.batch_size} is larger than the training set "
                          f"({len(train_set)} images)")
    eval_batch = max(256, config.batch_size)
    val_loader = make_loader(shard(val_set, env), eval_batch, config) if val_set else None
    epochs, steps_per_epoch = config.epochs, len(train_loader) // config.accumulate
    if steps_per_epoch == 0:
        raise CnnkitError(f"--accumulate {config.accumulate} × --batch-size {config.batch_size} "
                          f"is more than one epoch ({len(train_loader)} batches)")
    total_steps = epochs * steps_per_epoch
    num_classes = model_kwargs["num_classes"]

    history: list[dict] = []
    start_epoch, step, resumed_sums = 0, 0, (0.0, 0, 0)  # sums of an interrupted epoch
    best = {"value": None, "epoch": None, "stale": 0}
    if ckpt is not None:  # exact resume: weights, moments, RNG, step counter, history
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        per_rank = ckpt["rng"].get("per_rank") or []
        torch.set_rng_state(per_rank[env.rank] if len(per_rank) == env.world_size
                            else ckpt["rng"]["torch"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        history, best = list(ckpt["history"]), dict(ckpt["best"])
        partials = ckpt.get("partial") or [(0.0, 0, 0)]
        resumed_sums = tuple(partials[env.rank] if len(partials) == env.world_size
                             else partials[0])
        within = step - start_epoch * steps_per_epoch
        log(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}/{epochs}"
            + (f" and {within} steps of epoch {start_epoch + 1}" if within else ""))
    else:
        # Rank 0 names the folder (a timestamped default differs between processes).
        run_dir = on_main(env, new_run_dir, config.out_dir, config.name,
                          f"{config.model}-{config.dataset}")
    writer = None  # TensorBoard: rank 0's
    if env.is_main:
        atomic_write_text(run_dir / "config.yaml",
                          yaml.safe_dump(config.to_dict(), sort_keys=False))
        writer = _tensorboard(run_dir, purge_step=start_epoch + 1)

    def checkpoint_state(epoch: int, epoch_sums: tuple = (0.0, 0, 0)) -> dict:
        """Everything a resume needs; `epoch` is the last finished one, `epoch_sums` this rank's
        sums over the steps of the next one already taken. Collective: every rank calls it."""
        rng = {"torch": torch.get_rng_state()}
        if env.active:
            rng["per_rank"] = all_gather_objects(rng["torch"], env)
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"name": config.schedule, "step": step, "total_steps": total_steps},
                "rng": rng, "epoch": epoch, "step": step,
                "partial": all_gather_objects(epoch_sums, env),
                "history": history, "best": best, "config": config.to_dict(),
                "model_name": config.model, "model_kwargs": model_kwargs,
                "classes": train_set.classes, "mean": list(train_set.mean),
                "std": list(train_set.std), "image_size": list(train_set.image_shape)}

    if start_epoch == 0:
        log(f"{config.model}: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} train, {len(val_set) if val_set else 0} val, "
            f"{len(test_set)} test | {epochs} epochs × {steps_per_epoch} steps | run {run_dir}")
        if env.active:
            log(f"distributed: {env.world_size} processes × batch {config.batch_size} = global "
                f"batch {env.world_size * config.batch_size}")
    log(_table_header())
    for row in history:
        log(_table_row(row))
    train_start, stopped_early, stop_reason = time.perf_counter(), False, None
    deadline = train_start + 60 * config.max_time if config.max_time else math.inf
    for epoch in range(start_epoch, min(epochs, config.max_epochs or epochs)):
        net.train()
        train_loader.set_epoch(epoch)
        done = step - epoch * steps_per_epoch  # optimiser steps of this epoch before a resume
        loss_sum, correct, seen = resumed_sums if done else (0.0, 0, 0)
        t0, seen_before = time.perf_counter(), seen
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{epochs}",
                           config.quiet or not env.is_main)
        bar.update(done)
        # `accumulate` batches per optimiser step; the remainder of the epoch is dropped.
        for index, (x, y) in enumerate(islice(train_loader, steps_per_epoch * config.accumulate)):
            if index < done * config.accumulate:
                continue  # consumed so the batch order and augmentation draws stay the epoch's
            first, last = index % config.accumulate == 0, (index + 1) % config.accumulate == 0
            if first:
                lr = lr_at(step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                           lr=config.lr, schedule=config.schedule,
                           warmup_epochs=config.warmup_epochs, step_size=config.step_size,
                           gamma=config.gamma)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
            # DDP all-reduces gradients on the last batch of a step only: no_sync before.
            sync = nullcontext() if last or not env.active else net.no_sync()
            with sync:
                with autocast(config.precision):
                    logits = net(x)
                loss = token_loss(logits.float(), y, label_smoothing=config.label_smoothing)
                # The time limit is judged with the loss, so every rank stops at the same step.
                local_loss = loss.item()
                flags = torch.tensor([local_loss, float(last and time.perf_counter() > deadline)],
                                     dtype=torch.float64)
                loss_value, out_of_time = (all_reduce_sum(flags, env) / env.world_size).tolist()
                if not math.isfinite(loss_value):
                    bar.close()
                    if writer is not None:
                        writer.close()
                    kept = (f"the last good checkpoint is {run_dir / 'last.pt'}"
                            if (run_dir / "last.pt").exists() else "no checkpoint was written")
                    raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step "
                                           f"{step + 1}: training stopped; {kept}; try a lower "
                                           f"--lr")
                (loss / config.accumulate).backward()  # the mean over the step's batches
            loss_sum += local_loss * len(y)
            correct += exact_matches(logits, y)
            seen += len(y)
            if not last:
                continue
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}",
                                img_s=f"{(seen - seen_before) / (time.perf_counter() - t0):.0f}")
            if out_of_time:
                stop_reason = f"--max-time {config.max_time:g} minutes"
                break
        bar.close()
        epoch_s = time.perf_counter() - t0
        if step < (epoch + 1) * steps_per_epoch:  # stopped mid-epoch: keep the position
            state = checkpoint_state(epoch - 1, (loss_sum, correct, seen))
            if env.is_main:
                save_checkpoint(run_dir / "last.pt", state)
            break
        images_this_run = seen - seen_before
        if env.active:  # the epoch's figures over every rank's images
            totals = all_reduce_sum(torch.tensor([loss_sum, correct, seen, images_this_run],
                                                 dtype=torch.float64), env)
            loss_sum, correct, seen = totals[0].item(), int(totals[1]), int(totals[2])
            images_this_run = int(totals[3])

        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": None, "val_acc": None, "val_top5": None, "lr": lr,
               "epoch_s": epoch_s, "img_per_s": images_this_run / epoch_s}
        if val_loader:
            val, _ = evaluate(model, val_loader, num_classes, precision=config.precision,
                              reduce_sum=reduce_sum)
            row.update(val_loss=val.loss, val_acc=val.top1, val_top5=val.top5)
        history.append(row)
        log(_table_row(row))
        improved = _update_best(best, row, config.monitor, epoch)  # same decision on all ranks
        state = checkpoint_state(epoch)
        if env.is_main:
            _write_metrics(run_dir, history, writer)
            save_checkpoint(run_dir / "last.pt", state)
            if improved:
                save_checkpoint(run_dir / "best.pt", state)
        stopped_early = bool(config.early_stop) and best["stale"] >= config.early_stop
        if stopped_early:
            log(f"early stop: {config.monitor} has not improved for {config.early_stop} epochs "
                f"(best {best['value']:.4f} at epoch {best['epoch'] + 1})")
            break
        if stop_reason:  # the time ran out on an epoch's last step
            break
    train_seconds = time.perf_counter() - train_start
    if not (stop_reason or stopped_early) and len(history) < epochs:
        stop_reason = f"--max-epochs {config.max_epochs}"
    if stop_reason:
        log(f"stopped by {stop_reason} at step {step}/{total_steps} with a checkpoint; continue "
            f"with: cnnkit train --resume {run_dir}")
    if writer is not None:
        writer.close()
    barrier(env)  # rank 0's checkpoints are on disk before anyone reads them

    # Test the final weights (the schedule has annealed them); after an early stop, the best ones.
    # The last weights are those in memory (on every rank its own, DDP-synchronised copy).
    chosen, final_epoch = "last.pt", len(history) - 1
    if stopped_early:
        chosen = "best.pt"
        final = load_checkpoint(run_dir / chosen)
        model.load_state_dict(final["model"])
        final_epoch = final["epoch"]
    test_loader = make_loader(shard(test_set, env), eval_batch, config)
    test, log_probs = evaluate(model, test_loader, num_classes, precision=config.precision,
                               keep_outputs=True, reduce_sum=reduce_sum)
    log_probs = gather_shards(log_probs, len(test_set), env)  # (N, ..., K) in test-set order
    if env.is_main:
        _write_figures(run_dir, history, test, log_probs, test_set, model, config)
    if test_set.labels.dim() == 2:  # sequences: whole-sequence and per-token accuracy
        scores = f"sequence accuracy {test.top1:.4f}  token accuracy {test.token_acc:.4f}"
    else:
        scores = f"top-1 {test.top1:.4f}  top-5 {test.top5:.4f}"
    log(f"test, weights of {chosen} (epoch {final_epoch + 1}): loss {test.loss:.4f}  "
        f"{scores}  ({test.count} images)")
    return TrainResult(run_dir, history, test, train_set.classes, train_seconds, model,
                       stop_reason)


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
