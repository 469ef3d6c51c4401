"""`cnnkit lr-find`: the learning-rate range test of a training config (every TrainConfig flag)."""
from pathlib import Path

from cnnkit.cli._args import add_config_arguments, config_from_args
from cnnkit.train.config import TrainConfig
from cnnkit.train.lr_find import lr_find


def add_arguments(parser) -> None:
    add_config_arguments(parser, TrainConfig)
    # Named apart from TrainConfig's fields (--lr is the training peak, not part of the range).
    parser.add_argument("--start-lr", type=float, default=1e-7, help="first lr (default: 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last lr (default: 10)")
    parser.add_argument("--num-steps", type=int, default=100,
                        help="steps, one per lr, spaced geometrically (default: 100)")
    parser.add_argument("--smoothing", type=float, default=0.98,
                        help="β of the loss's exponential moving average (default: 0.98)")
    parser.add_argument("--diverge", type=float, default=4.0,
                        help="stop when the smoothed loss exceeds this × its best (default: 4)")
    parser.add_argument("-o", "--output", type=Path, default=Path("lr_find.png"),
                        help="plot (PNG); the CSV of lr, loss, smoothed is written beside it "
                             "(default: lr_find.png)")


def run(args) -> int:
    result = lr_find(config_from_args(args, TrainConfig), start_lr=args.start_lr,
                     end_lr=args.end_lr, num_steps=args.num_steps, smoothing=args.smoothing,
                     diverge=args.diverge, out=args.output)
    print(f"wrote {result.plot} and {result.table}")
    return 0
