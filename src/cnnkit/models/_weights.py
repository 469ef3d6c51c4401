"""Loading a checkpoint file the user already has into a cnnkit model, strictly."""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from cnnkit.engine.checkpoint import FORMAT, read_checkpoint_file
from cnnkit.utils import CnnkitError

log = logging.getLogger("cnnkit")


def classifier_prefix(model: nn.Module) -> str:
    """Name of the last nn.Linear: the head, whose shape follows `num_classes`."""
    last = ""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


# Auxiliary classifiers that torchvision's GoogLeNet/Inception v3 files carry even though the
# models are used (and counted) without them; FCN/DeepLabV3 files carry the auxiliary
# segmentation head of their training loss (`aux_loss=True`).
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.", "aux_classifier.")


def load_weights(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Load a cnnkit checkpoint or a plain (torchvision/timm-layout) state_dict strictly.

    Keys must match exactly; a classifier of another size is left freshly initialised.
    """
    ckpt = read_checkpoint_file(path)
    state = ckpt
    if ckpt.get("format") == FORMAT:  # a cnnkit checkpoint: the weights of its inference part
        part = ckpt["spec"]["infer"]
        other = ckpt["spec"]["models"][part]["name"]
        if other != model_name:
            raise CnnkitError(f"{path} holds a '{other}' checkpoint, not '{model_name}'")
        state = ckpt["models"][part]
    elif "model" in ckpt and isinstance(ckpt["model"], dict):  # before checkpoint format 1
        other = ckpt.get("model_name")
        if other is not None and other != model_name:
            raise CnnkitError(f"{path} holds a '{other}' checkpoint, not '{model_name}'")
        state = ckpt["model"]
    own = model.state_dict()
    aux = [k for k in state if k.startswith(AUX_PREFIXES) and k not in own]
    if aux:
        log.warning("dropped %d auxiliary-classifier entries of %s (the model has no aux heads; "
                    "build it with aux_logits=True (segmentation: aux_loss=True) to keep them)", len(aux), path)
        state = {k: v for k, v in state.items() if k not in aux}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CnnkitError(f"{path} does not fit '{model_name}': {len(missing)} keys missing, "
                          f"{len(unexpected)} unexpected ({detail})")
    head = classifier_prefix(model)
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    head_keys = [k for k in wrong if head and k.startswith(head + ".")]
    if len(head_keys) != len(wrong):
        bad = next(k for k in wrong if k not in head_keys)
        raise CnnkitError(f"{path} does not fit '{model_name}': {bad} has shape "
                          f"{tuple(state[bad].shape)}, the model expects {tuple(own[bad].shape)}")
    if head_keys:
        log.warning("classifier '%s' re-initialised: checkpoint has %d classes, model has %d",
                    head, state[head + ".weight"].shape[0], own[head + ".weight"].shape[0])
        state = {k: (own[k] if k in head_keys else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
