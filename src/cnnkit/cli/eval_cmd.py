"""`cnnkit eval CHECKPOINT`: loss, top-1/top-5, per-class precision/recall/F1 on a data set;
per-class IoU for segmentation; the COCO tables (pycocotools) for detection; PCK@0.2 per joint
and OKS AP for pose."""
import argparse
from dataclasses import replace
from pathlib import Path

from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (its best.pt, else "
                                           "last.pt)")
    parser.add_argument("--dataset", help="data set (default: the one it was trained on)")
    parser.add_argument("--data-dir", help="download cache or image folder (default: the run's)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: the fastest CPU mode (fp32, channels-last, bf16) whose top-1 "
                             "agrees with fp32 on ≥ 99.5%% of the evaluated images")
    parser.add_argument("--confusion", type=Path, help="also write the confusion matrix to this PNG")
    parser.add_argument("--limit", type=int, default=None,
                        help="detection and pose: judge only the first N images of the split")
    parser.add_argument("--coco-json", type=Path,
                        help="detection: also write the detections as COCO results JSON")
    parser.add_argument("--scales", type=scale_list, default=(1.0,),
                        help="bottom-up pose: the scale search, multiples of the training scale "
                             "whose maps are averaged (e.g. 0.5,1,1.5,2 as OpenPose's authors "
                             "evaluate); default 1")


