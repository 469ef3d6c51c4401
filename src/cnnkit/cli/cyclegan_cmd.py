"""`cnnkit cyclegan train` (every CycleGanConfig field is a flag), `cnnkit cyclegan translate`, and
`cnnkit cyclegan eval` (a domain classifier's judgement, cnnkit.generation.judge).

Until cli/main.py lists it, the same commands run as `python -m cnnkit.cli.cyclegan_cmd train ...`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cnnkit.cli._args import (OneLineParser, add_config_arguments, add_nproc_argument,
                              config_from_args, flags_given)
from cnnkit.engine.distributed import launch
from cnnkit.train.cyclegan import DIRECTIONS, CycleGanConfig, train_cyclegan, translate_files
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train a CycleGAN (Zhu et al. 2017) on two unpaired domains",
                       description="Train a CycleGAN on --dataset horse2zebra or --data-dir ROOT "
                                   "(trainA/ trainB/ testA/ testB/); writes config.yaml, "
                                   "metrics.csv, a translation grid per epoch, losses.png and "
                                   "last.pt into the run folder.")
    add_config_arguments(p, CycleGanConfig)
    add_nproc_argument(p)
    t = sub.add_parser("translate", help="translate image files with a trained CycleGAN",
                       description="Translate images with a CycleGAN checkpoint's generator; "
                                   "writes OUT/<name>.png per input.")
    t.add_argument("checkpoint", type=Path, help="run folder or .pt file")
    t.add_argument("images", type=Path, nargs="+", help="image files to translate")
    t.add_argument("--direction", choices=DIRECTIONS, default="AtoB",
                   help="AtoB: the generator A → B (default); BtoA: B → A")
    t.add_argument("-o", "--out-dir", type=Path, default=Path("translated"),
                   help="folder for the translated PNGs (default: translated)")
    t.add_argument("--image-size", type=int, default=None,
                   help="resize each input to this square side (a multiple of 4; default: its "
                        "own size, rounded to a multiple of 4)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (CUDA when present), cpu or cuda (default: auto)")
    e = sub.add_parser("eval", help="judge a CycleGAN with a domain classifier: success, "
                       "judge-FID/KID, cycle L1",
                       description="Translate both domains' test images and judge them with a "
                                   "two-class classifier trained on the domains (`cnnkit train "
                                   "--dataset horse2zebra-domains`): the fraction assigned to the "
                                   "target domain, FID/KID in the judge's feature space beside "
                                   "the real-vs-real floor (not Inception-FID), cycle L1.")
    e.add_argument("checkpoint", type=Path, help="CycleGAN run folder or .pt file")
    e.add_argument("--judge", type=Path, required=True, nargs="+",
                   help="the judge: a `cnnkit train` run folder or .pt whose two classes are the "
                        "CycleGAN's domains; several (e.g. other seeds): each one's table, then "
                        "the mean and spread over them")
    e.add_argument("--n", type=int, default=None,
                   help="judge only the first N test images of each domain (default: all)")
    e.add_argument("--image-size", type=int, default=None,
                   help="translate the test images resized whole to this side (a multiple of 4; "
                        "default: its --judge-size, else its training crop)")
    e.add_argument("--data-dir", type=Path, default=None,
                   help="where the CycleGAN's data set lives (default: the run's own --data-dir)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (CUDA when present), cpu or cuda (default: auto)")


def run(args) -> int:
    if args.what == "eval":
        from cnnkit.generation.judge import (  # noqa: PLC0415
            format_judgement, judge_translations, summarise_judges)
        results = judge_translations(args.checkpoint, args.judge, image_size=args.image_size,
                                     n=args.n, data_dir=args.data_dir, device=args.device)
        print("\n".join(format_judgement(result) for result in results))
        if len(results) > 1:
            print(summarise_judges(results))
        return 0
    if args.what == "translate":
        written = translate_files(args.checkpoint, args.images, args.out_dir,
                                  direction=args.direction, image_size=args.image_size,
                                  device=args.device)
        print(f"translated {len(written)} images {args.direction} into {args.out_dir}")
        return 0
    if args.nproc is not None:
        return launch(args.nproc, flags_given(args, CycleGanConfig), ("cyclegan", "train"))
    result = train_cyclegan(config_from_args(args, CycleGanConfig))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one line from rank 0 only
        return 0
    print(f"trained {len(result.history)} epochs in {result.train_seconds:.1f} s "
          f"(run folder: {result.run_dir})")
    return 0


def main(argv: list[str] | None = None) -> None:
    """`cnnkit cyclegan ...` on its own, with main.py's error contract: a CnnkitError is one line
    on stderr and exit 2 (a run stopped by a signal: 128 + its number)."""
    parser = OneLineParser(prog="cnnkit cyclegan")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        code = run(args)
    except CnnkitError as exc:
        print(f"cnnkit cyclegan: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("cnnkit cyclegan: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
