"""CIFAR-10: a small tarball in the official python-pickle format, built from real CIFAR images."""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnkit.data import _registry, datasets, load_dataset
from cnnkit.data.download import md5_of
from cnnkit.data.formats import read_cifar10
from cnnkit.utils import CnnkitError
from tests.data.conftest import CIFAR_CLASSES, unzip_cifar_test

PER_CLASS, TEST_PER_CLASS = 20, 5  # 15 of each class go to the five training batches


def _py2_style_pickle(obj) -> bytes:
    """Protocol 2 with NumPy 1's module name for _reconstruct, as the official batches have it."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _add(tar, name: str, data: bytes):
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _build_tarball(path, images, labels, batches=None):
    """images uint8 (N, 3, 32, 32) → cifar-10-python.tar.gz layout; batches: name → index list."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "batches.meta", _py2_style_pickle(
            {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}))
        for name, index in batches.items():
            rows = images[index].reshape(len(index), 3072)  # (n, C, H, W) → (n, 3072), R then G, B
            _add(tar, name, _py2_style_pickle({b"batch_label": name.encode(), b"data": rows,
                                               b"labels": [int(labels[i]) for i in index]}))
        _add(tar, "readme.html", b"<html></html>")
    return path


@pytest.fixture(scope="module")
def cifar_real(tmp_path_factory):
    """20 real test images per class, decoded from ../shared/datasets/cifar10-jpg/test.zip."""
    folder = tmp_path_factory.mktemp("jpg")
    files = unzip_cifar_test(folder, PER_CLASS)
    images, labels, is_test = [], [], []
    for label, cls in enumerate(CIFAR_CLASSES):
        for k, path in enumerate(files[cls]):
            images.append(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
            is_test.append(k >= PER_CLASS - TEST_PER_CLASS)
    images, labels, is_test = np.stack(images), np.array(labels), np.array(is_test)
    train_index = np.flatnonzero(~is_test)
    test_index = np.flatnonzero(is_test)
    batches = {f"data_batch_{i + 1}": train_index[i::5].tolist() for i in range(5)}
    batches["test_batch"] = test_index.tolist()
    tar = _build_tarball(tmp_path_factory.mktemp("tar") / "cifar-10-python.tar.gz", images,
                         labels, batches)
    order = np.concatenate([batches[f"data_batch_{i + 1}"] for i in range(5)])
    return tar, images, labels, order, test_index


def test_read_official_layout(cifar_real):
    tar, images, labels, train_order, test_index = cifar_real
    x, y, classes = read_cifar10(tar, "train")
    assert classes == CIFAR_CLASSES
    assert x.dtype == torch.uint8 and x.shape == (150, 3, 32, 32) and x.is_contiguous()
    assert np.array_equal(x.numpy(), images[train_order])
    assert y.tolist() == labels[train_order].tolist()
    x, y, _ = read_cifar10(tar, "test")
    assert np.array_equal(x.numpy(), images[test_index]) and torch.bincount(y).tolist() == [5] * 10


def test_load_through_mirror_with_conversions(cifar_real, tmp_path, serve, monkeypatch):
    tar = cifar_real[0]
    # The official MD5 cannot match a home-made tarball: register this one's instead.
    entry = dataclasses.replace(datasets.get_dataset_info("cifar10"), files={tar.name: md5_of(tar)})
    monkeypatch.setitem(_registry._DATASETS, "cifar10", entry)
    url, server = serve(tar.parent)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, mirror=url, quiet=True)
    assert ds.hflip_ok and ds.classes == CIFAR_CLASSES and ds.name == "cifar10"
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.images.shape == (50, 3, 32, 32)

    grey = load_dataset("cifar10", "test", data_dir=tmp_path, image_size=20, channels=1)
    assert server.requests == ["/cifar-10-python.tar.gz"]  # the second load used the cache
    # Oracle: PIL's own RGB → L conversion, then PIL's bilinear resize (antialiased when
    # shrinking): cnnkit's tensor path agrees within one grey level.
    for i in (0, 17, 49):
        rgb = Image.fromarray(ds.images[i].permute(1, 2, 0).numpy())
        expected = np.asarray(rgb.convert("L").resize((20, 20), Image.BILINEAR)).astype(int)
        assert np.abs(grey.images[i, 0].numpy().astype(int) - expected).max() <= 2
    assert grey.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)
    up = load_dataset("cifar10", "test", data_dir=tmp_path, image_size=40, download=False)
    reference = F.interpolate(ds.images.float(), size=(40, 40), mode="bilinear",
                              antialias=True, align_corners=False).round().to(torch.uint8)
    assert up.images.equal(reference)


def test_pickles_that_run_code_are_refused(cifar_real, tmp_path):
    _, images, labels, _, _ = cifar_real
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    tar = _build_tarball(tmp_path / "evil.tar.gz", images, labels, {"test_batch": [0, 1]})
    with tarfile.open(tmp_path / "evil2.tar.gz", "w:gz") as t:
        _add(t, "batches.meta", pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2))
        _add(t, "test_batch", pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(CnnkitError, match=r"evil2.tar.gz:test_batch is not a valid CIFAR-10 "
                                          r"pickle \(global '(posix|os).system' is not allowed"):
        read_cifar10(tmp_path / "evil2.tar.gz", "test")
    assert not marker.exists()
    assert read_cifar10(tar, "test")[0].shape == (2, 3, 32, 32)  # the honest one still loads


def test_damaged_tarballs(cifar_real, tmp_path):
    _, images, labels, _, _ = cifar_real
    partial = _build_tarball(tmp_path / "partial.tar.gz", images, labels, {"test_batch": [0]})
    with pytest.raises(CnnkitError, match="lacks data_batch_1, data_batch_2"):
        read_cifar10(partial, "train")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(partial.read_bytes()[:200])
    with pytest.raises(CnnkitError, match="cut.tar.gz is not a readable tar.gz"):
        read_cifar10(cut, "test")
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as t:
        _add(t, "batches.meta", _py2_style_pickle({b"label_names": [b"a"] * 10}))
        _add(t, "test_batch", _py2_style_pickle({b"data": images[:2].reshape(2, 3, 1024),
                                                 b"labels": [0, 1]}))
    with pytest.raises(CnnkitError, match="wrong.tar.gz:test_batch is not a CIFAR-10 batch"):
        read_cifar10(wrong, "test")
