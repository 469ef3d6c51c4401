"""`cnnkit predict CHECKPOINT IMAGE...`: the top-k classes of each image, with probabilities;
for a segmentation checkpoint a mask and an overlay per image, for a detector the objects found
and a drawing of them (also from a torchvision COCO weight file, with `--model NAME`), for a pose
network the people's joints and their skeletons.

A file that cannot be read is reported on stderr (one line each); the others are still
predicted, and the command then exits 2."""
import sys
from pathlib import Path

import torch

from cnnkit.data.imagefolder import UnreadableImage, decode_image, read_pixels
from cnnkit.inference.load import load_model
from cnnkit.inference.modes import checkpoint_test_images, model_for_precision

AUTO_TEST_IMAGES = 256  # test images that --precision auto checks agreement on, with the given ones


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (its best.pt, else "
                                           "last.pt)")
    parser.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files, any size or mode")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: the fastest CPU mode whose top-1 agrees with fp32 on ≥ 99.5%% "
                             f"of the given images plus up to {AUTO_TEST_IMAGES} test images")
    parser.add_argument("--out-dir", type=Path, default=Path("."),
                        help="segmentation: where <image>_mask.png and <image>_overlay.png go; "
                             "detection: <image>_detections.png (default: the current folder)")
    parser.add_argument("--cells", action="store_true",
                        help="two-class segmentation (membrane, cell): also write "
                             "<image>_cells.png, a 16-bit labeling of the cells by a seeded "
                             "watershed of the cell probability (0: one-pixel membrane lines)")
    parser.add_argument("--model", default=None,
                        help="detection: CHECKPOINT is a plain state_dict of this registered "
                             "detector, e.g. torchvision's COCO weights for "
                             "fasterrcnn_resnet50_fpn (labels: the COCO category names)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="detection: report and draw objects scoring at least this "
                             "(default: the model's, 0.25 for YOLO, else 0.5)")
    parser.add_argument("--save-json", type=Path, default=None, metavar="FILE",
                        help="detection: also write the objects as COCO results JSON "
                             "(image_id = the image's position among the given files, from 1)")
    parser.add_argument("--save-txt", type=Path, default=None, metavar="DIR",
                        help="detection: also write DIR/<image>.txt, YOLO lines `class cx cy w "
                             "h score` normalised by the image's size")


def run(args) -> int:
    if args.model:
        from cnnkit.inference.detect import load_reference_detector  # noqa: PLC0415
        loaded = load_reference_detector(args.checkpoint, args.model)
        return _detection(args, loaded, _readable(args.images))
    loaded = load_model(args.checkpoint, task=("classify", "segment", "detect", "pose"),
                        command="`cnnkit predict`")
    if loaded.task == "segment":
        return _segmentation(args, loaded, _readable(args.images))
    if loaded.task == "detect":
        return _detection(args, loaded, _readable(args.images))
    if loaded.task == "pose":
        return _pose(args, loaded, _readable(args.images))
    channels, height, _ = loaded.image_shape  # square images
    # A model trained on an image folder saw the evaluation crop (shorter side, then centre);
    # the fixed-size sets (MNIST, CIFAR) were square already, so any photo is squeezed to them.
    crop = loaded.config.get("dataset") == "imagefolder"
    paths, decoded = [], []
    for path in args.images:
        try:
            decoded.append(decode_image(path, channels, height, keep_aspect=crop))
            paths.append(path)
        except UnreadableImage as err:
            _report(err)
    if not paths:
        return 2
    images = torch.stack(decoded)  # (N, C, H, W) uint8
    x = loaded.normalise(images)
    check, what = x, f"{len(x)} given image{'s' * (len(x) != 1)}"
    if args.precision == "auto":  # the data set's own images, where on disk, make the check real
        found = checkpoint_test_images(loaded, AUTO_TEST_IMAGES)
        if found is not None:
            check, what = torch.cat([x, found[0]]), f"{what} + {found[1]}"
    runner, mode_line = model_for_precision(loaded.model, args.precision, check, what)
    print(mode_line)
    probs = runner(x).softmax(1)
    k = min(args.topk, probs.shape[1])
    top = probs.topk(k, dim=1)
    for path, p, idx in zip(paths, top.values, top.indices):
        print(path)
        for prob, cls in zip(p.tolist(), idx.tolist()):
            print(f"  {loaded.classes[cls]:>16}  {100 * prob:6.2f}%")
    return 0 if len(paths) == len(args.images) else 2


def _report(err: Exception) -> None:
    print(f"cnnkit predict: error: {err}", file=sys.stderr, flush=True)


def _readable(paths: list[Path]) -> list[Path]:
    """The files that decode, each other one reported on stderr. The segmentation and
    detection paths decode them again (a second decode costs less than the model)."""
    good = []
    for path in paths:
        try:
            read_pixels(path)
            good.append(path)
        except UnreadableImage as err:
            _report(err)
    return good


def _segmentation(args, loaded, paths: list[Path]) -> int:
    """A mask PNG (class index per pixel) and an overlay PNG per image, at its own size."""
    from cnnkit.inference.segment import segment_files  # noqa: PLC0415
    written = segment_files(loaded, paths, args.out_dir, cells=args.cells)
    for path, (mask, over, fractions, cells) in zip(paths, written):
        shares = ", ".join(f"{name} {100 * f:.1f}%" for name, f in
                           zip(loaded.classes, fractions.tolist()) if f > 0)
        print(f"{path}: {mask}, {over}{f', {cells}' if cells else ''} ({shares})")
    return 0 if len(paths) == len(args.images) else 2


def _detection(args, loaded, paths: list[Path]) -> int:
    """Each image's objects (class, score, box in its pixels) and a drawing of them."""
    from cnnkit.inference.detect import detect_files  # noqa: PLC0415
    from cnnkit.viz.detection import shown_score  # noqa: PLC0415
    if not paths:
        return 2
    if args.score_threshold is None:
        args.score_threshold = shown_score(loaded.model)
    results = detect_files(loaded, paths, args.out_dir, score_threshold=args.score_threshold,
                           save_json=args.save_json, save_txt=args.save_txt)
    for path, (figure, found) in zip(paths, results):
        print(f"{path}: {len(found['boxes'])} object{'s' * (len(found['boxes']) != 1)} "
              f"(score ≥ {args.score_threshold}), drawn in {figure}")
        for box, label, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                     found["scores"].tolist()):
            corners = ", ".join(f"{v:.0f}" for v in box)
            print(f"  {loaded.classes[label - 1]:>16}  {score:.3f}  [{corners}]")
    for what, where in (("COCO results", args.save_json), ("YOLO txt files", args.save_txt)):
        if where is not None:
            print(f"{what}: {where}")
    return 0 if len(paths) == len(args.images) else 2


def _pose(args, loaded, paths: list[Path]) -> int:
    """Each image's people (joints in its pixels) and a drawing of their skeletons."""
    from cnnkit.inference.pose import pose_files  # noqa: PLC0415
    for path, (figure, people) in zip(paths, pose_files(loaded, paths, args.out_dir)):
        print(f"{path}: {len(people)} {'person' if len(people) == 1 else 'people'}, drawn in "
              f"{figure}")
        for k, joints in enumerate(people):
            found = ", ".join(f"{name} ({x:.0f}, {y:.0f})" for name, (x, y) in
                              zip(loaded.classes, joints.tolist()) if x == x)
            print(f"  person {k + 1}: {found}")
    return 0 if len(paths) == len(args.images) else 2
