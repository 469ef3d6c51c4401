"""`cnnkit summary MODEL`: a Keras/torchinfo-style table of the model's layers."""
from cnnkit.cli._args import parse_kv
from cnnkit.models import create_model, get_model_cfg
from cnnkit.models._summary import format_summary, summarize
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input shape (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--depth", type=int, default=3, help="nesting depth of the rows shown")
    parser.add_argument("--model-args", type=parse_kv, default={}, metavar="K=V,...")


def run(args) -> int:
    cfg = get_model_cfg(args.model)
    input_size = tuple(args.input_size or cfg["input_size"])
    kwargs = dict(args.model_args, in_chans=input_size[0])
    if args.num_classes:
        kwargs["num_classes"] = args.num_classes
    if cfg["fixed_input_size"]:
        kwargs.setdefault("img_size", input_size[1])
    if min(input_size) <= 0:
        raise CnnkitError(f"--input-size must be positive, got {input_size}")
    model = create_model(args.model, **kwargs)
    try:
        summary = summarize(model, input_size, depth=args.depth)
    except RuntimeError as exc:  # e.g. an input too small for the architecture
        raise CnnkitError(f"{args.model} cannot run on input {input_size}: "
                          f"{str(exc).splitlines()[0]}") from None
    print(format_summary(summary))
    return 0
