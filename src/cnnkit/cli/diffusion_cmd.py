"""`cnnkit diffusion train|sample`: train a DDPM; a sample grid from a checkpoint's EMA weights."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args
from cnnkit.utils import CnnkitError, atomic_path


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="diffusion_command", required=True,
                                parser_class=OneLineParser)
    from cnnkit.diffusion.train import DiffusionConfig  # noqa: PLC0415
    train = sub.add_parser("train", help="train a DDPM (flags generated from DiffusionConfig)")
    add_config_arguments(train, DiffusionConfig)
    sample = sub.add_parser("sample", help="a sample grid PNG from a checkpoint's EMA weights")
    sample.add_argument("checkpoint", type=Path, help="a diffusion run folder or its last.pt")
    sample.add_argument("--n", type=int, default=64, help="images (default: 64)")
    sample.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                        help="DDIM (any number of steps) or DDPM ancestral (T steps)")
    sample.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 50)")
    sample.add_argument("--eta", type=float, default=None,
                        help="DDIM noise: 0 deterministic, 1 DDPM-like (default: 0)")
    sample.add_argument("--class", dest="class_index", type=int, default=None,
                        help="class-conditional models: this class only (default: every class)")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale w (default: 1, plain conditional)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    sample.add_argument("--nrow", type=int, default=None, help="images per grid row")
    sample.add_argument("--batch-size", type=int, default=100,
                        help="images denoised together (default: 100, the fastest here)")
    sample.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                        help="U-Net arithmetic: bf16 autocast is ~2x faster where the CPU has "
                             "AMX/AVX512-BF16; auto picks it there (default: fp32)")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.add_argument("-o", "--output", type=Path, default=Path("samples.png"),
                        help="PNG to write (default: samples.png)")
    sample.add_argument("--grid-max", type=int, default=256,
                        help="show at most this many samples in the grid (default: 256)")
    sample.add_argument("--save", type=Path, default=None,
                        help="also save the samples for `cnnkit generate-eval`: torch.save of a "
                             "uint8 (N, C, H, W) tensor, or {'images', 'labels'} when "
                             "class-conditional")


def run(args) -> int:
    if args.diffusion_command == "train":
        return _train(args)
    return _sample(args)


def _train(args) -> int:
    from cnnkit.diffusion.train import RESUME_OVERRIDES, DiffusionConfig, train_diffusion  # noqa
    config = config_from_args(args, DiffusionConfig)
    overrides = {k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k) is not None}
    run_dir = train_diffusion(config, overrides=overrides)
    print(f"run folder: {run_dir}")
    return 0


def _sample(args) -> int:
    from cnnkit.diffusion.generate import generate, load_diffusion  # noqa: PLC0415
    from cnnkit.gan.dcgan import to_uint8  # noqa: PLC0415
    from cnnkit.viz import image_grid  # noqa: PLC0415

    diffusion = load_diffusion(args.checkpoint)
    if args.n < 1:
        raise CnnkitError(f"--n must be at least 1, got {args.n}")
    if args.sampler == "ddpm" and (args.steps is not None or args.eta is not None):
        raise CnnkitError("--steps and --eta are DDIM options; the DDPM sampler takes all T steps")
    num_classes, classes = diffusion.process.num_classes, diffusion.classes
    labels, nrow = None, args.nrow or 8
    if num_classes:
        if args.class_index is None:
            labels = torch.arange(args.n) % num_classes
            nrow = args.nrow or num_classes
        elif not 0 <= args.class_index < num_classes:
            raise CnnkitError(f"--class must be in 0..{num_classes - 1} "
                              f"({', '.join(classes[:10])}), got {args.class_index}")
        else:
            labels = torch.full((args.n,), args.class_index)
    elif args.class_index is not None:
        raise CnnkitError("--class needs a class-conditional model; this one was trained "
                          "without --class-conditional")
    if args.guidance is not None and not num_classes:
        raise CnnkitError("--guidance needs a class-conditional model; this one was trained "
                          "without --class-conditional")
    guidance = 1.0 if args.guidance is None else args.guidance
    steps = min(50, diffusion.process.num_timesteps) if args.steps is None else args.steps
    eta = 0.0 if args.eta is None else args.eta
    how = (f"DDPM {diffusion.process.num_timesteps} steps" if args.sampler == "ddpm"
           else f"DDIM {steps} steps, η = {eta:g}")
    start = time.perf_counter()
    images = generate(diffusion, args.n, sampler=args.sampler, steps=steps, eta=eta,
                      labels=labels, guidance=guidance, seed=args.seed,
                      batch_size=args.batch_size, precision=args.precision,
                      progress=not args.quiet)  # (n, C, H, W) in [-1, 1]
    seconds = time.perf_counter() - start
    image_grid(images[:args.grid_max], args.output, nrow=nrow, value_range=(-1.0, 1.0))
    print(f"{args.output}: {args.n} samples ({how}, guidance {guidance:g}) in {seconds:.1f} s "
          f"({seconds / args.n * 1000:.1f} ms per image)")
    if args.save:
        with atomic_path(args.save) as tmp:
            torch.save(to_uint8(images) if labels is None
                       else {"images": to_uint8(images), "labels": labels}, tmp)
        print(f"saved {args.n} samples: {args.save}")
    return 0
