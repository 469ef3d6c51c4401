"""The few generic helpers every part of cnnkit shares."""
from __future__ import annotations

import difflib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


class CnnkitError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits with code 2."""


def suggest(name: str, choices: Iterable[str], what: str) -> CnnkitError:
    """`unknown model 'resnet5'; did you mean resnet50, resnet18?` (STYLE.md habit 13)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {', '.join(choices[:12])}"
    if not close and len(choices) > 12:
        hint += ", ..."
    return CnnkitError(f"unknown {what} '{name}'{hint}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or kill while writing leaves the old file intact, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; a normal file honours the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
