"""`Run`: the life of one training run, shared by every task (STYLE.md habit 15).

It owns what every task needs and nothing task-specific: the run folder and its resolved
config.yaml, the checkpoint envelope (last.pt, best.pt by a monitored metric), the resume rule,
the limits (--max-epochs, --max-time), SIGTERM/SIGINT (checkpoint at the next step boundary,
then a one-line exit naming --resume), the non-finite-loss stop (keeping the last good
checkpoint), the device, precision and DistributedDataParallel, the progress bar, the metric
table, metrics.csv and TensorBoard. A task keeps its step, evaluation and figures in view:

    with Run.open(config, task="ddpm", prefix="ddpm-mnist") as run:
        model, net = run.prepare(model)
        run.restore(models={"model": model}, optimizers={"model": opt}, spec=spec)
        for epoch, batches in run.epochs(loader, epochs=config.epochs):
            for x, y in batches:                  # skips finished steps; stops at limits/signals
                loss = process(x, y)
                run.sums["loss"] += run.step(loss, opt) * len(x)   # backward, clip, step
            if not batches.complete:              # stopped mid-epoch: last.pt has the position
                break
            run.end_epoch({"loss": ...}, monitor=("loss", "min"))  # table, csv, TB, last/best.pt
        run.finish()

An interrupted run resumes exactly: data order and augmentation depend only on (seed, epoch),
the position counts optimiser steps within the epoch, and every rank's RNG state is saved.
"""
from __future__ import annotations

import csv
import io
import math
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import nullcontext
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnkit.engine.checkpoint import (TASKS, checkpoint_path, load_checkpoint, new_run_dir,
                                      save_checkpoint, FORMAT_VERSION)
from cnnkit.engine.config import RunConfig, merge_for_resume
from cnnkit.engine.device import (autocast, resolve_device, resolve_precision, set_threads,
                                 to_device)
from cnnkit.engine.distributed import (DistEnv, all_gather_objects, all_reduce_sum,
                                       average_gradients, barrier, on_main, setup,
                                       sync_batchnorm, teardown)
from cnnkit.utils import CnnkitError, atomic_write_text


