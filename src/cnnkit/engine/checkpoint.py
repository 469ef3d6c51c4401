"""The checkpoint envelope: one format for every task, one writer, one loader.

A checkpoint is a plain dict of tensors and Python values, written atomically and read with
`torch.load(weights_only=True)`:

    format, format_version, cnnkit_version, task   what wrote it
    config      the resolved run config (a dict)
    spec        how to rebuild it for inference: {"models": {part: {"name", "kwargs"}},
                "infer": the part that makes predictions/samples, "classes", "mean", "std",
                "image_shape": [C, H, W]}
    models      {part: state_dict}           e.g. {"model"} or {"generator", "discriminator"}
    optimizers  {part: optimizer state}
    ema         {part: EMA state}            weight averages, where the task keeps one
    extra       task state that is not a module (e.g. the GAN's per-step losses)
    per_rank    {name: [state per rank]}     task state each torchrun rank keeps its own of
                (CycleGAN's image pools); absent from checkpoints written before it existed
    rng         {"cpu": [state per rank], "cuda": [state per rank] or None}
    position    {"epochs_done", "step" (optimiser steps in all), "epoch_step" (steps of the
                unfinished epoch), "partial": [that epoch's running sums per rank]}
    history     the metric rows of the finished epochs; best: the monitored metric's best

This module sits at the bottom of the import graph (torch and cnnkit.utils only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from cnnkit import __version__
from cnnkit.utils import CnnkitError, atomic_path

FORMAT, FORMAT_VERSION = "cnnkit-checkpoint", 1


@dataclass(frozen=True)
class TaskInfo:
    train_command: str  # the command that writes and resumes this task's runs
    used_by: tuple[str, ...]  # the commands that take its checkpoints


TASKS: dict[str, TaskInfo] = {
    "classify": TaskInfo("cnnkit train", ("eval", "predict", "export", "visualize", "benchmark",
                                          "generate-eval --classifier")),
    "segment": TaskInfo("cnnkit train", ("eval", "predict", "export")),
    "detect": TaskInfo("cnnkit train", ("eval", "predict")),
    "pose": TaskInfo("cnnkit train", ("eval", "predict")),
    "ddpm": TaskInfo("cnnkit diffusion train", ("sample",)),
    "dcgan": TaskInfo("cnnkit gan train", ("sample",)),
}


def register_task(name: str, train_command: str, used_by: tuple[str, ...]) -> None:
    """Make a new task's checkpoints known to every command's error messages."""
    if name in TASKS:
        raise ValueError(f"task '{name}' is registered twice")
    TASKS[name] = TaskInfo(train_command, tuple(used_by))


def new_run_dir(out_dir: str | Path, name: str | None, prefix: str) -> Path:
    """runs/<name>/ (default name: <prefix>-<time>), refusing a folder that already holds a run.
    The prefix may hold a data set given as FORMAT:PATH: its separators become "_", so the
    default is one folder, not a path."""
    prefix = re.sub(r"[/\\:]+", "_", prefix).strip("_.")
    run_dir = Path(out_dir) / (name or f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}")
    if (run_dir / "last.pt").exists():
        raise CnnkitError(f"run folder {run_dir} already holds a run; continue it with "
                          f"--resume {run_dir} or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a kill mid-write never corrupts `path`."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION,
                    "cnnkit_version": __version__, **state}, tmp)


def checkpoint_path(path: str | Path, prefer: str = "last") -> Path:
    """A file stays itself; a run folder means its best.pt (prefer="best", where it exists) or
    its last.pt."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        return best if prefer == "best" and best.is_file() else path / "last.pt"
    return path


def read_checkpoint_file(path: str | Path) -> dict:
    """`torch.load(weights_only=True)` with one-line errors for missing or undecodable files."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise CnnkitError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors all mean the same to the user
        raise CnnkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'}") from None
    if not isinstance(obj, dict):
        raise CnnkitError(f"{path} is not a checkpoint (a dict of tensors was expected)")
    return obj


def load_checkpoint(path: str | Path, *, task: str | tuple[str, ...] | None = None,
                    command: str = "", prefer: str = "last") -> dict:
    """A cnnkit checkpoint envelope from a file or run folder, checked to be of `task`.

    A file from before format 1 is converted where it can be used for inference (its
    position is dropped: it cannot be resumed); anything else is a one-line error.
    `command` names the asking command in the error for a checkpoint of another task.
    """
    path = checkpoint_path(path, prefer)
    ckpt = read_checkpoint_file(path)
    if ckpt.get("format") != FORMAT:
        ckpt = _upgrade_legacy(ckpt, path)
    elif ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CnnkitError(f"{path} has checkpoint format {ckpt['format_version']}, newer than "
                          f"this cnnkit ({__version__}, format {FORMAT_VERSION}); upgrade cnnkit")
    wanted = (task,) if isinstance(task, str) else task
    if wanted and ckpt["task"] not in wanted:
        raise wrong_task(path, ckpt["task"], command or f"this command (needs {wanted[0]})")
    return ckpt


def wrong_task(path: Path, task: str, command: str) -> CnnkitError:
    """`X is a ddpm checkpoint (from `cnnkit diffusion train`); `cnnkit eval` does not take it:
    use `cnnkit sample``."""
    info = TASKS.get(task)
    if info is None:
        return CnnkitError(f"{path} is a checkpoint of task '{task}', unknown to this cnnkit")
    uses = " or ".join(f"`cnnkit {c}`" for c in info.used_by)
    return CnnkitError(f"{path} is a {task} checkpoint (written by `{info.train_command}`); "
                       f"{command} does not take it: use {uses}")


def _upgrade_legacy(ckpt: dict, path: Path) -> dict:
    """Checkpoints of cnnkit before format 1 (three layouts) → the envelope, for inference."""
    def spec(models: dict, infer: str, **rest) -> dict:
        return {"models": models, "infer": infer, "classes": ckpt.get("classes", []),
                "mean": ckpt.get("mean"), "std": ckpt.get("std"),
                "image_shape": ckpt.get("image_size"), **rest}

    common = {"format": FORMAT, "format_version": 0, "legacy": True,
              "config": ckpt.get("config", {}), "history": ckpt.get("history", [])}
    if ckpt.get("kind") == "dcgan" and "generator" in ckpt:
        return {**common, "task": "dcgan",
                "spec": spec({"generator": {"name": "dcgan_generator",
                                            "kwargs": ckpt["generator_kwargs"]},
                              "discriminator": {"name": "dcgan_discriminator",
                                                "kwargs": ckpt["discriminator_kwargs"]}},
                             "generator"),
                "models": {"generator": ckpt["generator"],
                           "discriminator": ckpt["discriminator"]}}
    if "model" in ckpt and "model_name" in ckpt and "model_kwargs" in ckpt:
        task = "ddpm" if "ema" in ckpt else "classify"
        upgraded = {**common, "task": task, "models": {"model": ckpt["model"]},
                    "spec": spec({"model": {"name": ckpt["model_name"],
                                            "kwargs": ckpt["model_kwargs"]}}, "model")}
        if task == "ddpm":
            upgraded["ema"] = {"model": ckpt["ema"]}
        return upgraded
    raise CnnkitError(f"{path} is not a cnnkit checkpoint (no '{FORMAT}' format mark); plain "
                      "state_dicts load with create_model(name, weights=...) or --weights")
