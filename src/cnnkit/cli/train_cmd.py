"""`cnnkit train`: every TrainConfig field is a flag."""
from cnnkit.cli._args import add_config_arguments, config_from_args
from cnnkit.train import TrainConfig, train


def add_arguments(parser) -> None:
    add_config_arguments(parser, TrainConfig)


def run(args) -> int:
    result = train(config_from_args(args, TrainConfig))
    print(f"test accuracy: {result.test.top1:.4f}  (run folder: {result.run_dir})")
    return 0