class TrainingDiverged(CnnkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(CnnkitError):
    """SIGTERM/SIGINT stopped the run at a step boundary, after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm  # noqa: PLC0415  (only once there is something to show)
    return tqdm(total=total, desc=desc, leave=False, disable=quiet or not sys.stderr.isatty(),
                dynamic_ncols=True)


def _absolute_data_dir(config: RunConfig) -> RunConfig:
    """`config` with its data_dir (where a task has one) user-expanded and absolute."""
    data_dir = getattr(config, "data_dir", None)
    if isinstance(data_dir, str) and data_dir:
        config.data_dir = str(Path(data_dir).expanduser().resolve())
    return config


class Run:
    """One training run; build it with `Run.open` (see the module docstring)."""

    def __init__(self, config: RunConfig, task: str, env: DistEnv, device: torch.device,
                 run_dir: Path | None, ckpt: dict | None, log):
        self.config, self.task, self.env, self.device = config, task, env, device
        self.precision = config.precision
        self.dir, self.log, self._ckpt = run_dir, log, ckpt
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: dict = {}
        self.per_rank: dict = {}  # state each rank keeps its own of (see `restore`)
        self.extra: dict = {}  # task state saved with the checkpoint (plain values and tensors)
        self.spec: dict = {}
        self.net: nn.Module | None = None  # the DDP wrapper, whose gradient sync `epochs` times
        self.history: list[dict] = []
        self.best: dict = {"value": None, "epoch": None, "stale": 0}
        self.step_count = 0  # optimiser steps in all
        self.epochs_done = 0
        self.epoch_step = 0  # optimiser steps of the unfinished epoch
        self.sums: Counter = Counter()  # the task's running sums of the epoch
        self._partial: dict | None = None  # sums of an interrupted epoch, from the checkpoint
        self.stop_reason: str | None = None
        self.early_stopped = False
        self._signal: int | None = None
        self._old_handlers: dict = {}
        self._writer = None
        self._deadline = math.inf
        self._train_start: float | None = None
        self.train_seconds = 0.0
        self._micro, self._accumulate = 0, 1
        self._postfix: dict[str, float] = {}
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    # --- opening ---

    @classmethod
    def open(cls, config: RunConfig, *, task: str, prefix: str, log=print,
             folder: bool = True) -> "Run":
        """A new run folder for `config`, or, with `config.resume`, the run it names with the
        saved config updated by the fields given now. `folder=False`: no files (a probe such
        as the learning-rate range test). Joins torchrun's process group when there is one."""
        env = setup()
        try:
            return cls._open(config, task, prefix, log, folder, env)
        except BaseException:
            teardown(env)
            raise

    @classmethod
    def _open(cls, config, task, prefix, log, folder, env) -> "Run":
        ckpt, notes, run_dir = None, [], None
        if config.resume:
            train_command = TASKS[task].train_command
            ckpt = load_checkpoint(config.resume, task=task, command=f"`{train_command}`")
            path = checkpoint_path(config.resume)
            if ckpt.get("legacy"):
                raise CnnkitError(f"{path} predates cnnkit's checkpoint format {FORMAT_VERSION}: "
                                  f"it still loads for inference but cannot be resumed; start "
                                  f"a new run")
            run_dir = path.parent
            if "data_dir" in config.given_fields():  # compared with the saved absolute path
                config = _absolute_data_dir(config)
            config, notes = merge_for_resume(ckpt["config"], config)
        config.resolve()
        # config.yaml and the checkpoint name the data by an absolute path: `cnnkit eval RUN`
        # from another folder then reads the same files.
        config = _absolute_data_dir(config)
        device = resolve_device(config.device)
        config.precision = resolve_precision(config.precision, device)  # recorded resolved
        # --threads, else physical cores not busy with other work (device.choose_threads)
        threads = set_threads(config.threads, deterministic=config.deterministic)
        torch.manual_seed(config.seed)
        # Only when it changes: the setter imports torch._inductor (1.6 s of start-up).
        if torch.are_deterministic_algorithms_enabled() != config.deterministic:
            torch.use_deterministic_algorithms(config.deterministic)
        log = log if env.is_main else (lambda *_: None)
        log(threads)  # the run header's first line: "threads: N (why)"
        if folder and run_dir is None:
            # Rank 0 names the folder (a timestamped default differs between processes).
            run_dir = on_main(env, new_run_dir, config.out_dir, config.name, prefix)
        run = cls(config, task, env, device, run_dir if folder else None, ckpt, log)
        for note in notes:
            log(f"resume: {note}")
        if run.dir is not None and env.is_main:
            atomic_write_text(run.dir / "config.yaml",
                              yaml.safe_dump(config.to_dict(), sort_keys=False))
        run._catch_signals()
        return run

    @property
    def resuming(self) -> bool:
        return self._ckpt is not None

    def prepare(self, model: nn.Module, *, channels_last: bool = False,
                sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
        """(model on the run's device, the module to call: DDP-wrapped under torchrun).

        DDP averages gradients over ranks during backward; the plain module is the one saved,
        so checkpoints have the same keys with one process or many.
        """
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=memory_format)
        if self.env.active and sync_bn:
            model = sync_batchnorm(model)
        net = model
        if self.env.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
            self.net = net
        return model, net

    def autocast(self):
        """The run's precision on its device type."""
        return autocast(self.precision, self.device.type)

    def restore(self, *, models: dict[str, nn.Module], spec: dict,
                optimizers: dict | None = None, ema: dict | None = None,
                extra: dict | None = None, per_rank: dict | None = None) -> None:
        """Register the parts every checkpoint holds and, when resuming, load them: weights,
        averages, optimiser moments, RNG, position, history. `spec` says how to rebuild the
        model for inference (see engine/checkpoint.py). `per_rank`: state that differs between
        torchrun ranks (objects with state_dict / load_state_dict, e.g. CycleGAN's image pools),
        gathered from every rank when a checkpoint is written, each rank's own restored."""
        self.models, self.optimizers, self.ema = models, optimizers or {}, ema or {}
        self.spec, self.extra = spec, extra if extra is not None else {}
        self.per_rank = per_rank or {}
        ckpt = self._ckpt
        if ckpt is None:
            return
        for group, parts in (("models", self.models), ("optimizers", self.optimizers),
                             ("ema", self.ema)):
            for name, part in parts.items():
                part.load_state_dict(ckpt[group][name])
        saved = ckpt.get("per_rank", {})
        for name, part in self.per_rank.items():
            if name not in saved:
                raise CnnkitError(f"{self.dir} was written before cnnkit saved its {name} per "
                                  f"rank: it loads for inference but cannot be resumed")
            part.load_state_dict(self._mine(saved[name]))
        self.extra.update(ckpt.get("extra", {}))
        if "grad_scaler" in self.extra:
            self.scaler.load_state_dict(self.extra.pop("grad_scaler"))
        self._set_rng(ckpt["rng"])
        position = ckpt["position"]
        self.epochs_done, self.step_count = position["epochs_done"], position["step"]
        self.epoch_step = position["epoch_step"]
        self._partial = self._mine(position["partial"])
        self.history, self.best = list(ckpt["history"]), dict(ckpt["best"])
        self.log(f"resuming {self.dir} after epoch {self.epochs_done}"
                 + (f" and {self.epoch_step} steps of epoch {self.epochs_done + 1}"
                    if self.epoch_step else ""))

    # --- the loop ---

    def epochs(self, loader, *, epochs: int, accumulate: int = 1):
        """(epoch index, its batches) for each epoch still to train, up to --max-epochs.

        `accumulate` batches make one optimiser step (the remainder of an epoch is dropped).
        """
        if len(loader) == 0:
            raise CnnkitError(f"--batch-size {loader.batch_size} is larger than the training "
                              f"set ({loader.num_samples} images)")
        self.steps_per_epoch = len(loader) // accumulate
        if self.steps_per_epoch == 0:
            raise CnnkitError(f"--accumulate {accumulate} × --batch-size {loader.batch_size} is "
                              f"more than one epoch ({len(loader)} batches)")
        self.total_epochs, self._accumulate = epochs, accumulate
        self._train_start = time.perf_counter()
        if self.config.max_time:
            self._deadline = self._train_start + 60 * self.config.max_time
        if self.history:  # a resumed run shows the rows it already has
            self.log(_table_header(self.history[0]))
            for row in self.history:
                self.log(_table_row(row))
        if self.epochs_done >= epochs:
            self.log(f"{self.dir} has finished its {epochs} epochs; extend it with --resume "
                     f"{self.dir} --epochs N")
        last = min(epochs, self.config.max_epochs or epochs)
        for epoch in range(self.epochs_done, last):
            if self.stop_reason or self.early_stopped:
                break
            loader.set_epoch(epoch)
            self.sums = Counter(self._partial or {}) if self.epoch_step else Counter()
            self._partial = None
            yield epoch, EpochBatches(self, loader, epoch)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *,
             clip: float = 0.0, name: str = "loss", average: bool = False) -> float:
        """Backward of `loss` (a mean over the batch) and, on the last batch of an accumulated
        step, gradient clipping to norm `clip` (0: none) and the optimiser step. `average`: mean
        the optimiser's gradients over the ranks first, for networks not wrapped in DDP.

        Returns this rank's loss as a float. A NaN or infinite loss (on any rank) stops the run
        before the step, keeping the last good checkpoint.
        """
        value = loss.item()
        check = value
        if self.env.active:  # every rank takes the same decision
            check = all_reduce_sum(torch.tensor([value], dtype=torch.float64),
                                   self.env).item() / self.env.world_size
        if not math.isfinite(check):
            kept = (f"the last good checkpoint is {self.dir / 'last.pt'}"
                    if self.dir is not None and (self.dir / "last.pt").exists()
                    else "no checkpoint was written")
            raise TrainingDiverged(f"{name} became {check} at epoch {self.epochs_done + 1}, step "
                                   f"{self.step_count + 1}: training stopped; {kept}; try a "
                                   f"lower --lr")
        self._postfix[name] = check
        if self._micro == 0:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss / self._accumulate).backward()  # the mean over the step's batches
        if self._micro == self._accumulate - 1:
            if average:
                average_gradients([p for group in optimizer.param_groups
                                   for p in group["params"]], self.env)
            if clip > 0:
                self.scaler.unscale_(optimizer)
                params = [p for group in optimizer.param_groups for p in group["params"]]
                nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(optimizer)
        return value

    def reduce(self, sums: dict) -> dict:
        """`sums` added over every rank (float64; the identity for one process)."""
        if not self.env.active:
            return dict(sums)
        keys = sorted(sums)
        totals = all_reduce_sum(torch.tensor([float(sums[k]) for k in keys],
                                             dtype=torch.float64), self.env)
        return dict(zip(keys, totals.tolist()))

    @property
    def reduce_tensor(self):
        """A tensor → summed-over-ranks function for evaluations, or None for one process."""
        return partial(all_reduce_sum, env=self.env) if self.env.active else None

    def end_epoch(self, metrics: dict, *, batches: "EpochBatches",
                  monitor: tuple[str, str] | None = None) -> bool:
        """Record a finished epoch: its row (epoch, `metrics`, time, images/s) in the table,
        metrics.csv and TensorBoard; last.pt; best.pt when `monitor` = (key, "max"|"min")
        improved. Collective under torchrun. Returns whether the monitored value improved."""
        images = self.reduce({"images": batches.images})["images"]
        row = {"epoch": self.epochs_done + 1, **metrics, "epoch_s": batches.seconds,
               "img_per_s": images / max(batches.seconds, 1e-9)}
        self.history.append(row)
        if len(self.history) == 1:
            self.log(_table_header(row))
        self.log(_table_row(row))
        self.epochs_done, self.epoch_step = self.epochs_done + 1, 0
        improved = monitor is not None and self._update_best(row, *monitor)
        state = self._state()
        if self.dir is not None and self.env.is_main:
            save_checkpoint(self.dir / "last.pt", state)
            if improved:
                save_checkpoint(self.dir / "best.pt", state)
            self._write_metrics()
        return improved

    def save_best(self, edit=None) -> None:
        """best.pt of this moment, for a task that decides itself what is best; `edit(state)`
        may change the envelope first (CycleGAN's --choose each assembles it from the epochs
        each generator did best in). Collective under torchrun."""
        state = self._state()
        if self.dir is not None and self.env.is_main:
            save_checkpoint(self.dir / "best.pt", edit(state) if edit else state)

    def stop_early(self, message: str) -> None:
        """End the run as finished before its planned epochs (early stopping)."""
        self.early_stopped = True
        self.log(message)

    def finish(self) -> None:
        """After the loop: say why the run stopped and how to continue. Raises RunInterrupted
        after a signal (the checkpoint is written), so the process exits non-zero."""
        if self._train_start is not None:
            self.train_seconds = time.perf_counter() - self._train_start
        self._restore_signals()  # training is over: a signal from here on acts as usual
        if self._signal is not None and not self.stop_reason:  # came after the last step
            self.stop_reason = signal.Signals(self._signal).name
        if not (self.stop_reason or self.early_stopped) and self.epochs_done < self.total_epochs:
            self.stop_reason = f"--max-epochs {self.config.max_epochs}"
        barrier(self.env)  # rank 0's checkpoints are on disk before anyone reads them
        if not self.stop_reason:
            return
        total = self.total_epochs * self.steps_per_epoch
        resume = f"{TASKS[self.task].train_command} --resume {self.dir}"
        if self._signal is not None:
            raise RunInterrupted(f"stopped by {self.stop_reason} at step {self.step_count}/{total}"
                                 f" with a checkpoint; continue with: {resume}",
                                 128 + self._signal)
        self.log(f"stopped by {self.stop_reason} at step {self.step_count}/{total} with a "
                 f"checkpoint; continue with: {resume}")

    # --- context: whatever happens, close files and the process group ---

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
        self._restore_signals()
        if exc_type is None:
            # Leave together: a rank that destroys the group while rank 0 still writes its
            # figures can abort inside gloo ("terminate called without an active exception").
            barrier(self.env)
        else:
            self._remove_unstarted_folder()
        teardown(self.env)

    # --- internals ---

    def _remove_unstarted_folder(self) -> None:
        """A new run that failed before its first checkpoint takes back what it wrote (the
        config.yaml, metrics.csv or TensorBoard files) and its folder, so the same --name starts
        afresh. A folder holding a checkpoint is never touched: that would lose work."""
        folder = self.dir
        if folder is None or self.resuming or not self.env.is_main or not folder.is_dir():
            return
        if any(folder.glob("*.pt")):
            return
        for name in ("config.yaml", "metrics.csv"):
            (folder / name).unlink(missing_ok=True)
        for events in folder.glob("events.out.tfevents.*"):
            events.unlink()
        try:
            folder.rmdir()  # only when empty: files the run did not write stay
        except OSError:
            pass

    def _catch_signals(self) -> None:
        """SIGTERM/SIGINT set a flag that the loop reads at the next step boundary; the
        handlers are put back at once, so a second signal acts as usual."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._signal = signum
            self._restore_signals()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[signum] = signal.signal(signum, handler)

    def _restore_signals(self) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)
        self._old_handlers = {}

    def _should_stop(self) -> bool:
        """A signal or the time limit, decided alike on every rank."""
        flags = torch.tensor([float(self._signal is not None),
                              float(time.perf_counter() > self._deadline)], dtype=torch.float64)
        signalled, out_of_time = all_reduce_sum(flags, self.env).tolist()
        if signalled:
            if self._signal is None:  # another rank was signalled: stop with it
                self._signal = signal.SIGTERM
            self.stop_reason = signal.Signals(self._signal).name
        elif out_of_time:
            self.stop_reason = f"--max-time {self.config.max_time:g} minutes"
        return self.stop_reason is not None

    def _update_best(self, row: dict, key: str, mode: str) -> bool:
        value = row[key]
        sign = 1.0 if mode == "max" else -1.0
        if self.best["value"] is None or sign * value > sign * self.best["value"]:
            self.best.update(value=value, epoch=row["epoch"], stale=0, metric=key)
            return True
        self.best["stale"] += 1
        return False

    def _rng_state(self) -> dict:
        """Every rank's CPU (and CUDA) generator state, gathered: a collective."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        states = all_gather_objects((torch.get_rng_state(), cuda), self.env)
        return {"cpu": [s[0] for s in states],
                "cuda": [s[1] for s in states] if cuda is not None else None}

    def _mine(self, states: list):
        """This rank's entry of a gathered list; rank 0's when the world size changed."""
        return states[self.env.rank] if len(states) == self.env.world_size else states[0]

    def _set_rng(self, rng: dict) -> None:
        torch.set_rng_state(self._mine(rng["cpu"]))
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(self._mine(rng["cuda"]), self.device)

    def _state(self) -> dict:
        """The checkpoint envelope of this moment (collective: every rank calls it)."""
        extra = dict(self.extra)
        if self.scaler.is_enabled():
            extra["grad_scaler"] = self.scaler.state_dict()
        return {
            "task": self.task, "config": self.config.to_dict(), "spec": self.spec,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": {k: e.state_dict() for k, e in self.ema.items()},
            "extra": extra, "rng": self._rng_state(),
            "per_rank": {k: all_gather_objects(part.state_dict(), self.env)
                         for k, part in self.per_rank.items()},
            "position": {"epochs_done": self.epochs_done, "step": self.step_count,
                         "epoch_step": self.epoch_step,
                         "partial": all_gather_objects(dict(self.sums), self.env)},
            "history": self.history, "best": self.best,
        }

    def _save_position(self) -> None:
        """last.pt in the middle of an epoch (a limit or a signal stopped it)."""
        state = self._state()
        if self.dir is not None and self.env.is_main:
            save_checkpoint(self.dir / "last.pt", state)

    def _write_metrics(self) -> None:
        out = io.StringIO()
        table = csv.DictWriter(out, fieldnames=list(self.history[0]))
        table.writeheader()
        table.writerows(self.history)
        atomic_write_text(self.dir / "metrics.csv", out.getvalue())
        if not self.config.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (slow import)
            self._writer = SummaryWriter(log_dir=str(self.dir), purge_step=len(self.history))
        row = self.history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self._writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self._writer.flush()


