"""Downloads into the cache: verified by MD5, written atomically, never half a file left behind.

A file is fetched to a temporary name beside its destination and renamed into place only after
its MD5 matches, so an interrupted or corrupted transfer can never be mistaken for the data.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from cnnkit.utils import CnnkitError, atomic_path

MIRROR_ENV = "CNNKIT_MIRROR"
_BLOCK = 1 << 20  # bytes per read and per MD5 update
_TIMEOUT_S = 60


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def resolve_url(official_base: str, filename: str, mirror: str | None = None) -> str:
    """`mirror` (else $CNNKIT_MIRROR, else the official base) + "/" + `filename`."""
    base = mirror or os.environ.get(MIRROR_ENV) or official_base
    return f"{base.rstrip('/')}/{filename}"


def fetch(url: str, dest: Path, md5: str, *, quiet: bool = False) -> Path:
    """Make `dest` hold the file at `url` with MD5 `md5`, downloading it only when needed.

    A present file with the right MD5 is kept as it is; a present file with a wrong one is
    fetched again. Any failure (HTTP error, refused connection, truncated transfer, MD5 mismatch)
    removes the partial download, any corrupt copy and the folders this call created, and raises
    a one-line CnnkitError naming the file, the URL, the expected MD5 and what was received
    instead.
    """
    dest = Path(dest)
    if dest.is_file():
        if md5_of(dest) == md5:
            return dest
        dest.unlink()  # corrupt or from another version: never served as the data
    created = _make_folder(dest.parent)
    try:
        with atomic_path(dest) as tmp:  # removed on any exception, renamed onto dest on success
            problem = _download(url, tmp, dest.name, quiet)
            if problem is None:
                received = md5_of(tmp)
                if received != md5:
                    problem = f"md5 {received} ({tmp.stat().st_size:,} bytes)"
            if problem is not None:
                raise CnnkitError(f"download of {dest.name} from {url} failed: expected md5 "
                                  f"{md5}, received {problem}; nothing was kept in "
                                  f"{dest.parent}")
    except BaseException as err:
        # Leave the disk as it was: no empty data/mnist/ in a folder the user owns.
        for folder in reversed(created):
            _remove_if_empty(folder)
        if isinstance(err, OSError):  # mkstemp or the rename in a folder we cannot write
            raise CnnkitError(f"cannot write {dest} ({err.strerror or err}); choose a writable "
                              f"--data-dir") from None
        raise
    return dest


def _make_folder(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders it created, outermost first. A folder that
    cannot be created (read-only place, a file in the way) is a one-line CnnkitError."""
    missing = [p for p in (folder, *folder.parents) if not p.is_dir()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        for made in reversed(missing):
            _remove_if_empty(made)
        raise CnnkitError(f"cannot write the data folder {folder} ({err.strerror or err}); "
                          f"choose a writable --data-dir") from None
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # refuses a folder that holds anything
    except OSError:
        pass


def _download(url: str, tmp: Path, name: str, quiet: bool) -> str | None:
    """Stream `url` into `tmp`. None on success, else a description of what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=quiet,
                      leave=False) as bar:
                while block := response.read(_BLOCK):
                    out.write(block)
                    bar.update(len(block))
            written = out.tell()
        if total is not None and written != total:
            return f"{written:,} of {total:,} bytes (truncated transfer)"
    except urllib.error.HTTPError as err:
        return f"HTTP error {err.code} {err.reason}"
    except urllib.error.URLError as err:  # refused, unknown host, timeout while connecting
        return f"no connection ({err.reason})"
    except (HTTPException, OSError) as err:  # IncompleteRead, reset or timeout mid-transfer
        return f"a broken transfer ({type(err).__name__}: {err})"
    return None


def require_file(path: Path, md5: str, url: str) -> Path:
    """The download=False path: `path` must already be there and intact."""
    if not path.is_file():
        raise CnnkitError(f"{path.name} not found in {path.parent}; load with download=True "
                          f"(the CLI downloads by default) or put the file there from {url}")
    received = md5_of(path)
    if received != md5:
        raise CnnkitError(f"{path} is corrupt (md5 {received}, expected {md5}); delete it and "
                          f"load with download=True, or copy a good one from {url}")
    return path
