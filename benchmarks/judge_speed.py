"""What a CycleGAN run's held-out judging costs per epoch with several judges (issue 15).

`cyclegan train --val-images 120 --judge J0 J1 J2` judges every epoch. Each judge once needed
the held-out photos translated again and its view of the real photos (features of every training
photo, the floor samples' FIDs) made again; now the photos are translated once per epoch and each
judge's view of the real photos is made in the first epoch and kept (generation/judge.
judge_generators, `references`). This times both ways on one checkpoint, alternating, and checks
that they give the same FID / floor.

usage: python benchmarks/judge_speed.py CHECKPOINT --judge RUN [RUN ...] [--repeats 2]
"""
from __future__ import annotations

import statistics
import time

import torch

from _judging import judging_parser
from _timing import cpu_name
from cnnkit.generation.judge import judge_generators, load_generators, load_judge
from cnnkit.train.cyclegan import CycleGanConfig, hold_out, load_domains


def main() -> None:
    parser = judging_parser(__doc__)
    parser.add_argument("checkpoint", help="a CycleGAN run or .pt")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per way")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = CycleGanConfig(dataset="horse2zebra", data_dir=str(args.data_dir), quiet=True,
                            val_images=120)
    train, domains = load_domains(config, "train", load_size=None)
    _, held_out = hold_out(config, train)  # the split training makes
    generators, side = load_generators(args.checkpoint, command="judge_speed")
    g, f = (generators[p].model.eval() for p in ("generator_ab", "generator_ba"))
    judges = [load_judge(path, domains) for path in args.judge]

    def judge(references, judges):
        return judge_generators(g, f, judges, held_out["val"], held_out["floor"], domains,
                                image_size=side, references=references)

    references = {}
    start = time.perf_counter()
    kept = judge(references, judges)  # the first epoch: makes the references
    first = time.perf_counter() - start
    times = {"one judge at a time, nothing kept": [], "all judges at once, references kept": []}
    for _ in range(args.repeats):  # alternating, so that a busy moment slows both ways alike
        start = time.perf_counter()
        apart = [judge(None, [one])[0] for one in judges]
        times["one judge at a time, nothing kept"].append(time.perf_counter() - start)
        start = time.perf_counter()
        together = judge(references, judges)
        times["all judges at once, references kept"].append(time.perf_counter() - start)
        assert together == apart == kept, "the two ways disagree"
    print(f"{cpu_name()}; {args.threads} thread(s); {len(judges)} judges; 120 + 120 held-out "
          f"photos translated at {side} px")
    print(f"all judges at once, first epoch (making the references): {first:.1f} s")
    for way, seconds in times.items():
        print(f"{way}: median {statistics.median(seconds):.1f} s per epoch "
              f"({', '.join(f'{s:.1f}' for s in seconds)})")
    ratio = [a / b for a, b in zip(*times.values())]
    print(f"speed-up after the first epoch: {statistics.median(ratio):.1f}×; FID / floor "
          f"identical both ways")


if __name__ == "__main__":
    main()
