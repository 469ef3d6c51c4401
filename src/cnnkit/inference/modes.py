"""Fast CPU inference: the same model run four ways, timed, and checked against fp32 on real images.

Modes (each a wrapper module; `forward(x)` takes a float32 NCHW batch, returns float32 logits):
  fp32           eager, NCHW: the reference every other mode is compared with
  channels_last  eager fp32, NHWC: oneDNN's preferred convolution layout on CPU
  bf16           eager under torch.autocast("cpu", bfloat16), NHWC: AMX tiles where the CPU has them
  compile        torch.compile of the fastest eager mode, with inductor's `freezing` (weights become
                 constants: oneDNN prepacks them once and BatchNorm folds into the convolutions;
                 batch 1 in compiled bf16 here, ResNet-50 23 → 17 ms, MobileNetV3-Large 9 → 6 ms
                 a pass). Compilation happens in `prepare` and is timed apart.

`choose_mode` picks the fastest eager mode whose top-1 predictions agree with fp32's on ≥ 99.5% of
the given real images; `cnnkit eval` and `cnnkit predict` use it. Nothing is cached on disk.
"""
from __future__ import annotations

import copy
import io
import statistics
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data import load_dataset
from cnnkit.data.array_dataset import channel_stats
from cnnkit.data.imagefolder import IMAGE_EXTENSIONS, decode_image, split_files
from cnnkit.engine.device import autocast, native_bf16, set_threads
from cnnkit.inference.load import LoadedModel
from cnnkit.models._summary import count_macs
from cnnkit.utils import CnnkitError

EAGER_MODES = ("fp32", "channels_last", "bf16")
MODES = (*EAGER_MODES, "compile")
MIN_AGREEMENT = 0.995
# A mode must beat fp32 by this factor to be chosen: below it the gain is within timing noise.
MIN_SPEEDUP = 1.05


class InferenceModel(nn.Module):
    """`module` run in one inference mode; `compile_seconds` is set for the compiled mode."""

    def __init__(self, module: nn.Module, mode: str, *, channels_last: bool, bf16: bool,
                 static_batch: int | None = None, compile_seconds: float | None = None):
        super().__init__()
        self.module, self.mode = module, mode
        self.channels_last, self.bf16 = channels_last, bf16
        # A compiled graph is specialised to one batch size: _top1 pads the last batch up to it
        # instead of paying a recompilation.
        self.static_batch, self.compile_seconds = static_batch, compile_seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast("bf16" if self.bf16 else "fp32"):
            return self.module(x).float()


def prepare(model: nn.Module, mode: str, *, example: torch.Tensor | None = None,
            compile_base: str | None = None) -> InferenceModel:
    """`model` (left untouched, except that fp32 puts it in eval mode) ready to run in `mode`.

    "compile" needs `example`, a batch of the size it will run on (compiling happens here, on it);
    `compile_base` is the eager mode it compiles (default: bf16 where the CPU has native bf16,
    else channels_last). A compile failure raises CnnkitError naming the reason.
    """
    if mode not in MODES:
        raise CnnkitError(f"unknown inference mode '{mode}'; choose from {', '.join(MODES)}")
    if mode == "fp32":
        return InferenceModel(model.eval(), "fp32", channels_last=False, bf16=False)
    if mode != "compile":
        # A channels-last copy: converting the caller's model in place would silently make its
        # fp32 runs NHWC too (oneDNN follows the weights' layout).
        module = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        return InferenceModel(module, mode, channels_last=True, bf16=mode == "bf16")
    if example is None:
        raise ValueError("prepare(..., 'compile') needs an example batch to compile on")
    compile_base = compile_base or ("bf16" if native_bf16() else "channels_last")
    if compile_base not in EAGER_MODES:
        raise CnnkitError(f"compile_base must be an eager mode ({', '.join(EAGER_MODES)}), "
                          f"got '{compile_base}'")
    base = prepare(model, compile_base)
    start = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config  # noqa: PLC0415  (imports inductor)

        compiled = torch.compile(base.module, dynamic=False)
        runner = InferenceModel(compiled, f"compile({base.mode})", channels_last=base.channels_last,
                                bf16=base.bf16, static_batch=len(example))
        # Compiles now, so that timing never includes it. Freezing is patched into inductor's
        # config around this first call: torch.compile(options={"freezing": True}) is accepted
        # but never reaches the freezing passes (torch 2.13: no conv was prepacked, measured).
        with inductor_config.patch(freezing=True):
            runner(example)
    except Exception as exc:  # inductor needs a C++ compiler and more; any failure means "skip"
        text = str(exc).strip().splitlines()
        raise CnnkitError(f"torch.compile failed: {type(exc).__name__}: "
                          f"{text[0] if text else ''}"[:200]) from None
    runner.compile_seconds = time.perf_counter() - start
    return runner


