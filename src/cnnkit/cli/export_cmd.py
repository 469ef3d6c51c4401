"""`cnnkit export CHECKPOINT --format onnx|torchscript`: a deployable file, checked against
PyTorch on real test images."""
from pathlib import Path

import torch

from cnnkit.inference.export import FORMATS, SUFFIXES, TOLERANCE, export_model
from cnnkit.inference.load import load_model
from cnnkit.inference.modes import checkpoint_test_images

RANDOM_CHECK_IMAGES = 8
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load"}


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (its best.pt, else "
                                           "last.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("-o", "--output", type=Path,
                        help="output file (default: beside the checkpoint, "
                             "best.onnx / best.torchscript.pt)")
    parser.add_argument("--check-images", type=int, default=64,
                        help="test images the exported model is checked on")


def run(args) -> int:
    loaded = load_model(args.checkpoint, task=("classify", "segment"),
                        command="`cnnkit export`")
    out = args.output or loaded.path.parent / (loaded.path.stem + SUFFIXES[args.format])
    found = checkpoint_test_images(loaded, args.check_images)
    if found is None:
        # The data set is not on disk: random inputs still catch a wrong graph.
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(RANDOM_CHECK_IMAGES, *loaded.image_shape, generator=generator)
        what = f"{len(images)} random images (the data set could not be read without a download)"
    else:
        images, what = found
    report = export_model(loaded.model, out, args.format, images)
    size_mb = report.path.stat().st_size / 2**20
    print(f"wrote {report.path} ({args.format}, {report.exporter}, {size_mb:.1f} MiB)")
    sizes = " and ".join(map(str, report.batch_sizes))
    print(f"check: max |{RUNTIMES[args.format]} − PyTorch| = {report.max_abs_diff:.2e} on {what}, "
          f"batch sizes {sizes} (tolerance {TOLERANCE:g})")
    return 0
