"""`cnnkit convert SRC DST --from coco|voc|yolo --to coco|voc|yolo`: detection annotations from
one format to another (det_formats.py describes the three)."""
import sys
from pathlib import Path

FORMATS = ("coco", "voc", "yolo")  # det_formats.FORMATS, imported only when the command runs
_LAYOUT = {"coco": "a JSON file", "voc": "a folder of XML files", "yolo": "a folder of txt files"}


def add_arguments(parser) -> None:
    parser.add_argument("src", type=Path, help="annotations to read: " + "; ".join(
        f"{f}: {where}" for f, where in _LAYOUT.items()))
    parser.add_argument("dst", type=Path, help="where to write them (a file for coco, a folder "
                                               "for voc and yolo)")
    parser.add_argument("--from", dest="src_format", choices=FORMATS, required=True)
    parser.add_argument("--to", dest="dst_format", choices=FORMATS, required=True)
    parser.add_argument("--images", type=Path,
                        help="the image folder: YOLO needs it for the image sizes (default: the "
                             "labels folder or its sibling images/); VOC where an XML has no size")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out bad entries (and say which) instead of stopping at the "
                             "first")


def run(args) -> int:
    from cnnkit.data.det_formats import convert  # noqa: PLC0415 (pycocotools, PIL: not at startup)
    ann, notes = convert(args.src, args.src_format, args.dst, args.dst_format,
                         images=args.images, skip_bad=args.skip_bad)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for line in ann.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"{args.src} ({args.src_format}) → {args.dst} ({args.dst_format}): "
          f"{len(ann.images)} images, {ann.num_objects()} objects, "
          f"{len(ann.classes)} class{'' if len(ann.classes) == 1 else 'es'}"
          + (f", {len(ann.skipped)} entries skipped" if ann.skipped else ""))
    return 0