class EpochBatches:
    """The batches of one epoch, on the run's device. Batches finished before a resume are
    drawn and skipped (so the order and augmentation draws stay the epoch's); after each
    optimiser step the limits and signals are checked, and a stop mid-epoch writes last.pt
    with the position and `run.sums`. `complete` says whether the epoch ran to its end."""

    def __init__(self, run: Run, loader, epoch: int):
        self.run, self.loader, self.epoch = run, loader, epoch
        self.complete, self.seconds, self.images = False, 0.0, 0

    def __iter__(self):
        run, accumulate = self.run, self.run._accumulate
        steps = run.steps_per_epoch
        done = run.epoch_step  # optimiser steps of this epoch before a resume
        bar = progress_bar(steps, f"epoch {self.epoch + 1}/{run.total_epochs}",
                           run.config.quiet or not run.env.is_main)
        bar.update(done)
        start = time.perf_counter()
        for index, batch in enumerate(islice(self.loader, steps * accumulate)):
            if index < done * accumulate:
                continue
            run._micro = index % accumulate
            last = run._micro == accumulate - 1
            # DDP all-reduces gradients on the last batch of a step only: no_sync before it.
            sync = run.net.no_sync() if run.net is not None and not last else nullcontext()
            with sync:
                yield to_device(batch, run.device)
            self.images += len(batch[0])
            if not last:
                continue
            run.scaler.update()
            run.step_count += 1
            run.epoch_step += 1
            bar.update(1)
            if run.step_count % 10 == 0:
                bar.set_postfix({k: f"{v:.4f}" for k, v in run._postfix.items()})
            if run._should_stop():
                break
        bar.close()
        self.seconds = time.perf_counter() - start
        self.complete = run.epoch_step == steps
        if not self.complete:
            run._save_position()


# --- the metric table ---

def _width(key: str) -> int:
    return max(len(key), 7)


def _cell(key: str, value) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, int):
        text = str(value)
    elif key == "lr":
        text = f"{value:.2e}"
    elif key.endswith("per_s"):
        text = f"{value:.0f}"
    elif key.endswith("_s"):
        text = f"{value:.1f}"
    else:
        text = f"{value:.4f}"
    return text.rjust(_width(key))


def _table_header(row: dict) -> str:
    return "  ".join(key.rjust(_width(key)) for key in row)


def _table_row(row: dict) -> str:
    return "  ".join(_cell(key, value) for key, value in row.items())