def scale_list(text: str) -> tuple[float, ...]:
    """'0.5,1,1.5' → (0.5, 1.0, 1.5); a bad list becomes argparse's one-line error."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        scales = ()
    if not scales or not all(0 < s <= 4 for s in scales):
        raise argparse.ArgumentTypeError(f"'{text}': give comma-separated multiples of the "
                                         f"training scale in (0, 4], e.g. 0.75,1,1.25")
    return scales


def run(args) -> int:
    from cnnkit.data import InMemoryLoader, load_dataset  # noqa: PLC0415  (torch: not for --help)
    from cnnkit.inference.load import load_model  # noqa: PLC0415
    from cnnkit.inference.modes import model_for_precision  # noqa: PLC0415
    from cnnkit.train.metrics import evaluate  # noqa: PLC0415

    loaded = load_model(args.checkpoint, task=("classify", "segment", "detect", "pose"),
                        command="`cnnkit eval`")
    if loaded.task == "segment":
        return _segmentation(args, loaded)
    if loaded.task == "detect":
        return _detection(args, loaded)
    if loaded.task == "pose":
        return _pose(args, loaded)
    config = loaded.config
    dataset = args.dataset or config["dataset"]
    channels, height, _ = loaded.image_shape
    data = load_dataset(dataset, args.split, data_dir=Path(args.data_dir or config["data_dir"])
                        .expanduser(), mirror=config.get("mirror"), image_size=height,
                        channels=channels, quiet=True)
    classes = loaded.classes
    if len(data.classes) != len(classes):
        raise CnnkitError(f"{loaded.path} predicts {len(classes)} classes but {dataset} has "
                          f"{len(data.classes)}")
    # The model expects the normalisation it was trained with, whatever data it now sees.
    data = replace(data, mean=loaded.mean, std=loaded.std)
    loader = InMemoryLoader(data, args.batch_size, shuffle=False)
    runner, mode_line = model_for_precision(loaded.model, args.precision, loader,
                                            f"{len(data)} {dataset} {args.split} images",
                                            batch_size=args.batch_size,
                                            input_size=loaded.image_shape)
    print(mode_line)
    result, _ = evaluate(runner, loader, len(classes))  # the runner applies its own precision
    print(f"{loaded.name} on {dataset} {args.split} ({result.count} images): "
          f"loss {result.loss:.4f}  top-1 {result.top1:.4f}  top-5 {result.top5:.4f}")
    print(result.per_class_table(classes))
    if args.confusion:
        from cnnkit.viz import plot_confusion  # noqa: PLC0415
        print(f"confusion matrix: {plot_confusion(result.confusion, classes, args.confusion)}")
    return 0


def _segmentation(args, loaded) -> int:
    """Pixel accuracy, per-class IoU and Dice of whole images (ISBI: the challenge's scores)."""
    from cnnkit.inference.segment import evaluate_dataset  # noqa: PLC0415
    config = loaded.config
    dataset = args.dataset or config["dataset"]
    scores, challenge, count = evaluate_dataset(
        loaded, dataset, args.split, Path(args.data_dir or config["data_dir"]).expanduser())
    print(f"{loaded.name} on {dataset} {args.split} ({count} images, whole): pixel accuracy "
          f"{scores.pixel_accuracy:.4f}  mIoU {scores.miou:.4f}  Dice {scores.mean_dice:.4f}")
    print(scores.table(loaded.classes))
    if challenge:
        print("ISBI scores: " + "  ".join(f"{k} {v:.4f}" for k, v in challenge.items()))
    return 0


def _limited_split(args, loaded):
    """(data set name, the split it was asked for: its first --limit images, all without)."""
    import torch  # noqa: PLC0415

    from cnnkit.data import load_dataset  # noqa: PLC0415
    config = loaded.config
    dataset = args.dataset or config["dataset"]
    data = load_dataset(dataset, args.split, quiet=True,
                        data_dir=Path(args.data_dir or config["data_dir"]).expanduser())
    if args.limit is not None:
        if args.limit < 1:
            raise CnnkitError(f"--limit must be at least 1 image, got {args.limit}")
        data = data.subset(torch.arange(min(args.limit, len(data))))
    return dataset, data


def _detection(args, loaded) -> int:
    """COCO AP/AR (pycocotools) for every output the detector has, and per-class AP."""
    from cnnkit.train.coco_eval import predictions_to_coco, write_coco_json  # noqa: PLC0415
    from cnnkit.train.detect import IOU_TYPES, evaluate_detection  # noqa: PLC0415
    dataset, data = _limited_split(args, loaded)
    if list(data.classes) != list(loaded.classes):
        raise CnnkitError(f"{loaded.path} names the classes {loaded.classes[:5]}, {dataset} "
                          f"{list(data.classes)[:5]}: not the data it was trained for")
    iou_types = IOU_TYPES[loaded.model.task]
    precision = "fp32" if args.precision == "auto" else args.precision
    scores, predictions = evaluate_detection(loaded.model, data, precision=precision,
                                             iou_types=iou_types, keep_predictions=True)
    print(f"{loaded.name} on {dataset} {args.split} ({len(data)} images, {precision}): " +
          "  ".join(f"{t} AP {scores.stats[t]['AP']:.4f}" for t in iou_types))
    print(scores.table())
    if args.coco_json:
        ids = [int(t["image_id"]) for t in data.targets]
        write_coco_json(args.coco_json, predictions_to_coco(predictions, ids,
                                                            list(data.category_ids),
                                                            iou_types=iou_types))
        print(f"detections: {args.coco_json}")
    return 0


def _pose(args, loaded) -> int:
    """PCK@0.2 per body part (the LSP table) and OKS AP; bottom-up also lsp-multi assembly."""
    from cnnkit.train.pose import (  # noqa: PLC0415
        evaluate_multi, evaluate_pose, multi_line, pck_table)
    dataset, data = _limited_split(args, loaded)
    if list(data.keypoint_names) != list(loaded.classes):
        raise CnnkitError(f"{loaded.path} predicts the joints {loaded.classes[:4]}..., "
                          f"{dataset} has {list(data.keypoint_names)[:4]}...")
    precision = "fp32" if args.precision == "auto" else args.precision
    if args.scales != (1.0,) and not loaded.spec.get("bottom_up"):
        raise CnnkitError("--scales is for bottom-up pose models (OpenPose); a top-down model "
                          "sees each person's box at its own input size")
    scores = evaluate_pose(loaded.model, data, loaded.spec, precision=precision, with_oks=True,
                           scales=args.scales)
    searched = "" if args.scales == (1.0,) else f", scales {','.join(map(str, args.scales))}"
    print(f"{loaded.name} on {dataset} {args.split} ({len(data)} images, {precision}{searched}): "
          f"PCK@0.2 {scores['pck']:.4f}  OKS AP {scores['oks_ap']:.4f}  AP50 "
          f"{scores['oks_ap50']:.4f}")
    print(pck_table(scores["pck_per_joint"], data.keypoint_names))
    print(f"people with at least half their joints within PCK@0.2: {scores['half_right']:.1%} "
          f"(on lsp-multi a skeleton must pass this to find its person)")
    if loaded.spec.get("bottom_up"):
        multi = evaluate_multi(loaded.model, data, precision=precision, scales=args.scales,
                               flip_index=loaded.spec["flip_index"])
        print(multi_line(multi))
    return 0