# --- timing ---

def time_calls(runner: nn.Module, batch: torch.Tensor, iters: int) -> list[float]:
    """Seconds of each of `iters` forward passes (CPU ops are synchronous: wall time is exact)."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        runner(batch)
        times.append(time.perf_counter() - start)
    return times


def measure(model: nn.Module, mode: str, batch: torch.Tensor, warmup: int = 2,
            iters: int = 10) -> float:
    """Images/s of `model` in `mode` on `batch`: the median of `iters` timed passes after
    `warmup` untimed ones (oneDNN creates its primitives on the first calls)."""
    runner = prepare(model, mode, example=batch)
    time_calls(runner, batch, warmup)
    return len(batch) / statistics.median(time_calls(runner, batch, iters))


@dataclass
class ModeResult:
    mode: str  # "compile(bf16)" names the eager mode it compiled
    images_per_s: float | None  # None: skipped
    runner: InferenceModel | None = None
    compile_seconds: float | None = None
    skipped: str = ""


def compare_modes(model: nn.Module, batch: torch.Tensor, modes: Iterable[str] = MODES, *,
                  rounds: int = 3, iters: int = 3, warmup: int = 2) -> list[ModeResult]:
    """Images/s of every mode in one run: `rounds` rounds, each timing `iters` passes of every mode
    in turn (so a change in machine load hits all modes alike); the median over all passes.

    "compile" compiles whichever eager mode was fastest during the warm-up (all three eager
    modes are warmed up for this choice, even those not asked for).
    """
    modes = list(modes)
    runners = {m: prepare(model, m) for m in EAGER_MODES}
    warm = {}
    for mode, runner in runners.items():
        time_calls(runner, batch, max(1, warmup - 1))
        warm[mode] = statistics.median(time_calls(runner, batch, 1))
    results = {m: ModeResult(m, None, runners[m]) for m in modes if m != "compile"}
    if "compile" in modes:
        base = min(warm, key=warm.get)
        try:
            runner = prepare(model, "compile", example=batch, compile_base=base)
            time_calls(runner, batch, warmup)
            results["compile"] = ModeResult(runner.mode, None, runner, runner.compile_seconds)
        except CnnkitError as exc:
            results["compile"] = ModeResult(f"compile({base})", None, skipped=str(exc))
    times = {m: [] for m in results}
    for _ in range(rounds):
        for mode, result in results.items():
            if result.runner is not None:
                times[mode] += time_calls(result.runner, batch, iters)
    for mode, result in results.items():
        if times[mode]:
            result.images_per_s = len(batch) / statistics.median(times[mode])
    return [results[m] for m in modes]


# --- agreement with fp32 ---

def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    """Float batches from a (N, C, H, W) tensor or from a loader of (x, y) batches."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
    else:
        for item in images:
            yield item[0] if isinstance(item, (tuple, list)) else item


def _top1(runner: InferenceModel, images, batch_size: int = 64) -> torch.Tensor:
    """int64 (N,) predicted classes of `runner` over every image."""
    batch_size = runner.static_batch or batch_size
    preds = []
    for x in _batches(images, batch_size):
        n = len(x)
        if runner.static_batch and n < runner.static_batch:  # pad: a new shape would recompile
            x = torch.cat([x, x.new_zeros(runner.static_batch - n, *x.shape[1:])])
        preds.append(runner(x)[:n].argmax(1))
    return torch.cat(preds)


