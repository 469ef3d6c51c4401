"""`cnnkit export CHECKPOINT --format onnx|torchscript`: a deployable file, checked against
PyTorch on real test images."""
from pathlib import Path

import torch

from cnnkit.cli.eval_cmd import resolve_checkpoint
from cnnkit.train.checkpoint import load_checkpoint, model_from_checkpoint
from cnnkit.train.export import FORMATS, SUFFIXES, TOLERANCE, export_model
from cnnkit.train.inference import checkpoint_test_images

RANDOM_CHECK_IMAGES = 8
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load"}


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its best.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("-o", "--output", type=Path,
                        help="output file (default: beside the checkpoint, "
                             "best.onnx / best.torchscript.pt)")
    parser.add_argument("--check-images", type=int, default=64,
                        help="test images the exported model is checked on")


def run(args) -> int:
    ckpt_path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    out = args.output or ckpt_path.parent / (ckpt_path.stem + SUFFIXES[args.format])
    found = checkpoint_test_images(ckpt, args.check_images)
    if found is None:
        # The data set is not on disk: random inputs still catch a wrong graph.
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(RANDOM_CHECK_IMAGES, *ckpt["image_size"], generator=generator)
        what = f"{len(images)} random images (the data set could not be read without a download)"
    else:
        images, what = found
    report = export_model(model, out, args.format, images)
    size_mb = report.path.stat().st_size / 2**20
    print(f"wrote {report.path} ({args.format}, {report.exporter}, {size_mb:.1f} MiB)")
    sizes = " and ".join(map(str, report.batch_sizes))
    print(f"check: max |{RUNTIMES[args.format]} − PyTorch| = {report.max_abs_diff:.2e} on {what}, "
          f"batch sizes {sizes} (tolerance {TOLERANCE:g})")
    return 0
