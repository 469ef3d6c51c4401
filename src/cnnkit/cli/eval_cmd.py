"""`cnnkit eval CHECKPOINT`: loss, top-1/top-5, per-class precision/recall/F1 on a data set."""
from dataclasses import replace
from pathlib import Path

from cnnkit.data import InMemoryLoader, load_dataset
from cnnkit.train.checkpoint import load_checkpoint, model_from_checkpoint
from cnnkit.train.inference import model_for_precision
from cnnkit.train.metrics import evaluate
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its best.pt)")
    parser.add_argument("--dataset", help="data set (default: the one it was trained on)")
    parser.add_argument("--data-dir", help="download cache or image folder (default: the run's)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: the fastest CPU mode (fp32, channels-last, bf16) whose top-1 "
                             "agrees with fp32 on ≥ 99.5%% of the evaluated images")
    parser.add_argument("--confusion", type=Path, help="also write the confusion matrix to this PNG")


def resolve_checkpoint(path: str) -> Path:
    path = Path(path)
    if path.is_dir() and (path / "best.pt").is_file():
        return path / "best.pt"
    return path


def run(args) -> int:
    ckpt_path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    config = ckpt["config"]
    dataset = args.dataset or config["dataset"]
    channels, height, _ = ckpt["image_size"]
    data = load_dataset(dataset, args.split, data_dir=Path(args.data_dir or config["data_dir"])
                        .expanduser(), mirror=config.get("mirror"), image_size=height,
                        channels=channels, quiet=True)
    classes = ckpt["classes"]
    if len(data.classes) != len(classes):
        raise CnnkitError(f"{ckpt_path} predicts {len(classes)} classes but {dataset} has "
                          f"{len(data.classes)}")
    # The model expects the normalisation it was trained with, whatever data it now sees.
    data = replace(data, mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]))
    loader = InMemoryLoader(data, args.batch_size, shuffle=False)
    runner, mode_line = model_for_precision(model, args.precision, loader,
                                            f"{len(data)} {dataset} {args.split} images")
    print(mode_line)
    result, _ = evaluate(runner, loader, len(classes))  # the runner applies its own precision
    print(f"{ckpt['model_name']} on {dataset} {args.split} ({result.count} images): "
          f"loss {result.loss:.4f}  top-1 {result.top1:.4f}  top-5 {result.top5:.4f}")
    print(result.per_class_table(classes))
    if args.confusion:
        from cnnkit.viz import plot_confusion  # noqa: PLC0415
        print(f"confusion matrix: {plot_confusion(result.confusion, classes, args.confusion)}")
    return 0
