"""Loading a checkpoint file the user already has into a cnnkit model, strictly; and what
fine-tuning it needs: the head/backbone split, the stages that `--freeze N` counts, freezing;
and starting a detector's or pose network's backbone from a cnnkit classifier run.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from torch import nn

from cnnkit.engine.checkpoint import (FORMAT, checkpoint_path, load_checkpoint,
                                     read_checkpoint_file)
from cnnkit.utils import CnnkitError

logger = logging.getLogger("cnnkit")


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


def load_weights(model: nn.Module, path: str | Path, model_name: str, *, log=None) -> None:
    """Load a cnnkit checkpoint (a run folder means its best.pt, else last.pt, as for `cnnkit
    eval`) or a plain (torchvision/timm-layout) state_dict strictly.

    Keys must match exactly; a classifier of another size is left freshly initialised, and
    one line (to `log`, default the "cnnkit" logger's warning) says so.
    """
    path = checkpoint_path(path, "best")
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
        logger.warning("dropped %d auxiliary-classifier entries of %s (the model has no aux heads; "
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
        (log or logger.warning)(f"classifier '{head}' re-initialised: {path} has "
                                f"{state[head + '.weight'].shape[0]} classes, the model has "
                                f"{own[head + '.weight'].shape[0]}")
        state = {k: (own[k] if k in head_keys else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def checkpoint_image_size(path: str | Path) -> int | None:
    """The square input side a cnnkit checkpoint was trained at (None: a plain state_dict, which
    does not say, or a non-square input)."""
    ckpt = read_checkpoint_file(checkpoint_path(path, "best"))
    shape = ckpt.get("spec", {}).get("image_shape") if ckpt.get("format") == FORMAT else None
    return int(shape[1]) if shape and len(shape) == 3 and shape[1] == shape[2] else None


# --- fine-tuning: head and backbone, stages, freezing ---

def split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters), trainable ones only; the head is the last
    nn.Linear (`classifier_prefix`), whose shape follows the class count."""
    head = classifier_prefix(model)
    backbone, top = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (top if head and name.startswith(head + ".") else backbone).append(p)
    return backbone, top


_STAGE = re.compile(r"layer\d+$")  # ResNet's layer1..layer4 (He et al. 2015, Table 1)
_BODIES = ("features", "blocks", "layers", "encoder")  # containers whose children are stages


def _units(module: nn.Module, prefix: str = "") -> list[str]:
    """Names of `module`'s parameters held directly, then of its children, a body container
    (`_BODIES`) opened into its own units, in order."""
    units = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    for name, child in module.named_children():
        units += (_units(child, f"{prefix}{name}.") if name in _BODIES
                  else [prefix + name])
    return units


def model_stages(model: nn.Module) -> list[list[str]]:
    """Names of the model's stages (modules or parameters), input to output, without the head
    and parameter-free modules: what `--freeze N` counts.

    ResNets (children named layer1..layer4): stage 1 is the stem (conv1, bn1) with layer1, then
    one stage per layerK, as torchvision's `trainable_layers` counts its detection backbones.
    Other families: their children in order, body containers (`features` of VGG, DenseNet,
    MobileNet, EfficientNet, Swin; ViT's `encoder.layers`) opened, so each block is a stage;
    a parameter held directly (ViT's class token, position embedding) joins the stage after it.
    """
    head = classifier_prefix(model)
    params = dict(model.named_parameters())
    units = [n for n in _units(model)
             if (n in params or any(True for _ in model.get_submodule(n).parameters()))
             and not (head and (head == n or head.startswith(n + ".")))]
    if any(_STAGE.match(n) for n in units):  # a ResNet: the stem joins layer1
        stages, stem = [], []
        for name in units:
            if _STAGE.match(name):
                stages.append(stem + [name])
                stem = []
            elif stages:
                stages.append([name])
            else:
                stem.append(name)
        return stages
    stages, lead = [], []
    for name in units:
        if name in params:
            lead.append(name)  # a parameter held directly joins the module after it
        else:
            stages.append(lead + [name])
            lead = []
    return stages + ([lead] if lead else [])


def freeze_model(model: nn.Module, freeze: str) -> str:
    """Freeze `backbone` (everything but the head), the first N stages ("N"), or nothing
    ("none"); return a line saying what is trainable.

    Frozen parameters stop receiving gradients, and frozen BatchNorm layers stay in eval mode
    (their running statistics kept too), whatever `model.train()` later says: a BatchNorm
    that kept updating its statistics would drift away from the frozen weights that follow it
    (torchvision's detection backbones use FrozenBatchNorm2d for the same reason).
    """
    freeze = str(freeze)
    if freeze == "none":
        return ""
    head = classifier_prefix(model)
    if freeze == "backbone":
        if not head:
            raise CnnkitError(f"--freeze backbone: {type(model).__name__} has no linear "
                              f"classifier head to keep training; use --freeze N")
        prefixes = [""]  # every name...
    else:
        stages = model_stages(model)
        count = int(freeze)
        if count > len(stages):
            raise CnnkitError(f"--freeze {count}: {type(model).__name__} has only "
                              f"{len(stages)} stages")
        prefixes = [name for stage in stages[:count] for name in stage]

    def frozen(name: str) -> bool:  # ...but the head's, with --freeze backbone
        if prefixes == [""]:
            return name != head and not name.startswith(head + ".")
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    for name, p in model.named_parameters():
        if frozen(name):
            p.requires_grad_(False)
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen(name):
            m.register_forward_pre_hook(_keep_eval)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise CnnkitError(f"--freeze {freeze} leaves nothing to train in {type(model).__name__}")
    total = sum(p.numel() for p in model.parameters())
    return f"frozen: {freeze} ({trainable:,} of {total:,} parameters train)"


def _keep_eval(module: nn.Module, _inputs) -> None:
    module.training = False  # a frozen BatchNorm normalises with its running statistics


def load_backbone(model: nn.Module, path: str) -> str:
    """Start the backbone of a detector (`model.backbone.body`, or YOLO's `model.backbone`) or
    of a pose network (`model.features`) from a cnnkit classification checkpoint (a run folder or
    .pt file) of the same architecture, e.g. a ResNet-18 or a yolov8_cpu_cls trained on CIFAR-10:
    every tensor whose name and shape match is copied; the classifier head is left out. Returns
    a line saying how many tensors were taken."""
    ckpt = load_checkpoint(checkpoint_path(path, "best"), task="classify",
                           command="`cnnkit train --backbone-weights`")
    name = ckpt["spec"]["models"][ckpt["spec"]["infer"]]["name"]
    # A classifier keeps its feature layers under `backbone.` (YOLOv8-cls, as the detector
    # does), under `features.` (VGG, MobileNet: a pose trunk's or a torchvision-style body's
    # own names have no such prefix) or at the top of its state_dict (ResNet).
    saved = ckpt["models"][ckpt["spec"]["infer"]]
    state = {k.removeprefix("backbone.").removeprefix("features."): v for k, v in saved.items()}
    if hasattr(model, "backbone"):
        target = getattr(model.backbone, "body", model.backbone)
    elif hasattr(model, "features"):
        target = model.features
    else:
        raise CnnkitError(f"{path}: {type(model).__name__} has no backbone that a classifier's "
                          "weights can start; drop --backbone-weights, or train a detector or "
                          "OpenPose (e.g. openpose_resnet18)")
    body = target.state_dict()
    taken = {k: v for k, v in state.items() if k in body and body[k].shape == v.shape}
    if not taken:
        raise CnnkitError(f"{path}: no tensor matches the backbone of this model ({name} "
                          "weights; is it the same architecture?)")
    target.load_state_dict(taken, strict=False)
    return f"backbone: {len(taken)}/{len(body)} tensors from {path}"
