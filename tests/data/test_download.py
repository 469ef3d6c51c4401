"""Downloads from a real HTTP server on 127.0.0.1 serving the real MNIST files; IDX parsing."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import socket

import pytest

from cnnkit.data import _registry, datasets, load_dataset
from cnnkit.data.array_dataset import channel_stats
from cnnkit.data.download import fetch, md5_of
from cnnkit.data.formats import read_idx
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS
from tests.data.conftest import HalfBodyHandler

MNIST = DATASETS / "mnist"
# From ../shared/datasets/README.md (decoded from the official files).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
LABELS = "t10k-labels-idx1-ubyte.gz"
LABELS_MD5 = "ec29112dd5afa0611ce80d1b7f02629c"


def test_mnist_through_mirror_then_from_cache(tmp_path, serve):
    url, server = serve(MNIST)
    train = load_dataset("mnist", "train", data_dir=tmp_path, mirror=url, quiet=True)
    test = load_dataset("mnist", "test", data_dir=tmp_path, mirror=url, quiet=True)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts() == TRAIN_COUNTS and test.class_counts() == TEST_COUNTS
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(
        line.split()[1] for line in (MNIST / "MD5SUMS").read_text().splitlines())
    # The published normalisation constants match the decoded training pixels.
    (mean,), (std,) = channel_stats(train.images)
    assert train.mean == (0.1307,) and train.std == (0.3081,) and not train.hflip_ok
    assert mean == pytest.approx(0.1307, abs=5e-5) and std == pytest.approx(0.3081, abs=5e-5)

    served = len(server.requests)
    assert served == 4
    again = load_dataset("mnist", "test", data_dir=tmp_path, mirror=url, quiet=True)
    offline = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert len(server.requests) == served  # verified from the cache, not fetched again
    assert again.images.equal(test.images) and offline.labels.equal(test.labels)


def test_mirror_from_environment(tmp_path, serve, monkeypatch):
    url, server = serve(MNIST)
    monkeypatch.setenv("CNNKIT_MIRROR", url + "/")
    test = load_dataset("mnist", "test", data_dir=tmp_path, quiet=True)
    assert test.class_counts() == TEST_COUNTS
    assert sorted(server.requests) == ["/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]


def test_statistics_computed_where_none_are_published(tmp_path, serve, monkeypatch):
    # kmnist has no trusted constants: its training file's statistics are used, for both splits.
    # Served here are MNIST's files under kmnist's name, so the expected values are MNIST's.
    mnist_files = datasets.get_dataset_info("mnist").files
    entry = dataclasses.replace(datasets.get_dataset_info("kmnist"), files=mnist_files)
    monkeypatch.setitem(_registry._DATASETS, "kmnist", entry)
    url, server = serve(MNIST)
    test = load_dataset("kmnist", "test", data_dir=tmp_path, mirror=url, quiet=True)
    assert test.classes[:3] == ["o", "ki", "su"] and test.class_counts() == TEST_COUNTS
    assert "/train-images-idx3-ubyte.gz" in server.requests
    assert test.mean[0] == pytest.approx(0.1307, abs=5e-5)
    assert test.std[0] == pytest.approx(0.3081, abs=5e-5)


def test_download_false_says_where_it_looked(tmp_path):
    with pytest.raises(CnnkitError, match="not found in .*mnist.*download=True"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_corrupt_cached_file_is_fetched_again(tmp_path, serve):
    url, server = serve(MNIST)
    dest = tmp_path / LABELS
    dest.write_bytes(b"not the labels")
    assert fetch(f"{url}/{LABELS}", dest, LABELS_MD5, quiet=True) == dest
    assert md5_of(dest) == LABELS_MD5 and server.requests == [f"/{LABELS}"]


def _assert_fails_cleanly(url, cache, md5, match):
    with pytest.raises(CnnkitError, match=match) as err:
        fetch(url, cache / LABELS, md5, quiet=True)
    message = str(err.value)
    assert "\n" not in message and LABELS in message and url in message and md5 in message
    assert list(cache.iterdir()) == []  # neither the partial file nor a temporary one remains
    return message


@pytest.mark.parametrize("damage", ["one_byte", "truncated"])
def test_tampered_or_truncated_copy_is_rejected(tmp_path, serve, damage):
    served_dir, cache = tmp_path / "served", tmp_path / "cache"
    served_dir.mkdir()
    cache.mkdir()
    data = bytearray((MNIST / LABELS).read_bytes())
    if damage == "one_byte":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    (served_dir / LABELS).write_bytes(bytes(data))
    url, _ = serve(served_dir)
    received = hashlib.md5(bytes(data)).hexdigest()
    message = _assert_fails_cleanly(f"{url}/{LABELS}", cache, LABELS_MD5, "expected md5")
    assert f"md5 {received}" in message


def test_transfer_cut_short_is_rejected(tmp_path, serve):
    url, _ = serve(MNIST, HalfBodyHandler)
    (tmp_path / "cache").mkdir()
    _assert_fails_cleanly(f"{url}/{LABELS}", tmp_path / "cache", LABELS_MD5,
                          "truncated|broken transfer")


def test_http_error_and_refused_connection(tmp_path, serve):
    (tmp_path / "empty").mkdir()
    (tmp_path / "cache").mkdir()
    url, _ = serve(tmp_path / "empty")
    _assert_fails_cleanly(f"{url}/{LABELS}", tmp_path / "cache", LABELS_MD5, "HTTP error 404")
    with socket.socket() as sock:  # a port that nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _assert_fails_cleanly(f"http://127.0.0.1:{port}/{LABELS}", tmp_path / "cache", LABELS_MD5,
                          "no connection")


# --- strict IDX parsing ---

def _write_idx(path, raw: bytes):
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return path


def test_idx_parsing_is_strict(tmp_path):
    raw = gzip.decompress((MNIST / LABELS).read_bytes())
    assert read_idx(_write_idx(tmp_path / "ok.gz", raw), ndim=1).shape == (10000,)
    cases = {
        "magic.gz": (b"\x00\x00\x08\x03" + raw[4:], "magic number 00000803"),
        "short.gz": (raw[:-1], "truncated or damaged"),
        "long.gz": (raw + b"\x00", "truncated or damaged"),
        "header.gz": (raw[:6], "too short"),
    }
    for name, (data, match) in cases.items():
        with pytest.raises(CnnkitError, match=f"{name}.*{match}"):
            read_idx(_write_idx(tmp_path / name, data), ndim=1)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(raw)
    with pytest.raises(CnnkitError, match="plain.gz is not a readable gzip"):
        read_idx(not_gzip, ndim=1)
    # The images file of the wrong kind (3 dims) is refused as a labels file.
    shutil.copy(MNIST / "t10k-images-idx3-ubyte.gz", tmp_path / "images.gz")
    with pytest.raises(CnnkitError, match="images.gz has IDX magic number 00000803"):
        read_idx(tmp_path / "images.gz", ndim=1)