def agreement(model: nn.Module, mode: str | InferenceModel, images, *,
              batch_size: int = 64) -> float:
    """Fraction of `images` (normalised float (N, C, H, W), or a loader of (x, y)) on which
    `mode` (a mode name or a prepared InferenceModel) predicts the same class as eager fp32."""
    if isinstance(mode, str):
        example = next(iter(_batches(images, batch_size)))
        mode = prepare(model, mode, example=example)
    reference = _top1(prepare(model, "fp32"), images, mode.static_batch or batch_size)
    return (_top1(mode, images, batch_size) == reference).double().mean().item()


def choose_mode(model: nn.Module, images, *, min_agreement: float = MIN_AGREEMENT,
                batch_size: int = 64) -> tuple[str, float]:
    """(mode, its top-1 agreement with fp32): the fastest eager mode, timed on the first batch
    of `images`, that agrees with fp32 on ≥ `min_agreement` of them; ("fp32", 1.0) if none.

    Compile is left out: its one-off compilation costs more than a single eval or predict saves.
    Slower candidates are checked only when faster ones fail, so the usual cost is one fp32
    pass and one pass of the chosen mode over `images`.
    """
    first = next(iter(_batches(images, batch_size)))
    runners = {m: prepare(model, m) for m in EAGER_MODES}
    seconds = {}
    for mode, runner in runners.items():
        time_calls(runner, first, 1)
        seconds[mode] = statistics.median(time_calls(runner, first, 3))
    candidates = sorted((m for m in EAGER_MODES
                         if seconds[m] * MIN_SPEEDUP < seconds["fp32"]), key=seconds.get)
    reference = None
    for mode in candidates:
        if reference is None:
            reference = _top1(runners["fp32"], images, batch_size)
        agree = (_top1(runners[mode], images, batch_size) == reference).double().mean().item()
        if agree >= min_agreement:
            return mode, agree
    return "fp32", 1.0


# --- real images to check agreement on ---

def checkpoint_test_images(loaded: LoadedModel, limit: int) -> tuple[torch.Tensor, str] | None:
    """Up to `limit` test images of the run's data set, evenly spaced over the split and
    normalised as the model was trained: (float (N, C, H, W), a description), or None when the
    data set cannot be read without a download."""
    config = loaded.config
    name = config.get("dataset")
    if not name or limit < 1:
        return None
    channels, size, _ = loaded.image_shape
    data_dir = Path(config.get("data_dir") or "~/.cache/cnnkit").expanduser()
    try:
        if name == "imagefolder":  # decode only the chosen files, not a whole (large) folder
            files = split_files(data_dir, "test")[0]
            pick = _evenly_spaced(len(files), limit)
            images = torch.stack([decode_image(files[i], channels, size) for i in pick.tolist()])
        else:
            data = load_dataset(name, "test", data_dir=data_dir, download=False,
                                image_size=size, channels=channels, quiet=True)
            images = data.images[_evenly_spaced(len(data), limit)]
    except (CnnkitError, OSError):
        return None
    return loaded.normalise(images), f"{len(images)} {name} test images"


def detector_test_images(loaded: LoadedModel, limit: int, size: int
                         ) -> tuple[torch.Tensor, str] | None:
    """Up to `limit` test images of a detector's data set, evenly spaced, letterboxed to
    size × size as YOLOv8 sees them: (float (N, 3, size, size) in 0..1, a description), or None
    when the data set cannot be read without a download."""
    from cnnkit.models.detection.yolo import letterbox  # noqa: PLC0415
    name = loaded.config.get("dataset")
    if not name or limit < 1:
        return None
    data_dir = Path(loaded.config.get("data_dir") or "~/.cache/cnnkit").expanduser()
    try:
        data = load_dataset(name, "test", data_dir=data_dir, download=False, quiet=True)
    except (CnnkitError, OSError):
        return None
    pick = _evenly_spaced(len(data.images), limit).tolist()
    batch = letterbox([data.images[i].float() / 255 for i in pick], size)[0]
    return batch, f"{len(pick)} {name} test images letterboxed to {size}×{size}"


