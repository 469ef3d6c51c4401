"""Device and precision, resolved in one place for every task.

`--device auto` is CUDA when a GPU is visible, else the CPU. `--precision auto` is measured-fast
bf16 where the hardware computes it natively (CPUs with AMX or AVX512-BF16; GPUs with bf16
support), fp16 on older GPUs (with a GradScaler in the run engine), and fp32 elsewhere.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from cnnkit.utils import CnnkitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast is faster than fp32."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # private helpers: absent on other builds means "don't know"
        return False


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """torch.device for `--device auto|cpu|cuda`; under torchrun each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise CnnkitError(f"unknown device '{name}'; choose auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise CnnkitError("--device cuda, but torch sees no CUDA device; use --device cpu (or "
                          "auto)")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(name if ":" in name else f"cuda:{local_rank}")
    torch.cuda.set_device(device)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' for `--precision` on `device`."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CnnkitError("--precision fp16 is for CUDA (it needs loss scaling and gains nothing "
                          "on a CPU); use bf16 or fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise CnnkitError(f"unknown precision '{precision}'; choose auto, fp32, bf16 or fp16")
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    """torch.autocast for bf16/fp16 on the device's type; fp32 is a no-op."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision])


def to_device(batch, device: torch.device):
    """A batch (tensor, or tuple/list/dict of them) on `device`; CPU batches pass untouched."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
