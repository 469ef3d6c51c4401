"""YOLOv8 inference on CPU: cnnkit's modes against the same weights in onnxruntime (issue 13).

yolov8n (80 classes, random weights: speed does not depend on them), 320×320, batch 1, the raw
forward (boxes and scores before NMS, which is outside the ONNX graph and costs both sides the
same). Timed in alternating rounds — every mode one pass in turn — so a change in machine load
hits all alike; the median pass counts. Modes: cnnkit eager fp32 (NCHW), channels-last, bf16
autocast, torch.compile (inductor, weights frozen) of the fastest eager mode, and the ONNX file
`cnnkit export` would write, run by onnxruntime with every graph optimisation and intra-op threads
= the machine's physical cores (torch gets the same number). Target: cnnkit's fastest mode ≥
onnxruntime.

usage: python benchmarks/yolo_inference.py [--model yolov8n] [--size 320] [--rounds 30]
       [--no-compile] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from _timing import cpu_name, pass_times

from cnnkit.engine.device import physical_cores
from cnnkit.inference.export import RawDetections, export_onnx
from cnnkit.inference.modes import EAGER_MODES, DenseDetections, prepare
from cnnkit.models import create_model
from cnnkit.utils import CnnkitError


def onnx_runner(model: torch.nn.Module, x: torch.Tensor, threads: int, folder: str):
    import onnxruntime as ort
    path = Path(folder) / "yolo.onnx"
    export_onnx(RawDetections(model), x.repeat(2, 1, 1, 1), path, output_name=("boxes", "scores"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return (lambda: session.run(None, feed)), session, feed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both sides (default: the physical cores)")
    args = parser.parse_args()

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.size).eval()
    dense = DenseDetections(model).eval()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"{args.model} raw forward, random weights, batch 1 × 3×{args.size}×{args.size} | "
          f"{cpu_name()} | {threads} threads for torch and onnxruntime (intra-op) | "
          f"torch {torch.__version__}")

    runners = {m: prepare(dense, m) for m in EAGER_MODES}
    steps = {m: (lambda r=r: r(x)) for m, r in runners.items()}
    for step in steps.values():  # first calls pick kernels (bf16 the slowest): not timed
        pass_times(step, 2)
    eager_ms = {m: statistics.median(pass_times(s, 3)) for m, s in steps.items()}
    notes = []
    if not args.no_compile:
        base = min(eager_ms, key=eager_ms.get)
        try:
            compiled = prepare(dense, "compile", example=x, compile_base=base)
            steps[compiled.mode] = lambda: compiled(x)
            notes.append(f"{compiled.mode}: compiled in {compiled.compile_seconds:.0f} s")
        except CnnkitError as exc:
            notes.append(f"compile({base}) skipped: {exc}")
    with tempfile.TemporaryDirectory() as folder:
        import onnxruntime
        run_onnx, session, feed = onnx_runner(model, x, threads, folder)
        boxes, scores = session.run(None, feed)
        with torch.no_grad():
            ref_boxes, ref_scores = model.forward_raw(x)
        notes.append(f"onnxruntime {onnxruntime.__version__}: max |Δ| vs fp32 "
                     f"{abs(boxes - ref_boxes.numpy()).max():.1e} px, "
                     f"{abs(scores - ref_scores.numpy()).max():.1e} score")
        steps["onnxruntime"] = run_onnx
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times = {m: [] for m in steps}
        for _ in range(args.rounds):  # alternating: each round times every mode once
            for mode, step in steps.items():
                times[mode] += pass_times(step, 1)
    ms = {m: 1000 * statistics.median(t) for m, t in times.items()}
    ort_ips = 1000 / ms["onnxruntime"]
    print(f"\n{'mode':<24} {'ms/image':>9} {'images/s':>9} {'× onnxruntime':>14}")
    for mode, value in ms.items():
        print(f"{mode:<24} {value:9.2f} {1000 / value:9.1f} {1000 / value / ort_ips:14.2f}")
    best = min((m for m in ms if m != "onnxruntime"), key=ms.get)
    verdict = "met" if ms[best] <= ms["onnxruntime"] else "not met"
    print(f"\nfastest cnnkit mode: {best}, {ms['onnxruntime'] / ms[best]:.2f}× onnxruntime "
          f"(target ≥ 1: {verdict}); median of {args.rounds} alternating passes per mode")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
