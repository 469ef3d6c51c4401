"""`cnnkit train`: every TrainConfig field is a flag; `--nproc N` runs it under torchrun."""
import os
from dataclasses import fields

from cnnkit.cli._args import add_config_arguments, config_from_args
from cnnkit.train import TrainConfig, train
from cnnkit.engine.distributed import launch


def add_arguments(parser) -> None:
    add_config_arguments(parser, TrainConfig)
    parser.add_argument("--nproc", type=int, default=None,
                        help="train data-parallel in N processes on this machine (launches "
                             "torchrun; global batch = N × batch size)")


def run(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc, _flags_given(args))
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


def _flags_given(args) -> list[str]:
    """The flags of this command line, minus --nproc, for each process torchrun starts."""
    argv = [] if args.config is None else ["--config", str(args.config)]
    for f in fields(TrainConfig):
        value, flag = getattr(args, f.name, None), "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return argv
