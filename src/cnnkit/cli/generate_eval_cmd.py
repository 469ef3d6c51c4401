"""`cnnkit generate-eval`: FID of generated samples vs the test set in a cnnkit classifier's
feature space (LeNet: 500-d post-ReLU fc1), beside the real-vs-real floor, and conditional
accuracy."""
from pathlib import Path


from cnnkit.data import load_dataset
from cnnkit.generation import read_samples
from cnnkit.generation.fid import (check_images, conditional_accuracy, fid,
                                          load_classifier, random_subset)
from cnnkit.utils import CnnkitError


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
    if args.n < 2:
        raise CnnkitError(f"--n must be at least 2, got {args.n}")
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
    test_n = random_subset(test, n, args.seed)
    floor = fid(classifier, random_subset(train, n, args.seed + 1), test_n)
    print(f"FID floor, real {dataset} train vs test (n={n}): {floor:.3f}")
    if samples is None:
        return 0
    value = fid(classifier, samples[:n], test_n)
    print(f"FID samples vs {dataset} test (n={n}): {value:.3f}")
    print(f"ratio to the floor: {value / floor:.2f}x" if floor > 0 else "ratio: floor is 0")
    if labels is not None:
        accuracy = conditional_accuracy(classifier, samples, labels)
        print(f"conditional accuracy ({len(samples)} samples): {accuracy:.4f}")
    return 0
