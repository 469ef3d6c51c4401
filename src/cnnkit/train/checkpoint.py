"""Checkpoints are plain dicts written atomically and read with `weights_only=True`.

Keys: model, optimizer, scheduler, rng, epoch, step, history, best, config, model_name,
model_kwargs, classes, mean, std, image_size, version.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.models import create_model
from cnnkit.models._weights import read_checkpoint
from cnnkit.utils import CnnkitError, atomic_path


def new_run_dir(out_dir: str | Path, name: str | None, prefix: str) -> Path:
    """runs/<name>/ (default name: <prefix>-<time>), refusing a folder that already holds a run."""
    run_dir = Path(out_dir) / (name or f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}")
    if (run_dir / "last.pt").exists():
        raise CnnkitError(f"run folder {run_dir} already holds a run; continue it with "
                          f"--resume {run_dir} or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a kill mid-write never corrupts `path`."""
    with atomic_path(path) as tmp:
        torch.save({**state, "version": __version__}, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """A cnnkit checkpoint (a run folder means its last.pt); one-line errors otherwise."""
    ckpt = read_checkpoint(path)
    for key in ("model", "model_name", "model_kwargs"):
        if key not in ckpt:
            raise CnnkitError(f"{path} is not a cnnkit checkpoint (no '{key}' entry); "
                              "plain state_dicts load with create_model(name, weights=...)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the architecture recorded in the checkpoint and load its weights strictly."""
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CnnkitError(f"checkpoint weights do not fit '{ckpt['model_name']}': {first}") from None
    return model.eval()
