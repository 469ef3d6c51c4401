"""How often real photos fail "FID within 3× of the floor" (issue 15).

Random samples of n real *training* photos of each domain (n = the other domain's test photos,
as many as `cyclegan eval` translates into it) take the place of translations: each sample's FID
to the real test photos of its domain over the floor (the median over disjoint random samples of
n training photos, generation/judge.real_floor, as `cyclegan eval` computes it), per judge and as
the mean over the judges (as `cyclegan eval` summarises several). A perfect generator — one that
outputs real photos — fails the target as often as these samples do.

usage: python benchmarks/judge_real_samples.py --judge RUN [RUN ...] [--samples 100]
"""
from __future__ import annotations

import time

import numpy as np

from _judging import judging_parser
from _timing import cpu_name
from cnnkit.generation.fid import frechet_distance, statistics
from cnnkit.generation.judge import load_judge, real_reference
from cnnkit.train.cyclegan import CycleGanConfig, load_domains

TARGET = 3.0  # the "FID within 3× of the floor"


def main() -> None:
    parser = judging_parser(__doc__)
    parser.add_argument("--samples", type=int, default=100, help="random samples per domain")
    parser.add_argument("--seed", type=int, default=0, help="draws the floor samples")
    args = parser.parse_args()
    start = time.perf_counter()
    config = CycleGanConfig(dataset="horse2zebra", data_dir=str(args.data_dir), quiet=True)
    train, domains = load_domains(config, "train", load_size=None)
    test, _ = load_domains(config, "test", load_size=None)
    judges = [load_judge(path, domains) for path in args.judge]
    # Each judge's features of the real photos and floors, as `cyclegan eval` makes them.
    references = [real_reference(judge, test, train, seed=args.seed) for judge in judges]
    print(f"{cpu_name()}; {len(judges)} judges; {args.samples} random samples per domain")
    # Domain A's photos are compared with B's translations into A, so n = B's test count.
    for target, other in (("B", "A"), ("A", "B")):
        n = len(getattr(test, other.lower()))
        picks = [np.random.default_rng(i).choice(len(getattr(train, target.lower())), n,
                                                 replace=False) for i in range(args.samples)]
        ratios = []  # (judges, samples)
        for reference in references:
            feats, floors = reference.floor[target]
            floor = float(np.median(floors))
            ratios.append([frechet_distance(*statistics(feats[p]), *reference.stats[target])
                           / floor for p in picks])
        ratios = np.array(ratios)
        mean = ratios.mean(0)
        per_judge = ", ".join(f"{np.mean(r > TARGET):.0%}" for r in ratios)
        p10, p50, p90 = np.percentile(mean, [10, 50, 90])
        print(f"{domains['AB'.index(target)]} (n = {n}): samples over {TARGET:g}× the floor per "
              f"judge {per_judge}; by the judges' mean {np.mean(mean > TARGET):.0%} "
              f"(FID / floor 10th / 50th / 90th percentile {p10:.2f} / {p50:.2f} / {p90:.2f})")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
