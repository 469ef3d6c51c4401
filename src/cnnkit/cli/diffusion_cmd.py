"""`cnnkit diffusion train|sample`: train a DDPM; `sample` is `cnnkit sample` (same flags)."""
from __future__ import annotations

from cnnkit.cli import sample_cmd
from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="diffusion_command", required=True,
                                parser_class=OneLineParser)
    from cnnkit.train.ddpm import DiffusionConfig  # noqa: PLC0415
    train = sub.add_parser("train", help="train a DDPM (flags generated from DiffusionConfig)")
    add_config_arguments(train, DiffusionConfig)
    sample_cmd.add_arguments(sub.add_parser("sample", help="= cnnkit sample: a grid PNG (and a "
                                            "samples file) from a checkpoint's EMA weights"))


def run(args) -> int:
    if args.diffusion_command == "sample":
        return sample_cmd.run(args)
    from cnnkit.train.ddpm import DiffusionConfig, train_diffusion  # noqa: PLC0415
    run_dir = train_diffusion(config_from_args(args, DiffusionConfig))
    print(f"run folder: {run_dir}")
    return 0
