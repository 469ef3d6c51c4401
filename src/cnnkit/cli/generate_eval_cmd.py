"""`cnnkit generate-eval`: FID and KID of generated samples vs the test set in a cnnkit
classifier's feature space (LeNet: 500-d post-ReLU fc1), beside the real-vs-real floor, with n
printed on every line, and conditional accuracy."""
import sys
from pathlib import Path


from cnnkit.data import load_dataset
from cnnkit.generation import read_samples
from cnnkit.generation.fid import (check_images, conditional_accuracy, fid_kid,
                                   load_classifier, random_subset)
from cnnkit.utils import CnnkitError

# FID's bias grows as n falls (roughly as 1/n) and, in 500-d features, the covariance of fewer
# than 500 images is singular: 20 noise images scored "1.59x the floor", better than a real GAN.
# Below 50 images per set KID's standard error is as large as the differences between real
# generators (~0.01 on LeNet features), so neither number can be read: refuse. Below 1,000, the
# subset size of KID's reference implementation, FID is only comparable at the same n: warn.
MIN_N, WARN_N = 50, 1000


def add_arguments(parser) -> None:
    parser.add_argument("--classifier", required=True,
                        help="a `cnnkit train` checkpoint (or run folder) of the same data set")
    parser.add_argument("--samples", type=Path,
                        help="torch.save file: a uint8 (N, C, H, W) tensor, or a dict with "
                             "'images' and optional 'labels' (the requested classes)")
    parser.add_argument("--dataset", help="real data to compare with (default: the classifier's)")
    parser.add_argument("--data-dir", help="download cache (default: the classifier's)")
    parser.add_argument("--n", type=int, default=10_000,
                        help="images per set (default: 10000; capped by the samples and test set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the real-image subsets")
    parser.add_argument("--real-floor-only", action="store_true",
                        help="print only the floor: FID of real training vs test images")


def run(args) -> int:
    if args.n < MIN_N:
        raise CnnkitError(f"--n must be at least {MIN_N}, got {args.n}")
    if args.samples is None and not args.real_floor_only:
        raise CnnkitError("give --samples FILE (or --real-floor-only)")
    classifier = load_classifier(args.classifier)
    samples, labels = (None, None) if args.real_floor_only else read_samples(args.samples)
    if samples is not None:
        check_images(classifier, samples, f"samples in {args.samples}")
    dataset = args.dataset or classifier.dataset
    channels, height, _ = classifier.image_shape
    options = dict(data_dir=Path(args.data_dir or classifier.data_dir).expanduser(),
                   image_size=height, channels=channels, quiet=True)
    train, test = (load_dataset(dataset, split, **options).images for split in ("train", "test"))
    n = min(args.n, len(test), len(train), len(samples) if samples is not None else args.n)
    if n < MIN_N:
        smallest = min((len(samples), f"{args.samples}") if samples is not None else (n, ""),
                       (len(test), f"the {dataset} test set"), (len(train), "its training set"))
        raise CnnkitError(f"n = {n} images per set ({smallest[1]} has {smallest[0]}): FID and KID "
                          f"need at least {MIN_N}; FID is dominated by its small-n bias below that")
    if n < WARN_N:
        print(f"warning: n = {n} < {WARN_N}: FID is biased upward at small n, compare it only "
              f"with figures at the same n; rely on KID ± its standard error", file=sys.stderr)
    test_n = random_subset(test, n, args.seed)
    floor, floor_kid, floor_se = fid_kid(classifier, random_subset(train, n, args.seed + 1), test_n,
                                         seed=args.seed)
    print(f"FID floor, real {dataset} train vs test (n = {n}): {floor:.3f}   "
          f"KID {floor_kid:.5f} ± {floor_se:.5f}")
    if samples is None:
        return 0
    value, value_kid, value_se = fid_kid(classifier, samples[:n], test_n, seed=args.seed)
    print(f"FID samples vs {dataset} test (n = {n}): {value:.3f}   "
          f"KID {value_kid:.5f} ± {value_se:.5f}")
    print(f"FID ratio to the floor at the same n = {n}: {value / floor:.2f}x" if floor > 0
          else "FID ratio: the floor is 0")
    if labels is not None:
        accuracy = conditional_accuracy(classifier, samples, labels)
        print(f"conditional accuracy (n = {len(samples)} samples): {accuracy:.4f}")
    return 0
