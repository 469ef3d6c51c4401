"""Judge a class-conditional DDPM run on MNIST (issue 5's targets), in one run.

(a) DDIM 50 steps (η = 0) at each --guidance: FID against the MNIST test set in the feature
    space of a cnnkit LeNet classifier (`cnnkit.train.generative_eval`), the real-vs-real floor
    (training vs test images, same n), the ratio, the conditional accuracy (the fraction of
    samples the classifier assigns to the requested class, classes requested in turn), and the
    sampling time. Targets: accuracy ≥ 95%, FID ≤ 3× the floor.
(b) DDIM 50 steps against DDPM's ancestral sampler with all T = 1000 steps, on --compare-n
    samples each at the first guidance value: the same judges (floor at that n) and the time.
(c) DPM-Solver++(2M) at each of --dpm-steps against DDIM 50 (issue 17), --n samples each at the
    first guidance value. Target: 15 steps within 10% of DDIM 50's FID.

    python benchmarks/ddpm_mnist.py --run runs/ddpm-mnist --classifier runs/lenet-mnist \\
        --data-dir ../shared/datasets --n 10000 --guidance 1,2,3 --compare-n 500 \\
        --dpm-steps 10,15,20,50
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnnkit.data import load_dataset
from cnnkit.generation import to_uint8
from cnnkit.generation.fid import conditional_accuracy, fid, load_classifier, random_subset
from cnnkit.generation.sample import generate, load_sampler


def judge(classifier, samples, labels, train, test, n: int, seed: int) -> dict:
    test_n = random_subset(test, n, seed)
    return {"fid": fid(classifier, samples, test_n),
            "floor": fid(classifier, random_subset(train, n, seed + 1), test_n),
            "accuracy": conditional_accuracy(classifier, samples, labels)}


def sample_and_judge(diffusion, classifier, train, test, n: int, args, **sampler) -> dict:
    labels = torch.arange(n) % diffusion.num_classes  # every class in turn
    start = time.perf_counter()
    images = generate(diffusion, n, labels=labels, seed=args.seed, batch_size=args.batch_size,
                      precision=args.precision, **sampler)
    seconds = time.perf_counter() - start
    row = judge(classifier, to_uint8(images), labels, train, test, n, args.seed)
    return {**row, "seconds": seconds, "ms_per_image": 1000 * seconds / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a `cnnkit diffusion train` run")
    parser.add_argument("--classifier", type=Path, required=True,
                        help="a `cnnkit train --dataset mnist` run (the feature space)")
    parser.add_argument("--data-dir", default=None, help="MNIST location (default: classifier's)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--guidance", default="1,2,3")
    parser.add_argument("--compare-n", type=int, default=500, help="0: skip part (b)")
    parser.add_argument("--dpm-steps", default="10,15,20,50", help="part (c); '': skip it")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    diffusion = load_sampler(args.run)
    classifier = load_classifier(args.classifier)
    data_dir = Path(args.data_dir or classifier.data_dir).expanduser()
    train, test = (load_dataset("mnist", split, data_dir=data_dir, quiet=True).images
                   for split in ("train", "test"))
    guidances = [float(g) for g in args.guidance.split(",")]
    print(f"run {args.run}, classifier {args.classifier}, U-Net in {args.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"\n(a) DDIM 50 steps, η = 0, n = {args.n}")
    print("| guidance | FID | floor | × floor | conditional accuracy | sampling s | ms/image |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    ddim50 = {}
    for w in guidances:
        ddim50[w] = sample_and_judge(diffusion, classifier, train, test, args.n, args,
                                     method="ddim", steps=50, guidance=w)
        _row(f"{w:g}", ddim50[w])
    if args.compare_n >= 2:
        compare_ddpm(diffusion, classifier, train, test, guidances[0], args)
    if args.dpm_steps:
        compare_dpm_solver(diffusion, classifier, train, test, guidances[0], ddim50[guidances[0]],
                           args)


def compare_ddpm(diffusion, classifier, train, test, guidance: float, args) -> None:
    print(f"\n(b) DDIM 50 vs DDPM {diffusion.num_timesteps} steps, guidance {guidance:g}, "
          f"n = {args.compare_n}")
    print("| sampler | FID | floor | × floor | conditional accuracy | sampling s | ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sampler in (("DDIM 50, η = 0", dict(method="ddim", steps=50)),
                          (f"DDPM {diffusion.num_timesteps}", dict(method="ddpm"))):
        r = sample_and_judge(diffusion, classifier, train, test, args.compare_n, args,
                             guidance=guidance, **sampler)
        _row(name, r)


def compare_dpm_solver(diffusion, classifier, train, test, guidance: float, base: dict,
                       args) -> None:
    """DPM-Solver++ at each step count against DDIM 50 (`base`, part (a)'s row: same seed, n and
    guidance): FID relative to DDIM 50's, and the speed-up in sampling time."""
    print(f"\n(c) DPM-Solver++(2M) vs DDIM 50, guidance {guidance:g}, n = {args.n}")
    print("| sampler | FID | floor | × floor | conditional accuracy | sampling s | ms/image | "
          "FID / DDIM 50's | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    _row("DDIM 50, η = 0 (from (a))", base, base)
    for steps in (int(k) for k in args.dpm_steps.split(",")):
        r = sample_and_judge(diffusion, classifier, train, test, args.n, args, method="dpm++",
                             steps=steps, guidance=guidance)
        _row(f"DPM-Solver++ {steps}", r, base)


def _row(name: str, r: dict, base: dict | None = None) -> None:
    extra = (f" {r['fid'] / base['fid']:.3f} | {base['seconds'] / r['seconds']:.2f}× |"
             if base else "")
    print(f"| {name} | {r['fid']:.2f} | {r['floor']:.2f} | {r['fid'] / r['floor']:.2f} | "
          f"{r['accuracy']:.2%} | {r['seconds']:.0f} | {r['ms_per_image']:.1f} |{extra}",
          flush=True)


if __name__ == "__main__":
    main()
