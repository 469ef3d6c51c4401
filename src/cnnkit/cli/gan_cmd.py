"""`cnnkit gan train` (every GanConfig field is a flag); `gan sample` is `cnnkit sample`."""
from cnnkit.cli import sample_cmd
from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args
from cnnkit.train.dcgan import GanConfig, train_gan


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train a DCGAN (Radford et al. 2016)",
                       description="Train a DCGAN; writes config.yaml, metrics.csv, a sample grid "
                                   "per epoch, losses.png and last.pt into the run folder.")
    add_config_arguments(p, GanConfig)
    sample_cmd.add_arguments(sub.add_parser("sample", help="= cnnkit sample: a grid PNG (and a "
                                            "samples file) from a DCGAN checkpoint"))


def run(args) -> int:
    if args.what == "sample":
        return sample_cmd.run(args)
    result = train_gan(config_from_args(args, GanConfig))
    print(f"trained {len(result.history)} epochs in {result.train_seconds:.1f} s "
          f"(run folder: {result.run_dir})")
    return 0
