"""Does the held-out choice of a CycleGAN epoch carry over to the test photos? (issue 15)

For each checkpoint given — one per epoch of a run, e.g. hard links to `last.pt` taken after each
epoch (`ln RUN/last.pt snap/epochN.pt`: last.pt is replaced by a rename, so a link keeps the old
one) — and each judge: the held-out FID / floor of both directions (as `--val-images 120` scores
them in training, the floor drawn with --seed) and the test verdict `cyclegan eval` gives. The
last lines name the epoch each rule picks — one judge's held-out score, or the judges' mean —
and that epoch's test FID / floor (mean over the judges).

usage: python benchmarks/cyclegan_epoch_scan.py SNAPSHOT [SNAPSHOT ...] --judge RUN [RUN ...]
"""
from __future__ import annotations

import numpy as np
import torch

from _judging import judging_parser
from _timing import cpu_name
from cnnkit.generation.judge import judge_generators, load_generators, load_judge
from cnnkit.train.cyclegan import CycleGanConfig, hold_out, load_domains

DIRECTIONS = (("AtoB", "horse → zebra"), ("BtoA", "zebra → horse"))


def main() -> None:
    parser = judging_parser(__doc__)
    parser.add_argument("snapshots", nargs="+", help="one checkpoint per epoch of one run")
    parser.add_argument("--val-images", type=int, default=120, help="as the run held out")
    parser.add_argument("--seed", type=int, default=0, help="draws the floor samples")
    args = parser.parse_args()
    config = CycleGanConfig(dataset="horse2zebra", data_dir=str(args.data_dir), quiet=True,
                            val_images=args.val_images)
    train, domains = load_domains(config, "train", load_size=None)
    test, _ = load_domains(config, "test", load_size=None)
    _, held_out = hold_out(config, train)  # the split training makes
    val, rest = held_out["val"], held_out["floor"]
    judges = [load_judge(path, domains) for path in args.judge]
    print(f"{cpu_name()}; FID / floor per judge, held-out | test")
    references = {"val": {}, "test": {}}  # the judges' view of the real photos, made once
    scores = []  # per snapshot: {(direction, "val"|"test"): [per judge]}
    for path in args.snapshots:
        position = torch.load(path, weights_only=True, mmap=True)["position"]
        # A snapshot stopped mid-epoch (a limit, a signal) is named by its steps into the next.
        epoch = (f"{position['epochs_done']}+{position['epoch_step']} steps"
                 if position["epoch_step"] else str(position["epochs_done"]))
        generators, side = load_generators(path, command="cyclegan_epoch_scan")
        g, f = (generators[p].model.eval() for p in ("generator_ab", "generator_ba"))
        score = {"epoch": epoch}
        for split, images, floor in (("val", val, rest), ("test", test, train)):
            verdicts = judge_generators(g, f, judges, images, floor, domains, image_size=side,
                                        seed=args.seed, references=references[split])
            for direction, _ in DIRECTIONS:
                score[direction, split] = [v.directions[direction].fid_ratio for v in verdicts]
        scores.append(score)
        print(f"epoch {epoch:>2}  " + "  ".join(
            f"{name}: {' '.join(f'{x:.2f}' for x in score[d, 'val'])} | "
            f"{' '.join(f'{x:.2f}' for x in score[d, 'test'])}" for d, name in DIRECTIONS))
    for direction, name in DIRECTIONS:
        rules = (("judge 1's held-out score", lambda s: s[direction, "val"][0]),
                 ("the judges' mean held-out score", lambda s: np.mean(s[direction, "val"])))
        for rule, key in rules:
            chosen = min(scores, key=key)
            print(f"{name}, by {rule}: epoch {chosen['epoch']}, test FID / floor "
                  f"{np.mean(chosen[direction, 'test']):.2f}")


if __name__ == "__main__":
    main()
