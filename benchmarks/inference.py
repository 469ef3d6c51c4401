"""CPU inference of cnnkit against onnxruntime on the same weights, in one run (issue 17).

Rows: ResNet-50 and MobileNetV3-Large at batch 1 and 16 (3×224×224), the YOLO detector at the
raccoon recipe's size (yolov8_cpu, 256×256, batch 1, the raw forward before NMS, which is outside
the ONNX graph and costs both sides the same) and the ISBI U-Net (unet_small, one grey 512×512
slice, the test image's size). Random weights: speed does not depend on them.

cnnkit's modes are eager fp32 (NCHW), channels-last, bf16 autocast and torch.compile (inductor,
weights frozen) of the two fastest eager modes; onnxruntime runs the file `torch.onnx` writes with
every graph optimisation and intra-op threads = the physical cores (torch gets the same number).
Every mode of a row is timed in alternating rounds — each round runs every mode once — so a
change in machine load hits all alike; the median pass counts. Target: cnnkit's fastest mode ≥
onnxruntime on every row.

Also the machine's matmul peak (torch.mm of 2048² matrices, fp32 and bf16, the better of
alternating passes), and the fraction of it ResNet-50 reaches (2 × its multiply-accumulates per
image × images/s).

usage: python benchmarks/inference.py [--rounds 20] [--rows resnet50:1,resnet50:16,...]
       [--no-compile] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from _timing import cpu_name, pass_times
from torch import nn

from cnnkit.engine.device import physical_cores
from cnnkit.inference.export import export_onnx
from cnnkit.inference.modes import EAGER_MODES, DenseDetections, prepare
from cnnkit.models import create_model
from cnnkit.models._summary import count_macs
from cnnkit.utils import CnnkitError

# name: (registry name, keywords, (C, H, W)); the detector wrapped to one dense output, with
# raccoon's one class (+ background)
MODELS = {
    "resnet50": ("resnet50", {}, (3, 224, 224)),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, (3, 224, 224)),
    "yolov8_cpu": ("yolov8_cpu", {"img_size": 256, "num_classes": 2}, (3, 256, 256)),
    "unet_small": ("unet_small", {"in_chans": 1, "num_classes": 2}, (1, 512, 512)),
}
DEFAULT_ROWS = ("resnet50:1,resnet50:16,mobilenet_v3_large:1,mobilenet_v3_large:16,"
                "yolov8_cpu:1,unet_small:1")


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    registry_name, kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = create_model(registry_name, **kwargs).eval()
    if getattr(model, "detector", False):
        model = DenseDetections(model).eval()
    return model, shape


def onnx_session(model: nn.Module, x: torch.Tensor, threads: int, folder: str):
    import onnxruntime as ort
    path = Path(folder) / "model.onnx"
    export_onnx(model, x[:1].repeat(2, 1, 1, 1), path, output_name="output")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_row(name: str, batch: int, threads: int, rounds: int, use_compile: bool) -> dict:
    """Median ms per pass of every mode of one row, what the run noticed, the model's MACs."""
    model, shape = build(name)
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    ms, notes = time_against_onnxruntime(model, x, threads, rounds, use_compile)
    return {"ms": ms, "notes": notes, "macs": count_macs(model, shape)}


