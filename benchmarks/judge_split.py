"""What a CycleGAN direction's FID in the judge's space is made of (issue 15).

`cnnkit cyclegan eval` gives one FID per direction. This splits it: the translations the judge
assigns to the target domain (its successes) are scored on their own against the real test photos
of that domain, beside the floor at their own n (the median over disjoint random samples of that
many real training photos, generation/judge.real_floor); the FID's mean term |μ_fake − μ_real|²
is printed beside the whole; and the mean norm of the judge's pooled features is given for the
successes, the failures and the real photos. If the successes alone sit near their floor, the
failures make the FID; if not, even the translations the judge accepts are off in its space.

usage: python benchmarks/judge_split.py CYCLEGAN_RUN --judge RUN [RUN ...] [--seed 0]
"""
from __future__ import annotations

import time

import numpy as np

from _judging import judging_parser
from _timing import cpu_name
from cnnkit.data.array_dataset import resize_images
from cnnkit.generation.fid import frechet_distance, statistics
from cnnkit.generation.judge import (judge_images, load_generators, load_judge, real_floor,
                                     translate_and_cycle)
from cnnkit.train.cyclegan import CycleGanConfig, load_domains


def main() -> None:
    parser = judging_parser(__doc__)
    parser.add_argument("cyclegan", help="CycleGAN run folder or .pt (best.pt where it has one)")
    parser.add_argument("--seed", type=int, default=0, help="draws the floor samples")
    args = parser.parse_args()
    start = time.perf_counter()
    generators, side = load_generators(args.cyclegan, command="judge_split")  # as `eval` does
    config = CycleGanConfig(dataset="horse2zebra", data_dir=str(args.data_dir), quiet=True)
    train, domains = load_domains(config, "train", load_size=None)
    test, _ = load_domains(config, "test", load_size=None)
    print(f"{cpu_name()} | {args.cyclegan}, translated at {side} px")
    print(f"{'judge':<22} {'direction':<15} {'success':>8} {'FID':>7} {'mean term':>10} "
          f"{'FID successes':>14} {'floor at n':>11} {'ratio':>6}  feature norm: ok / failed / "
          f"real")
    directions = (("A", "B", "generator_ab", "generator_ba"),
                  ("B", "A", "generator_ba", "generator_ab"))
    for path in args.judge:
        judge = load_judge(path, domains)
        judge_side = judge.image_shape[-1]
        for source, target, g, f in directions:
            real = getattr(test, target.lower())
            real_feats = judge_images(judge, resize_images(real, judge_side))[0]
            reference = statistics(real_feats)
            fake, _ = translate_and_cycle(generators[g].model.eval(), generators[f].model.eval(),
                                          getattr(test, source.lower()), side)
            feats, preds = judge_images(judge, resize_images(fake, judge_side))
            ok = (preds == judge.classes.index(domains["AB".index(target)])).numpy()
            _, floors = real_floor(judge, getattr(train, target.lower()), reference,
                                   max(int(ok.sum()), 3), seed=args.seed)
            floor = float(np.median(floors))
            # A covariance needs a few samples: with under 3 successes their FID is not defined.
            fid_ok = (frechet_distance(*statistics(feats[ok]), *reference) if ok.sum() >= 3
                      else float("nan"))
            norm = [float(np.linalg.norm(x, axis=1).mean()) if len(x) else float("nan")
                    for x in (feats[ok], feats[~ok], real_feats)]
            name = f"{domains['AB'.index(source)]} → {domains['AB'.index(target)]}"
            print(f"{path:<22} {name:<15} {ok.mean():>8.1%} "
                  f"{frechet_distance(*statistics(feats), *reference):>7.2f} "
                  f"{float(np.sum((feats.mean(0) - reference[0]) ** 2)):>10.2f} {fid_ok:>14.2f} "
                  f"{floor:>11.2f} {fid_ok / floor:>6.2f}  {norm[0]:.2f} / {norm[1]:.2f} / "
                  f"{norm[2]:.2f}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
