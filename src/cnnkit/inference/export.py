"""Export a model to ONNX or TorchScript, then prove the file computes what the model computes.

ONNX goes through `torch.onnx.export(dynamo=True)` (torch.export → ONNX, the exporter PyTorch
recommends since 2.9) with a symbolic batch dimension; the older TorchScript-based exporter is a
fallback, used with a warning only when the new one fails. TorchScript is `torch.jit.trace`.
Either file is written to a temporary path, run (onnxruntime / torch.jit.load) on real images at two
batch sizes, compared with PyTorch, and only then renamed into place: a file that disagrees by
more than `TOLERANCE` never appears.

The file carries what a program needs to use it without cnnkit (`read_metadata` reads it back):
ONNX `metadata_props` (string keys and values; lists as JSON), or a `cnnkit.json` extra file in
the TorchScript archive — the architecture, class names, input size, mean/std, what the input
is and what the output is ('logits', or 'log_probs' for LeNet). `with_preprocessing` bakes the
normalisation into the graph: the file then takes uint8 pixels, as decoded from an image file.

Detectors with a raw forward (YOLOv8's `forward_raw`) export that dense part only: a letterboxed
float batch (N, 3, S, S) in 0..1 → "boxes" (N, A, 4) xyxy in input pixels and "scores" (N, A, K).
NMS stays outside the graph, as ultralytics' and torchvision's ONNX exports leave it: its output
size depends on the data, and every deployment runtime has its own. `export_detector` checks both
the raw outputs and the detections after the model's own NMS (cnnkit's `batched_nms`) on each.
"""
from __future__ import annotations

import contextlib
import json
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
TORCHSCRIPT_METADATA = "cnnkit.json"  # the extra file in a TorchScript archive holding it
log = logging.getLogger(__name__)


class WithPreprocessing(nn.Module):
    """uint8 pixels (N, C, H, W) → float (x/255 − mean)/std → `model`: the loader's normalisation
    inside the exported graph, so that a deployment feeds decoded images as they are."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.float() / 255 - self.mean) / self.std)


def export_metadata(*, name: str, task: str, classes, image_shape, mean, std, output: str,
                    with_preprocessing: bool, version: str = "") -> dict[str, str]:
    """The string → string metadata written into an exported file."""
    c, h, w = image_shape
    shown = ", ".join(f"{v:g}" for v in mean), ", ".join(f"{v:g}" for v in std)
    return {
        "cnnkit_version": version, "model": name, "task": task,
        "classes": json.dumps(list(classes)), "input_size": json.dumps([c, h, w]),
        "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
        "preprocessing": "in_graph" if with_preprocessing else "none",
        "input": (f"uint8 pixels (N, {c}, {h}, {w}), 0..255; the graph normalises them"
                  if with_preprocessing else
                  f"float32 (N, {c}, {h}, {w}): (pixels/255 − mean)/std per channel, mean "
                  f"({shown[0]}), std ({shown[1]})"),
        "output": output,
        "output_meaning": {"log_probs": "log-probabilities: exp gives class probabilities",
                           "logits": "logits: softmax gives class probabilities"}
        .get(output, "model-specific output"),
    }


def read_metadata(path: str | Path) -> dict:
    """The metadata of a file `export_model` wrote, JSON values decoded (lists, numbers)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx  # noqa: PLC0415

        raw = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
               .metadata_props}
    else:
        files = {TORCHSCRIPT_METADATA: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        raw = json.loads(files[TORCHSCRIPT_METADATA] or "{}")
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value) if key in ("classes", "input_size", "mean", "std") \
                else value
        except json.JSONDecodeError:
            out[key] = value
    return out


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
                dynamo: bool = True, input_name: str = "images",
                output_name: str | tuple[str, ...] = "logits") -> str:
    """Write `model` (eval mode) as ONNX with input "images" (batch, C, H, W) and output "logits"
    (batch, classes) — or one output per name when `output_name` is a tuple (a model returning
    a tuple) — the batch dimension symbolic. Returns the exporter that succeeded."""
    model.eval()
    outputs = [output_name] if isinstance(output_name, str) else list(output_name)
    names = dict(input_names=[input_name], output_names=outputs)
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
                          dynamic_axes={n: {0: "batch"} for n in [input_name, *outputs]},
                          **names)
    return "torch.onnx legacy (TorchScript-based)"


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path,
                       metadata: dict[str, str] | None = None) -> str:
    """Trace `model` (eval mode) on `example` and save it for `torch.jit.load`, with `metadata`
    as the archive's extra file cnnkit.json."""
    model.eval()
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path),
                       _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata or {})})
    return "torch.jit.trace"


