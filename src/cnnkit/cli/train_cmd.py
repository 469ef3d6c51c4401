"""`cnnkit train`: every TrainConfig field is a flag; `--nproc N` runs it under torchrun."""
import os

from cnnkit.cli._args import (add_config_arguments, add_nproc_argument, config_from_args,
                              flags_given)
from cnnkit.train import TrainConfig, train
from cnnkit.engine.distributed import launch


def add_arguments(parser) -> None:
    add_config_arguments(parser, TrainConfig)
    add_nproc_argument(parser)


def run(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc, flags_given(args, TrainConfig))
    result = train(config_from_args(args, TrainConfig))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
        if hasattr(result.test, "miou"):
            score = f"test mIoU: {result.test.miou:.4f}"
        elif hasattr(result.test, "stats"):  # detection: COCO box AP
            score = f"test box AP: {result.test.stats['bbox']['AP']:.4f}"
        elif isinstance(result.test, dict):  # pose
            score = f"test PCK@0.2: {result.test['pck']:.4f}"
        else:
            score = f"test accuracy: {result.test.top1:.4f}"
        print(f"{score}  (run folder: {result.run_dir})")
    return 0