class DenseDetections(nn.Module):
    """A detector's raw forward as one tensor (N, A, 4 + K) — boxes, then class scores — so the
    inference modes above (which call `module(x).float()`) time it like a classifier."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.detector.forward_raw(x), -1)


def photo_images(count: int, channels: int, height: int, width: int,
                 source: Path) -> tuple[torch.Tensor, str] | None:
    """`count` real photos (a zip or a folder of images, e.g. CIFAR-10's test set), evenly
    spaced over its sorted file names, decoded by cnnkit.data and resized to height × width,
    normalised by their own channel statistics. None when `source` does not exist."""
    source = Path(source)
    if not source.exists() or count < 1:
        return None
    if source.is_dir():
        names = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        files = [names[i] for i in _evenly_spaced(len(names), count).tolist()]
        images = [decode_image(f, channels, height if height == width else None) for f in files]
    else:
        with zipfile.ZipFile(source) as archive:
            names = sorted(n for n in archive.namelist()
                           if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
            files = [names[i] for i in _evenly_spaced(len(names), count).tolist()]
            images = [decode_image(io.BytesIO(archive.read(f)), channels,
                                   height if height == width else None) for f in files]
    if not images:
        raise CnnkitError(f"no images in {source}; give a zip or folder of PNG/JPEG files")
    batch = torch.stack(images)  # (N, C, h, w) uint8
    if batch.shape[-2:] != (height, width):  # non-square input sizes: one bilinear resize
        batch = F.interpolate(batch.float(), size=(height, width), mode="bilinear",
                              antialias=True).round().clamp(0, 255).to(torch.uint8)
    mean, std = channel_stats(batch)
    what = f"photos from {source}"
    return _normalise(batch, mean, std), f"{len(batch)} {what} resized to {height}×{width}"


def _evenly_spaced(total: int, count: int) -> torch.Tensor:
    return torch.linspace(0, total - 1, min(count, total)).round().long().unique()


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, C, H, W) → float (x/255 − mean)/std, per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


# --- report ---

def format_table(results: list[ModeResult], agreements: dict[str, float]) -> str:
    """mode | images/s | × fp32 | top-1 agreement with fp32 | compile s (skipped modes say why)."""
    fp32 = next((r.images_per_s for r in results if r.mode == "fp32"), None)
    lines = [f"{'mode':<22} {'images/s':>9} {'× fp32':>7} {'top-1 agree':>11} {'compile s':>9}"]
    for r in results:
        if r.images_per_s is None:
            lines.append(f"{r.mode:<22} skipped: {r.skipped}")
            continue
        ratio = f"{r.images_per_s / fp32:.2f}" if fp32 else "-"
        agree = f"{agreements[r.mode]:.4f}" if r.mode in agreements else "-"
        comp = f"{r.compile_seconds:.1f}" if r.compile_seconds is not None else "-"
        lines.append(f"{r.mode:<22} {r.images_per_s:9.1f} {ratio:>7} {agree:>11} {comp:>9}")
    return "\n".join(lines)


def model_for_precision(model: nn.Module, precision: str, images, what: str, *,
                        batch_size: int | None = None,
                        input_size: tuple[int, ...] | None = None) -> tuple[InferenceModel, str]:
    """The runner `cnnkit eval` / `predict` use for `--precision auto|fp32|bf16`, and one line
    saying which mode runs (for auto: chosen by choose_mode on `images`, described by `what`)
    and on how many threads: `engine.device.choose_threads` for calls of `batch_size` images of
    `input_size` (both default to `images`' own when it is a tensor)."""
    if isinstance(images, torch.Tensor):
        batch_size = batch_size or len(images)
        input_size = input_size or tuple(images.shape[1:])
    work = None
    if batch_size and input_size:
        try:
            work = count_macs(model, tuple(input_size)) * batch_size
        except Exception:  # noqa: BLE001 — a model the counter cannot trace: no work estimate
            work = None
    threads = set_threads(training=False, work_macs=work)  # before timing the modes with them
    if precision == "auto":
        mode, agree = choose_mode(model, images)
        return prepare(model, mode), (f"inference mode: {mode} (auto: the fastest with top-1 "
                                      f"agreement ≥ {MIN_AGREEMENT} with fp32; agreement "
                                      f"{agree:.4f} on {what}) | {threads}")
    mode = {"fp32": "fp32", "bf16": "bf16"}.get(precision)
    if mode is None:
        raise CnnkitError(f"unknown precision '{precision}'; choose from auto, fp32, bf16")
    return prepare(model, mode), f"inference mode: {mode} (--precision {precision}) | {threads}"
