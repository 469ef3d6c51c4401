"""`cnnkit experiment schemes`: the chapter's layer-arrangement experiment over several seeds."""
from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args
from cnnkit.train.experiment import (SchemesConfig, format_comparison, format_stats_table,
                                     run_schemes)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    p = sub.add_parser("schemes", help="scheme 1 vs scheme 2 vs no BatchNorm, over seeds",
                       description="Train simple_cnn_scheme1, simple_cnn_scheme2 and "
                                   "simple_cnn_nobn for seeds 0..S-1 with one recipe; report "
                                   "mean ± std, paired and Welch t-tests, and a figure.")
    add_config_arguments(p, SchemesConfig)


def run(args) -> int:
    result = run_schemes(config_from_args(args, SchemesConfig))
    print(f"\n{format_stats_table(result.stats)}\n\n{format_comparison(result.comparison)}\n")
    for name in ("schemes.csv", "schemes.png", "summary.md"):
        print(f"wrote {result.exp_dir / name}")
    return 0
