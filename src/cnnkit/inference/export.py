"""Export a model to ONNX or TorchScript, then prove the file computes what the model computes.

ONNX goes through `torch.onnx.export(dynamo=True)` (torch.export → ONNX, the exporter PyTorch
recommends since 2.9) with a symbolic batch dimension; the older TorchScript-based exporter is a
fallback, used with a warning only when the new one fails. TorchScript is `torch.jit.trace`.
Either file is written to a temporary path, run (onnxruntime / torch.jit.load) on real images at two
batch sizes, compared with PyTorch, and only then renamed into place: a file that disagrees by
more than `TOLERANCE` never appears.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.utils import CnnkitError, atomic_path

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4  # float32 kernels of two runtimes differ by ~1e-6; 1e-4 flags a wrong graph
EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 1, so never export with one
log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    path: Path
    format: str
    exporter: str  # "torch.onnx dynamo", "torch.onnx legacy (TorchScript-based)", "torch.jit.trace"
    max_abs_diff: float
    batch_sizes: tuple[int, ...]  # the batch sizes the exported file was run at


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's chatter (deprecation notices, 'torchvision is not installed', the
    ONNX optimiser's pass-by-pass log lines, which the CLI's INFO logging would print)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export",
             "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *,
                dynamo: bool = True) -> str:
    """Write `model` (eval mode) as ONNX with input "images" (batch, C, H, W) and output "logits"
    (batch, classes), the batch dimension symbolic. Returns the exporter that succeeded."""
    model.eval()
    names = dict(input_names=["images"], output_names=["logits"])
    if dynamo:
        try:
            with _quiet_exporter(), torch.no_grad():
                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(model, (example,), None, dynamo=True, verbose=False,
                                            dynamic_shapes=({0: batch},), **names)
                # One self-contained file: external data would be named after the temp path.
                program.save(str(path), external_data=False)
            return "torch.onnx dynamo"
        except Exception as exc:  # noqa: BLE001 — any failure means: try the older exporter
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            log.warning("the dynamo ONNX exporter failed (%s: %s); falling back to the "
                        "TorchScript-based exporter", type(exc).__name__, first)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **names)
    return "torch.onnx legacy (TorchScript-based)"


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> str:
    """Trace `model` (eval mode) on `example` and save it for `torch.jit.load`."""
    model.eval()
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def run_exported(path: str | Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """float32 outputs of the exported file on `images`, through its own runtime."""
    if fmt == "onnx":
        import onnxruntime  # noqa: PLC0415 — a heavy import only `export` needs

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(images).float()


def export_model(model: nn.Module, path: str | Path, fmt: str, check_images: torch.Tensor,
                 *, tolerance: float = TOLERANCE) -> ExportReport:
    """Export `model` to `path` in `fmt` and verify it on `check_images` (float (N, C, H, W),
    normalised as the model expects), run whole and as a batch of one; CnnkitError when the
    largest |exported − PyTorch| exceeds `tolerance` (and `path` is then left untouched)."""
    if fmt not in FORMATS:
        raise CnnkitError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    model.eval()
    example = check_images[:EXAMPLE_BATCH]
    if len(example) < EXAMPLE_BATCH:
        example = example.repeat(EXAMPLE_BATCH, 1, 1, 1)[:EXAMPLE_BATCH]
    # Checked at the full size and at 1: both differ from the export example's size, so a batch
    # dimension frozen into the graph fails here rather than in the user's program.
    batches = [check_images, check_images[:1]]
    with atomic_path(path) as tmp:
        try:
            exporter = (export_onnx(model, example, tmp) if fmt == "onnx"
                        else export_torchscript(model, example, tmp))
        except Exception as exc:  # noqa: BLE001 — an unexportable model is a one-line error
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CnnkitError(f"cannot export {type(model).__name__} to {fmt}: "
                              f"{type(exc).__name__}: {first}") from None
        diff = 0.0
        with torch.no_grad():
            for x in batches:
                try:
                    got = run_exported(tmp, fmt, x)
                except Exception as exc:  # noqa: BLE001 — e.g. a shape the graph cannot take
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    raise CnnkitError(f"the exported {fmt} model fails on a batch of {len(x)}: "
                                      f"{first}") from None
                diff = max(diff, (got - model(x).float()).abs().max().item())
        if not np.isfinite(diff) or diff > tolerance:
            raise CnnkitError(f"the exported {fmt} model differs from PyTorch by {diff:.3g} "
                              f"(> {tolerance:g}); nothing written to {path}")
    return ExportReport(Path(path), fmt, exporter, diff, tuple(len(x) for x in batches))