def run_exported(path: str | Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """float32 outputs of the exported file on `images`, through its own runtime."""
    return run_exported_all(path, fmt, images)[0]


def run_exported_all(path: str | Path, fmt: str, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every output of the exported file on `images` (float32), in the graph's order."""
    if fmt == "onnx":
        import onnxruntime  # noqa: PLC0415 — a heavy import only `export` needs

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return tuple(torch.from_numpy(o) for o in session.run(None, {name: images.numpy()}))
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = loaded(images)
    return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else (out.float(),)


def export_model(model: nn.Module, path: str | Path, fmt: str, check_images: torch.Tensor,
                 *, tolerance: float = TOLERANCE, metadata: dict[str, str] | None = None,
                 output_name: str = "logits") -> ExportReport:
    """Export `model` to `path` in `fmt` and verify it on `check_images` (what the graph takes:
    float (N, C, H, W) normalised as the model expects, or uint8 pixels for a
    `WithPreprocessing` model), run whole and as a batch of one; CnnkitError when the largest
    |exported − PyTorch| exceeds `tolerance` (and `path` is then left untouched). `metadata`:
    string pairs stored in the file (see `export_metadata`); `output_name` names the ONNX output
    ("log_probs" for LeNet)."""
    if fmt not in FORMATS:
        raise CnnkitError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    model.eval()
    input_name = "pixels" if check_images.dtype == torch.uint8 else "images"
    example = check_images[:EXAMPLE_BATCH]
    if len(example) < EXAMPLE_BATCH:
        example = example.repeat(EXAMPLE_BATCH, 1, 1, 1)[:EXAMPLE_BATCH]
    # Checked at the full size and at 1: both differ from the export example's size, so a batch
    # dimension frozen into the graph fails here rather than in the user's program.
    batches = [check_images, check_images[:1]]
    with atomic_path(path) as tmp:
        exporter = _write(model, example, tmp, fmt, metadata, input_name, output_name)
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


def _write(model: nn.Module, example: torch.Tensor, tmp: Path, fmt: str, metadata: dict | None,
           input_name: str, output_name, *, what: str | None = None) -> str:
    """Export to `tmp` in `fmt` with the metadata; the exporter's name. Any failure of the
    exporter becomes one line naming the model (`what`) and the first line of the cause."""
    try:
        if fmt == "onnx":
            exporter = export_onnx(model, example, tmp, input_name=input_name,
                                   output_name=output_name)
            _add_onnx_metadata(tmp, metadata or {})
            return exporter
        return export_torchscript(model, example, tmp, metadata)
    except Exception as exc:  # noqa: BLE001 — an unexportable model is a one-line error
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CnnkitError(f"cannot export {what or type(model).__name__} to {fmt}: "
                          f"{type(exc).__name__}: {first}") from None


def _add_onnx_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Write `metadata` into the ONNX file's metadata_props (what onnxruntime's
    `session.get_modelmeta().custom_metadata_map` and `onnx.load(...).metadata_props` show)."""
    import onnx  # noqa: PLC0415

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in metadata.items()})
    onnx.save(proto, str(path))


# --- detectors: the dense raw outputs, NMS outside the graph ---

DETECTOR_OUTPUTS = ("boxes", "scores")


class RawDetections(nn.Module):
    """A detector's `forward_raw` as a module: letterboxed float (N, 3, S, S) in 0..1 → boxes
    (N, A, 4) xyxy in input pixels and class scores (N, A, K), before NMS."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.forward_raw(x)


def detector_metadata(*, name: str, classes, img_size: int, score_thresh: float,
                      nms_thresh: float, with_preprocessing: bool,
                      version: str = "") -> dict[str, str]:
    """The metadata of an exported detector: the classifier's keys (mean 0, std 1: the input is
    x/255) plus what a program needs to finish the job — the NMS it must run itself."""
    meta = export_metadata(name=name, task="detect", classes=classes,
                           image_shape=(3, img_size, img_size), mean=(0.0,) * 3, std=(1.0,) * 3,
                           output="boxes, scores", with_preprocessing=with_preprocessing,
                           version=version)
    meta["input"] = (f"{'uint8 pixels 0..255' if with_preprocessing else 'float32 pixels/255'}"
                     f" (N, 3, {img_size}, {img_size}): each image letterboxed (long side "
                     f"resized to {img_size}, the rest padded with grey 114, centred)")
    meta["output_meaning"] = ("boxes (N, A, 4) xyxy in the input's pixels; scores (N, A, K) "
                              "class probabilities (sigmoid), class k = classes[k]; no NMS in "
                              "the graph: keep score > score_thresh, then per-class NMS at "
                              "nms_thresh, then undo the letterbox")
    meta["score_thresh"], meta["nms_thresh"] = f"{score_thresh:g}", f"{nms_thresh:g}"
    return meta


@dataclass
class DetectorExportReport(ExportReport):
    max_box_diff: float = 0.0  # pixels, raw boxes
    max_score_diff: float = 0.0  # raw scores
    detections: int = 0  # detections after NMS (PyTorch's), over every check image
    max_detection_diff: float = 0.0  # largest |box| (px) or |score| gap between matched ones


def _nms(detector: nn.Module, boxes: torch.Tensor, scores: torch.Tensor) -> list[dict]:
    """The detector's own post-processing (score threshold, per-class `batched_nms`) on raw
    outputs, in letterbox pixels (scale 1, no padding to undo)."""
    n, s = len(boxes), detector.img_size
    return detector._detections(boxes, scores, torch.ones(n, 2), torch.zeros(n, 2), [(s, s)] * n)


def _compare_detections(ours: list[dict], theirs: list[dict], box_tol: float,
                        score_tol: float) -> tuple[int, float, str]:
    """(detections, largest box (px) or score gap between matched ones, the first disagreement
    or ''). Matched as sets — each of ours to an unused one of theirs with the same label and
    the closest box — since detections whose scores tie to float rounding (an untrained model
    has many) may come out of NMS in another order."""
    total, gap = 0, 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if len(a["boxes"]) != len(b["boxes"]):
            return total, gap, (f"image {i}: {len(b['boxes'])} detections after NMS, PyTorch "
                                f"{len(a['boxes'])}")
        if not len(a["boxes"]):
            continue
        # (M, M) largest coordinate gap, infinite across labels
        dist = (a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1)
        dist[a["labels"][:, None] != b["labels"][None]] = float("inf")
        used = torch.zeros(len(b["boxes"]), dtype=torch.bool)
        for j in range(len(a["boxes"])):
            row = dist[j].masked_fill(used, float("inf"))
            k = int(row.argmin())
            score_gap = abs(a["scores"][j].item() - b["scores"][k].item())
            if row[k] > box_tol or score_gap > score_tol:
                return total, gap, (f"image {i}: PyTorch's detection {j + 1} (label "
                                    f"{int(a['labels'][j])}) has no counterpart")
            used[k] = True
            gap = max(gap, row[k].item(), score_gap)
        total += len(a["boxes"])
    return total, gap, ""


def export_detector(detector: nn.Module, path: str | Path, fmt: str, check_images: torch.Tensor,
                    *, tolerance: float = TOLERANCE, metadata: dict[str, str] | None = None,
                    with_preprocessing: bool = False) -> DetectorExportReport:
    """Export `detector.forward_raw` to `path` and verify it on `check_images` (letterboxed
    float (N, 3, S, S) in 0..1), whole and as a batch of one: the raw boxes (compared as
    fractions of S) and scores within `tolerance`, and the same detections after the detector's
    NMS run on either's outputs; else a CnnkitError and nothing written. `with_preprocessing`:
    the file takes uint8 pixels instead (x/255 inside the graph)."""
    if not hasattr(detector, "forward_raw"):
        raise CnnkitError(f"{type(detector).__name__} has no raw forward (dense boxes and scores "
                          f"before NMS) to export; YOLOv8 models have one")
    if fmt not in FORMATS:
        raise CnnkitError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    detector.eval()
    graph = RawDetections(detector).eval()
    feed = check_images
    if with_preprocessing:  # pixels/255: mean 0, std 1 (the detector normalises nothing else)
        graph = WithPreprocessing(graph, (0.0,) * 3, (1.0,) * 3).eval()
        feed = (check_images * 255).round().clamp(0, 255).to(torch.uint8)
        check_images = feed.float() / 255  # what the file sees, for PyTorch too
    example = feed[:EXAMPLE_BATCH]
    if len(example) < EXAMPLE_BATCH:
        example = example.repeat(EXAMPLE_BATCH, 1, 1, 1)[:EXAMPLE_BATCH]
    size = check_images.shape[-1]
    with atomic_path(path) as tmp:
        exporter = _write(graph, example, tmp, fmt, metadata,
                          "pixels" if with_preprocessing else "images", DETECTOR_OUTPUTS,
                          what=type(detector).__name__)
        box_diff = score_diff = det_gap = 0.0
        detections = 0
        for feed_x, x in ((feed, check_images), (feed[:1], check_images[:1])):
            try:
                boxes, scores = run_exported_all(tmp, fmt, feed_x)
            except Exception as exc:  # noqa: BLE001 — e.g. a shape the graph cannot take
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise CnnkitError(f"the exported {fmt} detector fails on a batch of "
                                  f"{len(x)}: {first}") from None
            with torch.no_grad():
                ref_boxes, ref_scores = detector.forward_raw(x)
            box_diff = max(box_diff, (boxes - ref_boxes).abs().max().item())
            score_diff = max(score_diff, (scores - ref_scores).abs().max().item())
            count, gap, problem = _compare_detections(_nms(detector, ref_boxes, ref_scores),
                                                      _nms(detector, boxes, scores),
                                                      tolerance * size, tolerance)
            if problem:
                raise CnnkitError(f"the exported {fmt} detector's detections differ from "
                                  f"PyTorch's: {problem}; nothing written to {path}")
            det_gap = max(det_gap, gap)
            detections += count if len(x) == len(check_images) else 0
        worst = max(box_diff / size, score_diff)
        if not np.isfinite(worst) or worst > tolerance:
            raise CnnkitError(f"the exported {fmt} detector differs from PyTorch by "
                              f"{box_diff:.3g} px in its boxes and {score_diff:.3g} in its "
                              f"scores (> {tolerance:g} of the {size}-px input / of a score); "
                              f"nothing written to {path}")
    return DetectorExportReport(Path(path), fmt, exporter, worst, (len(feed), 1),
                                max_box_diff=box_diff, max_score_diff=score_diff,
                                detections=detections, max_detection_diff=det_gap)
