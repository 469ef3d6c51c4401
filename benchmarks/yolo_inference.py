"""YOLOv8 inference on CPU: cnnkit's modes against the same weights in onnxruntime (issue 13).

yolov8n (80 classes, random weights: speed does not depend on them), 320×320, batch 1, the raw
forward (boxes and scores before NMS, which is outside the ONNX graph and costs both sides the
same). Timed in alternating rounds — every mode one pass in turn — so a change in machine load
hits all alike; the median pass counts. Modes: cnnkit eager fp32 (NCHW), channels-last, bf16
autocast, torch.compile (inductor, weights frozen) of the fastest eager mode, and the same raw
forward exported to ONNX (boxes and scores as one tensor), run by onnxruntime with every graph
optimisation and intra-op threads = the machine's physical cores (torch gets the same number);
the timing is benchmarks/inference.py's. Target: cnnkit's fastest mode ≥ onnxruntime.

usage: python benchmarks/yolo_inference.py [--model yolov8n] [--size 320] [--rounds 30]
       [--no-compile] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
from _timing import cpu_name
from inference import time_against_onnxruntime

from cnnkit.engine.device import physical_cores
from cnnkit.inference.modes import DenseDetections
from cnnkit.models import create_model


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

    ms, notes = time_against_onnxruntime(dense, x, threads, args.rounds, not args.no_compile,
                                         warmup=args.warmup)
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
