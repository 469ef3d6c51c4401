"""`cnnkit` command: one module per subcommand; this file only wires them together."""
from __future__ import annotations

import importlib
import logging
import sys

from cnnkit.cli._args import OneLineParser
from cnnkit.utils import CnnkitError

# subcommand → module in cnnkit.cli defining `add_arguments(parser)` and `run(args)`
COMMANDS = {
    "train": ("train_cmd", "train a model (flags generated from the training config)"),
    "lr-find": ("lr_find_cmd", "learning-rate range test (Smith 2017): loss vs lr, plotted, "
                "with a suggestion"),
    "eval": ("eval_cmd", "evaluate a checkpoint on a data set"),
    "predict": ("predict_cmd", "top-k classes of image files"),
    "models": ("models_cmd", "list registered models"),
    "summary": ("summary_cmd", "per-layer output shapes, parameters and multiply-adds"),
    "datasets": ("datasets_cmd", "list the data sets cnnkit can load"),
    "convert": ("convert_cmd", "convert detection annotations between COCO JSON, PASCAL VOC XML "
                "and YOLO txt"),
    "conv": ("conv_cmd", "convolve an image with cnnkit's own conv2d (stride, padding, dilation)"),
    "edges": ("edges_cmd", "edge detection with classic kernels, or learn one (--learn)"),
    "visualize": ("visualize_cmd", "kernels, feature maps, saliency/Grad-CAM, receptive fields"),
    "experiment": ("experiment_cmd", "multi-seed experiments: `experiment schemes` (layer order)"),
    "benchmark": ("benchmark_cmd", "inference images/s: fp32, channels-last, bf16, compiled"),
    "export": ("export_cmd", "export a checkpoint to ONNX or TorchScript, checked against PyTorch"),
    "diffusion": ("diffusion_cmd", "DDPM: `diffusion train` on a data set, "
                  "`diffusion sample CHECKPOINT`"),
    "gan": ("gan_cmd", "DCGAN: `gan train` on a data set, `gan sample CHECKPOINT`"),
    "sample": ("sample_cmd", "images from a DDPM or DCGAN checkpoint: a grid PNG, and a "
               "samples file for generate-eval"),
    "generate-eval": ("generate_eval_cmd", "judge generated samples: FID vs the real floor, "
                      "conditional accuracy"),
}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="cnnkit", description="Convolutional networks from first principles "
                                                      "to trained, exported, explained models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"cnnkit.cli.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except CnnkitError as exc:
        # exit 2 for bad input; a run stopped by a signal exits 128 + its number, as shells do.
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
