"""Checkpoint → model + normalisation, written once for every command that runs a trained model.

The checkpoint's `spec` names each part's registered architecture and keywords; `load_model`
rebuilds the part that makes predictions (or samples), loads its weights strictly — the EMA
average where the run kept one — and returns it with what it needs to see images as in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.engine.checkpoint import checkpoint_path, load_checkpoint
from cnnkit.models import create_model
from cnnkit.utils import CnnkitError


@dataclass
class LoadedModel:
    """A trained model in eval mode with the facts of its run."""
    model: nn.Module
    task: str
    name: str  # registered architecture
    classes: list[str]
    mean: tuple[float, ...]  # per-channel normalisation on the 0..1 scale
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) it was trained on
    config: dict
    spec: dict
    path: Path

    @property
    def output(self) -> str:
        """'logits' or 'log_probs' (see `output_kind`)."""
        return output_kind(self.model)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → float (x/255 − mean)/std, as the loader did in training."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


def output_kind(model: nn.Module) -> str:
    """What `model(x)` returns: 'log_probs' for a model whose last layer is nn.LogSoftmax —
    LeNet, which keeps the chapter's softmax output layer; 'logits' for every other model with a
    classifier head (`forward_head`, STYLE.md habit 4: class scores per image or per pixel);
    'other' for the rest (generators, the DDPM U-Net, detectors, pose and U-Net segmenters).

    Log-probabilities and logits give the same probabilities through softmax (softmax(log p) = p,
    as p sums to 1) and the same cross-entropy, so `predict` and `eval` need no special case; an
    exported file says which it returns in its metadata, for programs that read it without
    PyTorch.
    """
    last = next(reversed(list(model.modules())), None)
    if isinstance(last, nn.LogSoftmax):
        return "log_probs"
    return "logits" if hasattr(model, "forward_head") else "other"


def load_model(path: str | Path, *, task: str | tuple[str, ...] = "classify", command: str = "",
               prefer: str = "best", part: str | None = None,
               use_ema: bool = True) -> LoadedModel:
    """The inference part of a checkpoint (a run folder means its best.pt, else last.pt).

    `task`: the task(s) the asking command takes; another task's checkpoint is a one-line error
    that names the command that does take it.
    """
    file = checkpoint_path(path, prefer)
    ckpt = load_checkpoint(file, task=task, command=command)
    spec = ckpt["spec"]
    part = part or spec["infer"]
    arch = spec["models"][part]
    model = create_model(arch["name"], **arch["kwargs"])
    averaged = ckpt.get("ema", {}).get(part) if use_ema else None
    state = averaged["model"] if averaged else ckpt["models"][part]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CnnkitError(f"{file}: weights do not fit '{arch['name']}': {first}") from None
    channels = spec["image_shape"][0]
    return LoadedModel(model.eval(), ckpt["task"], arch["name"], list(spec["classes"]),
                       tuple(spec.get("mean") or (0.0,) * channels),
                       tuple(spec.get("std") or (1.0,) * channels),
                       tuple(spec["image_shape"]), ckpt.get("config", {}), spec, file)
