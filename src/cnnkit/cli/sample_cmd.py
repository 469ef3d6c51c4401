"""`cnnkit sample CHECKPOINT`: images from a DDPM or DCGAN run, as a grid PNG and, with --save,
a samples file for `cnnkit generate-eval`. `diffusion sample` and `gan sample` are this command."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="a DDPM or DCGAN checkpoint, or its run folder (best.pt, else last.pt)")
    parser.add_argument("--n", type=int, default=64, help="images (default: 64)")
    parser.add_argument("--class", dest="class_index", type=int, default=None,
                        help="class-conditional models: this class only (default: every class "
                             "in turn, one per grid column)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="images made together (default: 100)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                        help="network arithmetic: bf16 autocast is ~2x faster for the DDPM U-Net "
                             "where the CPU has AMX/AVX512-BF16; auto picks it there "
                             "(default: fp32)")
    parser.add_argument("-o", "--output", type=Path, default=Path("samples.png"),
                        help="grid PNG to write (default: samples.png)")
    parser.add_argument("--nrow", type=int, default=None,
                        help="images per grid row (default: 8, or the class count)")
    parser.add_argument("--grid-max", type=int, default=256,
                        help="show at most this many samples in the grid (default: 256)")
    parser.add_argument("--save", type=Path, default=None,
                        help="also save the samples for `cnnkit generate-eval`: torch.save of a "
                             "uint8 (N, C, H, W) tensor, or {'images', 'labels'} when "
                             "class-conditional")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ddpm = parser.add_argument_group("DDPM only")
    ddpm.add_argument("--sampler", choices=("ddim", "dpm++", "ddpm"), default=None,
                      help="DDIM or DPM-Solver++(2M) (any number of steps), or DDPM ancestral "
                           "(T steps) (default: ddim)")
    ddpm.add_argument("--steps", type=int, default=None,
                      help="DDIM / DPM-Solver++ steps (default: 50 / 20)")
    ddpm.add_argument("--eta", type=float, default=None,
                      help="DDIM noise: 0 deterministic, 1 DDPM-like (default: 0)")
    ddpm.add_argument("--guidance", type=float, default=None,
                      help="classifier-free guidance scale w (default: 1, plain conditional)")


def run(args) -> int:
    from cnnkit.generation import save_samples, to_uint8  # noqa: PLC0415
    from cnnkit.generation.sample import generate, load_sampler  # noqa: PLC0415
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib only when drawing)

    if args.n < 1:
        raise CnnkitError(f"--n must be at least 1, got {args.n}")
    sampler = load_sampler(args.checkpoint)
    ddpm_flags = [f"--{k}" for k in ("sampler", "steps", "eta", "guidance")
                  if getattr(args, k) is not None]
    if sampler.task != "ddpm" and ddpm_flags:
        raise CnnkitError(f"{' '.join(ddpm_flags)}: DDPM options, but {args.checkpoint} is a "
                          f"{sampler.task} checkpoint")
    if args.sampler == "ddpm" and (args.steps is not None or args.eta is not None):
        raise CnnkitError("--steps and --eta are DDIM options; the DDPM sampler takes all T steps")
    if args.sampler == "dpm++" and args.eta is not None:
        raise CnnkitError("--eta is a DDIM option; DPM-Solver++ solves the deterministic ODE")
    labels, nrow = _labels(sampler, args)
    if args.guidance is not None and not sampler.num_classes:
        raise CnnkitError("--guidance needs a class-conditional model; this one was trained "
                          "without --class-conditional")
    method = args.sampler or "ddim"
    guidance = 1.0 if args.guidance is None else args.guidance
    default_steps = 20 if method == "dpm++" else 50
    steps = min(default_steps, sampler.num_timesteps) if args.steps is None else args.steps
    eta = 0.0 if args.eta is None else args.eta
    how = {"ddpm": f"DDPM {sampler.num_timesteps} steps, guidance {guidance:g}",
           "ddim": f"DDIM {steps} steps, η = {eta:g}, guidance {guidance:g}",
           "dpm++": f"DPM-Solver++(2M) {steps} steps, guidance {guidance:g}"}[method] \
        if sampler.task == "ddpm" else "DCGAN generator"
    start = time.perf_counter()
    images = generate(sampler, args.n, labels=labels, seed=args.seed, batch_size=args.batch_size,
                      precision=args.precision, method=method, steps=steps, eta=eta,
                      guidance=guidance, progress=not args.quiet)  # (n, C, H, W) in [-1, 1]
    seconds = time.perf_counter() - start
    shown = images[:args.grid_max]
    # class-conditional, every class in turn with one class per column: name the columns
    by_column = labels is not None and args.class_index is None and nrow == sampler.num_classes
    col_labels = [sampler.classes[k] for k in range(min(nrow, len(shown)))] if by_column else None
    which = f", class '{sampler.classes[args.class_index]}'" if args.class_index is not None else ""
    image_grid(shown, args.output, nrow=nrow, value_range=(-1.0, 1.0), col_labels=col_labels,
               title=f"{len(shown)} of {args.n} samples{which}: {how}")
    print(f"{args.output}: {args.n} samples ({how}) in {seconds:.1f} s "
          f"({seconds / args.n * 1000:.1f} ms per image)")
    if args.save:
        save_samples(args.save, to_uint8(images), labels)
        print(f"saved {args.n} samples: {args.save}")
    return 0


def _labels(sampler, args) -> tuple[torch.Tensor | None, int]:
    """The class of each image (None: unconditional) and the grid's row length."""
    if not sampler.num_classes:
        if args.class_index is not None:
            raise CnnkitError(f"{args.checkpoint} is not class-conditional; drop --class (train "
                              "with --class-conditional to choose classes)")
        return None, args.nrow or 8
    if args.class_index is None:
        return torch.arange(args.n) % sampler.num_classes, args.nrow or sampler.num_classes
    if not 0 <= args.class_index < sampler.num_classes:
        raise CnnkitError(f"--class must be in 0..{sampler.num_classes - 1} "
                          f"({', '.join(sampler.classes[:10])}), got {args.class_index}")
    return torch.full((args.n,), args.class_index), args.nrow or 8
