"""The samples file that `cnnkit sample --save` writes and `cnnkit generate-eval` reads.

A `torch.save` of either a uint8 (N, C, H, W) tensor of images (0..255, the format of the data
sets), or {"images": that tensor, "labels": int64 (N,)} with the class each image was generated
for (class-conditional models). Read back with `weights_only=True`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.utils import CnnkitError, atomic_path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → uint8 0..255 on the CPU, the format of data sets and evaluation."""
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_samples(path: str | Path, images: torch.Tensor,
                 labels: torch.Tensor | None = None) -> Path:
    """Write uint8 `images` (and the requested `labels`) atomically."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise CnnkitError(f"samples must be uint8 (N, C, H, W), got {images.dtype} "
                          f"{tuple(images.shape)}")
    with atomic_path(path) as tmp:
        torch.save(images if labels is None
                   else {"images": images, "labels": labels.cpu().long()}, tmp)
    return Path(path)


def read_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images uint8 (N, C, H, W), labels int64 (N,) or None) from a samples file."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"samples file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors all mean "not a samples file" to the user
        raise CnnkitError(f"cannot read samples {path}: {type(exc).__name__}") from None
    labels = None
    if isinstance(obj, dict):
        if "images" not in obj:
            raise CnnkitError(f"{path} holds a dict without 'images'; expected a uint8 tensor or "
                              "{'images': ..., 'labels': ...}")
        obj, labels = obj["images"], obj.get("labels")
    if not isinstance(obj, torch.Tensor) or obj.dtype != torch.uint8 or obj.dim() != 4:
        got = (f"{obj.dtype} {tuple(obj.shape)}" if isinstance(obj, torch.Tensor)
               else type(obj).__name__)
        raise CnnkitError(f"{path} must hold uint8 (N, C, H, W) images (0..255), got {got}")
    if labels is not None:
        labels = torch.as_tensor(labels).flatten().long()
        if len(labels) != len(obj):
            raise CnnkitError(f"{path}: {len(obj)} images but {len(labels)} labels")
    return obj, labels
