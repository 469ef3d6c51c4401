"""`cnnkit` command: one module per subcommand; this file only wires them together.

Start-up is kept fast (`benchmarks/cli_startup.py`): the top-level parser names every command
but imports only the module of the command being run, so `cnnkit`, `cnnkit --help` and
`cnnkit --version` never import torch; each command imports its heavy modules when it runs.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from cnnkit import __version__
from cnnkit.cli._args import OneLineParser
from cnnkit.utils import CnnkitError

# subcommand → module in cnnkit.cli defining `add_arguments(parser)` and `run(args)`
COMMANDS = {
    "train": ("train_cmd", "train a model (flags generated from the training config)"),
    "lr-find": ("lr_find_cmd", "learning-rate range test (Smith 2017): loss vs lr, plotted, "
                "with a suggestion"),
    "eval": ("eval_cmd", "evaluate a checkpoint on a data set"),
    "predict": ("predict_cmd", "predict image files: classes, masks, objects or skeletons"),
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
    "cyclegan": ("cyclegan_cmd", "CycleGAN: `cyclegan train` on two unpaired domains, "
                 "`cyclegan translate CHECKPOINT IMAGES...`"),
    "sample": ("sample_cmd", "images from a DDPM or DCGAN checkpoint: a grid PNG, and a "
               "samples file for generate-eval"),
    "generate-eval": ("generate_eval_cmd", "judge generated samples: FID vs the real floor, "
                      "conditional accuracy"),
}


def build_parser(only: str | None = None) -> OneLineParser:
    """The `cnnkit` parser. `only`: import and fill in just this command's arguments (the others
    keep their name and one-line help, which is all `cnnkit --help` shows); None fills in all."""
    parser = OneLineParser(prog="cnnkit", description="Convolutional networks from first principles "
                                                      "to trained, exported, explained models.",
                           epilog="`cnnkit COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                parser_class=OneLineParser)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(f"cnnkit.cli.{module_name}")
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named on the command line ("" when none): the first word that is not an
    option, since the top-level options (--help, --version) take no value."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:  # bare `cnnkit`: the command list, not an error
        parser.print_help()
        sys.exit(0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
    except CnnkitError as exc:
        # exit 2 for bad input; a run stopped by a signal exits 128 + its number, as shells do.
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `cnnkit eval ... | head`: the reader left. Stop quietly, as a SIGPIPE'd program would
        # (exit 128 + 13), and point stdout at /dev/null so that the interpreter's final flush
        # of what is still buffered cannot raise again (the recipe of Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code or 0)