def time_against_onnxruntime(model: nn.Module, x: torch.Tensor, threads: int, rounds: int,
                             use_compile: bool, warmup: int = 2) -> tuple[dict, list[str]]:
    """({mode: median ms per pass}, notes) of cnnkit's eager modes, compile of the two fastest,
    and onnxruntime on the exported model, all on the batch x, timed in alternating rounds."""
    steps = {m: (lambda r=prepare(model, m): r(x)) for m in EAGER_MODES}
    for step in steps.values():  # first calls pick kernels (bf16 the slowest): not timed
        pass_times(step, warmup)
    eager_ms = {m: statistics.median(pass_times(s, 3)) for m, s in steps.items()}
    notes = []
    # Two bases: three warm-up passes rank the eager modes unreliably (MobileNetV3 at batch 1 once
    # compiled channels-last although bf16 was faster in the timed rounds, eager and compiled).
    for base in sorted(eager_ms, key=eager_ms.get)[:2] if use_compile else ():
        try:
            compiled = prepare(model, "compile", example=x, compile_base=base)
            steps[compiled.mode] = lambda compiled=compiled: compiled(x)
            notes.append(f"{compiled.mode} compiled in {compiled.compile_seconds:.0f} s")
        except CnnkitError as exc:
            notes.append(f"compile({base}) skipped: {exc}")
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(model, x, threads, folder)
        feed = {session.get_inputs()[0].name: x.numpy()}
        with torch.no_grad():
            reference = model(x).float().numpy()
        difference = abs(session.run(None, feed)[0] - reference).max()
        notes.append(f"onnxruntime max |Δ| vs fp32 {difference:.1e}")
        steps["onnxruntime"] = lambda: session.run(None, feed)
        for step in steps.values():
            pass_times(step, warmup)
        times = {m: [] for m in steps}
        for _ in range(rounds):  # alternating: each round times every mode once
            for mode, step in steps.items():
                times[mode] += pass_times(step, 1)
    return {m: 1000 * statistics.median(t) for m, t in times.items()}, notes


def matmul_peak(threads: int, size: int = 2048, passes: int = 10) -> dict[str, float]:
    """GFLOP/s of torch.mm on size² matrices in fp32 and bf16, the best pass of each."""
    a32, b32 = torch.randn(size, size), torch.randn(size, size)
    operands = {"fp32": (a32, b32), "bf16": (a32.bfloat16(), b32.bfloat16())}
    best = {k: float("inf") for k in operands}
    for _ in range(passes):  # alternating, as everywhere here
        for kind, (a, b) in operands.items():
            best[kind] = min(best[kind], pass_times(lambda: torch.mm(a, b), 1)[0])
    return {kind: 2 * size**3 / seconds / 1e9 for kind, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="model:batch,... (models: "
                        f"{', '.join(MODELS)})")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both sides (default: the physical cores)")
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    import onnxruntime
    print(f"{cpu_name()} | {threads} threads for torch and onnxruntime (intra-op) | torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__} | median of "
          f"{args.rounds} alternating passes per mode")
    peak = matmul_peak(threads)
    print(f"matmul peak (2048², best pass): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 "
          f"{peak['bf16']:.0f} GFLOP/s")
    print("\n| model | batch | fastest cnnkit mode | cnnkit img/s | onnxruntime img/s | "
          "× onnxruntime | fp32 eager img/s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    notes, verdicts = [], []
    for row in args.rows.split(","):
        name, batch = row.split(":")
        result = compare_row(name, int(batch), threads, args.rounds, not args.no_compile)
        ms = result["ms"]
        best = min((m for m in ms if m != "onnxruntime"), key=ms.get)
        ips = {m: 1000 * int(batch) / v for m, v in ms.items()}
        ratio = ips[best] / ips["onnxruntime"]
        verdicts.append(ratio >= 1)
        print(f"| {name} | {batch} | {best} | {ips[best]:.1f} | {ips['onnxruntime']:.1f} | "
              f"{ratio:.2f} | {ips['fp32']:.1f} |", flush=True)
        notes.append(f"{name}:{batch}: " + "; ".join(
            [*result["notes"], *(f"{m} {v:.1f} ms" for m, v in ms.items())]))
        if name == "resnet50" and int(batch) > 1:
            flops = 2 * result["macs"] * ips[best] / 1e9
            kind = "bf16" if "bf16" in best else "fp32"
            notes.append(f"resnet50:{batch} in {best}: {flops:.0f} GFLOP/s = "
                         f"{flops / peak[kind]:.0%} of the {kind} matmul peak "
                         f"({2 * result['macs'] / 1e9:.2f} GFLOP per image)")
    print(f"\ntarget (cnnkit ≥ onnxruntime on every row): "
          f"{'met' if all(verdicts) else 'not met'} ({sum(verdicts)}/{len(verdicts)} rows)")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
