"""argparse generated from a config dataclass, with a YAML file in between (timm's two-step parser).

Precedence: dataclass defaults < `--config file.yaml` < flags given on the command line.
"""
from __future__ import annotations

import argparse
import copy
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

from cnnkit.utils import CnnkitError, suggest

# Nothing here imports torch (nor yaml, nor cnnkit.engine, which does): `cnnkit --help` builds
# its parser from this module alone, and must start in well under a second.


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each option's default shown once: appended as "(default: X)" unless the help text already
    says it; none for flags whose default is off or unset (argparse's own
    ArgumentDefaultsHelpFormatter would print "(default: None)" beside "(default: recipe)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        unset = (default is None or default is False or default is argparse.SUPPRESS
                 or (isinstance(default, (list, tuple, str)) and not default))
        said = "(default" in text or "default:" in text
        if unset or said or not action.option_strings or text is argparse.SUPPRESS:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})".lstrip()

    def _format_action(self, action):
        if action.help is None and action.option_strings:  # no help text: still its default
            action = copy.copy(action)
            action.help = self._get_help_string(action) or None
        return super()._format_action(action)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as a single line on stderr and exit code 2 (no usage dump)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _inner_type(tp):
    """`int | None` → (int, True); `int` → (int, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def parse_kv(text: str) -> dict:
    """`small_input=true,drop_rate=0.2` → {"small_input": True, "drop_rate": 0.2} (YAML scalars)."""
    import yaml  # noqa: PLC0415  (not at startup)
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _converter(base, optional: bool):
    if base is dict:
        return parse_kv
    if not optional:
        return base

    def convert(text: str):
        return None if text.lower() in ("none", "null") else base(text)
    convert.__name__ = base.__name__  # argparse names the type in "invalid int value"
    return convert


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One `--flag` per dataclass field, typed from its annotation, help from its metadata;
    a field with choices lists them (no metavar hides them) and its default shows once."""
    from cnnkit.engine.config import default_of  # noqa: PLC0415  (cnnkit.engine imports torch)
    hints = typing.get_type_hints(config_cls)
    parser.add_argument("--config", type=Path, help="YAML file of config values (flags override it)")
    for f in fields(config_cls):
        base, optional = _inner_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = default_of(f)
        help_text = f.metadata.get("help", "")
        if "(default" not in help_text:  # "(default: the data set's recipe)" says it already
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif typing.get_origin(base) is list:  # `list[str]`: --flag A B C
            parser.add_argument(flag, nargs="+", type=typing.get_args(base)[0], default=None,
                                help=help_text, metavar=f.name.upper())
        else:
            parser.add_argument(flag, type=_converter(base, optional), default=None,
                                choices=f.metadata.get("choices"), help=help_text,
                                metavar=("K=V,..." if base is dict
                                         else None if f.metadata.get("choices")
                                         else f.name.upper()))


def config_from_args(args: argparse.Namespace, config_cls):
    """Build the config: defaults, then the YAML file's values, then the flags that were given."""
    from cnnkit.engine.config import ConfigBase  # noqa: PLC0415  (cnnkit.engine imports torch)
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in fields(config_cls)}
    values = {}
    if args.config is not None:
        values = _read_yaml(args.config)
        for key, value in values.items():
            if key not in names:
                raise suggest(key, names, f"key in {args.config}")
            _check_type(key, value, hints[key], args.config)
    for name in names:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    config = config_cls(**values)
    if isinstance(config, ConfigBase):  # a resumed run applies exactly these to its saved config
        config.mark_given(values)
    return config


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=None,
                        help="train data-parallel in N processes on this machine (launches "
                             "torchrun; global batch = N × batch size)")


def flags_given(args: argparse.Namespace, config_cls) -> list[str]:
    """The config flags of this command line (so not --nproc), for each process torchrun starts."""
    argv = [] if args.config is None else ["--config", str(args.config)]
    for f in fields(config_cls):
        value, flag = getattr(args, f.name, None), "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return argv


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CnnkitError(f"config file not found: {path}")
    import yaml  # noqa: PLC0415  (not at startup)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CnnkitError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CnnkitError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _check_type(key: str, value, tp, path: Path) -> None:
    base, optional = _inner_type(tp)
    if value is None and optional:
        return
    if typing.get_origin(base) is list:  # a YAML list of the item type
        item = typing.get_args(base)[0]
        if not (isinstance(value, list) and value and all(isinstance(v, item) for v in value)):
            raise CnnkitError(f"{path}: '{key}' must be a list of {item.__name__}, got {value!r}")
        return
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise CnnkitError(f"{path}: '{key}' must be {base.__name__}, got {value!r}")


def is_tty() -> bool:
    return sys.stderr.isatty()
