"""argparse generated from a config dataclass, with a YAML file in between (timm's two-step parser).

Precedence: dataclass defaults < `--config file.yaml` < flags given on the command line.
"""
from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

import yaml

from cnnkit.engine.config import ConfigBase, default_of
from cnnkit.utils import CnnkitError, suggest


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as a single line on stderr and exit code 2 (no usage dump)."""

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
    """One `--flag` per dataclass field, typed from its annotation, help from its metadata."""
    hints = typing.get_type_hints(config_cls)
    parser.add_argument("--config", type=Path, help="YAML file of config values (flags override it)")
    for f in fields(config_cls):
        base, optional = _inner_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = default_of(f)
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, type=_converter(base, optional), default=None,
                                choices=f.metadata.get("choices"), help=help_text,
                                metavar=f.name.upper() if base is not dict else "K=V,...")


def config_from_args(args: argparse.Namespace, config_cls):
    """Build the config: defaults, then the YAML file's values, then the flags that were given."""
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


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CnnkitError(f"config file not found: {path}")
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
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise CnnkitError(f"{path}: '{key}' must be {base.__name__}, got {value!r}")


def is_tty() -> bool:
    return sys.stderr.isatty()
