"""`cnnkit visualize filters|activations|saliency|receptive-field`: looking inside a network."""
from pathlib import Path


from cnnkit.cli._args import OneLineParser
from cnnkit.data.imagefolder import decode_image
from cnnkit.inference.load import load_model
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    p = sub.add_parser("filters", help="a conv layer's kernels as an image grid")
    p.add_argument("checkpoint")
    p.add_argument("--layer", help="conv layer name (default: the first)")
    p.add_argument("-o", "--output", type=Path, default=Path("filters.png"))
    p = sub.add_parser("activations", help="feature maps after each conv/pool stage")
    p.add_argument("checkpoint")
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("activations.png"))
    p = sub.add_parser("saliency", help="gradient saliency and Grad-CAM over the input")
    p.add_argument("checkpoint")
    p.add_argument("image", type=Path)
    p.add_argument("--target", type=int, help="class index to explain (default: the predicted)")
    p.add_argument("--layer", help="module whose output maps Grad-CAM weighs (default: the last "
                   "conv layer's rectified maps, e.g. relu2 for LeNet)")
    p.add_argument("-o", "--output", type=Path, default=Path("saliency.png"))
    p = sub.add_parser("receptive-field", help="per-layer receptive field and jump of a model")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--model-args", default="", help="model keywords, e.g. small_input=true")


def _model_and_input(args):
    loaded = load_model(args.checkpoint, command="`cnnkit visualize`")
    if not hasattr(args, "image"):
        return loaded.model, loaded, None, None
    channels, height, _ = loaded.image_shape  # square images
    image = decode_image(args.image, channels, height)  # (C, H, W) uint8
    return loaded.model, loaded, image, loaded.normalise(image[None])  # x: (1, C, H, W)


def run(args) -> int:
    if args.what == "receptive-field":
        return _receptive_field(args)
    from cnnkit.viz import inside  # noqa: PLC0415  (matplotlib only when drawing)
    model, loaded, image, x = _model_and_input(args)
    if args.what == "filters":
        out = inside.plot_filters(model, args.output, layer=args.layer)
    elif args.what == "activations":
        out = inside.plot_feature_maps(inside.feature_maps(model, x), image, args.output)
    else:
        classes = loaded.classes
        if args.target is not None and not 0 <= args.target < len(classes):
            raise CnnkitError(f"--target must be a class index in 0..{len(classes) - 1}")
        sal, target = inside.saliency(model, x, args.target)
        cam, _ = inside.grad_cam(model, x, target, layer=args.layer)
        # both explain the pre-softmax score of the class (LeNet: the input of its LogSoftmax)
        out = inside.plot_heatmaps(image, sal, cam, f"explaining class '{classes[target]}' "
                                   "(its pre-softmax score)", args.output)
    print(f"wrote {out}")
    return 0


def _receptive_field(args) -> int:
    from cnnkit.cli._args import parse_kv  # noqa: PLC0415
    from cnnkit.models import create_model, get_model_cfg  # noqa: PLC0415
    from cnnkit.ops.receptive_field import format_receptive_fields, receptive_fields  # noqa: PLC0415
    cfg = get_model_cfg(args.model)
    input_size = tuple(args.input_size or cfg["input_size"])
    kwargs = dict(parse_kv(args.model_args), in_chans=input_size[0])
    if cfg["fixed_input_size"]:
        kwargs.setdefault("img_size", input_size[1])
    model = create_model(args.model, **kwargs)
    print(format_receptive_fields(receptive_fields(model, input_size)))
    return 0
