"""Readers for the two file formats of the classic data sets, both strict about what they accept.

IDX (MNIST, Fashion-MNIST, KMNIST), described at http://yann.lecun.com/exdb/mnist/: a 4-byte magic
number (0, 0, type code, number of dimensions), each dimension as a big-endian int32, then the
values. CIFAR-10's python version (https://www.cs.toronto.edu/~kriz/cifar.html): a gzipped tar of
pickled dicts, each with b"data" (N, 3072) uint8 rows (1024 red, 1024 green, 1024 blue, each
32×32 row-major) and b"labels" (a list of N ints).
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnkit.utils import CnnkitError

IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only one these data sets use
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)


# --- IDX ---

def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in a gzipped IDX file of `ndim` dimensions, checked byte for byte."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise CnnkitError(f"{path} is not a readable gzip file ({err}); delete it so that it is "
                          f"downloaded again") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CnnkitError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    zero1, zero2, type_code, dims_found = raw[:4]
    if (zero1, zero2, type_code, dims_found) != (0, 0, IDX_UBYTE, ndim):
        raise CnnkitError(f"{path} has IDX magic number {raw[:4].hex()}, expected 0000"
                          f"{IDX_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimensions)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise CnnkitError(f"{path} holds {len(raw)} bytes but its header {dims} promises "
                          f"{expected}: the file is truncated or damaged")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int = 10
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """images uint8 (N, 1, H, W) and labels int64 (N,) from an IDX image file and its label file."""
    images = read_idx(images_path, ndim=3)  # (N, H, W)
    labels = read_idx(labels_path, ndim=1)  # (N,)
    if len(images) != len(labels):
        raise CnnkitError(f"{images_path.name} holds {len(images)} images but "
                          f"{labels_path.name} {len(labels)} labels; re-download both")
    if labels.size and labels.max() >= num_classes:
        raise CnnkitError(f"{labels_path} has label {labels.max()}, expected 0..{num_classes - 1}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


# --- CIFAR-10 ---

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array re-builder, whatever module holds it


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickling calls whatever global a file names, so a tampered pickle could run any code.

    CIFAR-10 batches hold only dicts, lists, ints, bytes and numpy arrays: we allow exactly the
    globals that rebuild an array (numpy's _reconstruct, ndarray, dtype) under their NumPy 1 and
    NumPy 2 module names, and `_codecs.encode`, which Python 3's protocol 2 uses to store bytes.
    Everything else (os.system, builtins.eval, ...) is refused before it is looked up.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR "
                                         f"batch") from None


def unpickle_arrays(data: bytes, what: str):
    """Load a pickle that may contain only plain containers and numpy arrays."""
    try:
        # encoding="bytes": the batches were written by Python 2, whose str keys become bytes.
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any malformed or refused pickle is the file's fault
        raise CnnkitError(f"{what} is not a valid CIFAR-10 pickle ({err})") from None


def read_cifar10(tar_path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """images uint8 (N, 3, 32, 32), labels int64 (N,) and the class names, read from the tarball
    member by member in memory (nothing is extracted to disk)."""
    tar_path = Path(tar_path)
    wanted = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (name in wanted or name == "batches.meta"):
                    members[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CnnkitError(f"{tar_path} is not a readable tar.gz ({err}); delete it so that it is "
                          f"downloaded again") from None
    missing = [n for n in (*wanted, "batches.meta") if n not in members]
    if missing:
        raise CnnkitError(f"{tar_path} lacks {', '.join(missing)}: not the CIFAR-10 python tarball")

    meta = unpickle_arrays(members["batches.meta"], f"{tar_path.name}:batches.meta")
    if not isinstance(meta, dict) or not isinstance(meta.get(b"label_names"), list):
        raise CnnkitError(f"{tar_path.name}:batches.meta has no label_names list")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    images, labels = [], []
    for name in wanted:
        batch = unpickle_arrays(members[name], f"{tar_path.name}:{name}")
        data, batch_labels = (batch.get(b"data"), batch.get(b"labels")) if isinstance(
            batch, dict) else (None, None)
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or data.shape[1] != 3 * 32 * 32 or len(batch_labels or ()) != len(data)):
            raise CnnkitError(f"{tar_path.name}:{name} is not a CIFAR-10 batch (expected uint8 "
                              f"(N, 3072) data and N labels)")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))  # (N, 3072) → (N, C, H, W)
        labels.append(torch.tensor(batch_labels, dtype=torch.int64))
    labels = torch.cat(labels)
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise CnnkitError(f"{tar_path.name} has labels outside 0..{len(classes) - 1}")
    return torch.cat(images).contiguous(), labels, classes
