"""`cnnkit gan train` (every GanConfig field is a flag) and `cnnkit gan sample CHECKPOINT`."""
from pathlib import Path

import torch

from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args
from cnnkit.gan.train import (GanConfig, generate, generator_from_checkpoint, grid_labels,
                              load_gan_checkpoint, train_gan)
from cnnkit.utils import CnnkitError, atomic_path


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train a DCGAN (Radford et al. 2016)",
                       description="Train a DCGAN; writes config.yaml, metrics.csv, a sample grid "
                                   "per epoch, losses.png and last.pt into the run folder.")
    add_config_arguments(p, GanConfig)
    p = sub.add_parser("sample", help="sample a grid (and a tensor file) from a DCGAN checkpoint",
                       description="Draw samples from a DCGAN checkpoint; --save writes them as a "
                                   "uint8 (N, C, H, W) tensor (+ labels) for `cnnkit "
                                   "generate-eval`.")
    p.add_argument("checkpoint", help="a DCGAN checkpoint or its run folder (uses last.pt)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--class", dest="label", type=int,
                   help="class-conditional models: only this class (default: all classes in turn)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("-o", "--output", type=Path, default=Path("grid.png"),
                   help="grid PNG (default: grid.png)")
    p.add_argument("--nrow", type=int, help="images per grid row (default: 8, or the class count)")
    p.add_argument("--grid-max", type=int, default=256,
                   help="show at most this many samples in the grid (default: 256)")
    p.add_argument("--save", type=Path, help="also save the samples: torch.save of a uint8 tensor, "
                                             "or {'images', 'labels'} when class-conditional")


def run(args) -> int:
    if args.what == "train":
        result = train_gan(config_from_args(args, GanConfig))
        print(f"trained {len(result.history)} epochs in {result.train_seconds:.1f} s "
              f"(run folder: {result.run_dir})")
        return 0
    return _sample(args)


def _sample(args) -> int:
    if args.n < 1:
        raise CnnkitError(f"--n must be positive, got {args.n}")
    ckpt = load_gan_checkpoint(args.checkpoint)
    generator = generator_from_checkpoint(ckpt)
    classes = ckpt["classes"]
    labels = None
    if generator.num_classes:
        if args.label is not None and not 0 <= args.label < generator.num_classes:
            raise CnnkitError(f"--class must be in 0..{generator.num_classes - 1}, "
                              f"got {args.label}")
        labels = (torch.full((args.n,), args.label) if args.label is not None
                  else grid_labels(generator, args.n))
    elif args.label is not None:
        raise CnnkitError(f"{args.checkpoint} is not class-conditional; drop --class (train with "
                          "--class-conditional to choose classes)")
    images = generate(generator, args.n, labels=labels,
                      generator_rng=torch.Generator().manual_seed(args.seed))  # (n, C, H, W) uint8
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib only when drawing)
    nrow = args.nrow or (generator.num_classes if labels is not None and args.label is None else 8)
    shown = images[:args.grid_max]
    what = f"class {classes[args.label]}" if args.label is not None else "all classes"
    print(f"grid of {len(shown)} samples ({what if labels is not None else 'unconditional'}): "
          f"{image_grid(shown, args.output, nrow=nrow)}")
    if args.save:
        with atomic_path(args.save) as tmp:
            torch.save(images if labels is None else {"images": images, "labels": labels}, tmp)
        print(f"saved {len(images)} samples: {args.save}")
    return 0
