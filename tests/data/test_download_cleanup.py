"""A failed download leaves no folder behind that it created (nor anything in a data folder the
user owns), and a data folder it cannot write to is a one-line error. Real HTTP on 127.0.0.1."""
from __future__ import annotations

import pytest

from cnnkit.data import load_dataset
from cnnkit.data.download import fetch
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS
from tests.data.conftest import HalfBodyHandler

MNIST = DATASETS / "mnist"
LABELS = "t10k-labels-idx1-ubyte.gz"
LABELS_MD5 = "ec29112dd5afa0611ce80d1b7f02629c"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_failed_fetch_removes_the_folders_it_created(tmp_path, serve):
    url, _ = serve(tmp_path / "empty_site")  # serves nothing: every request is a 404
    (tmp_path / "empty_site").mkdir()
    dest = tmp_path / "cache" / "deep" / "mnist" / LABELS
    with pytest.raises(CnnkitError, match="HTTP error 404"):
        fetch(f"{url}/{LABELS}", dest, LABELS_MD5, quiet=True)
    assert not (tmp_path / "cache").exists()


def test_cut_transfer_into_a_users_data_folder_leaves_it_as_it_was(tmp_path, serve):
    data = tmp_path / "my_data"  # the user's own folder, with their files in it
    (data / "photos").mkdir(parents=True)
    (data / "photos" / "a.txt").write_text("mine")
    before = _tree(data)
    url, server = serve(MNIST, HalfBodyHandler)
    with pytest.raises(CnnkitError, match="truncated transfer"):
        load_dataset("mnist", "test", data_dir=data, mirror=url, quiet=True)
    assert server.requests and _tree(data) == before  # no empty data/mnist/ left


def test_a_partly_filled_folder_is_kept(tmp_path, serve):
    # The first file arrives, the second fails: the verified first file (and so its folder) stays.
    site = tmp_path / "site"
    site.mkdir()
    (site / "t10k-images-idx3-ubyte.gz").symlink_to(MNIST / "t10k-images-idx3-ubyte.gz")
    url, _ = serve(site)  # has the images but not the labels
    with pytest.raises(CnnkitError, match="labels.*HTTP error 404"):
        load_dataset("mnist", "test", data_dir=tmp_path / "cache", mirror=url, quiet=True)
    assert _tree(tmp_path / "cache") == ["mnist", "mnist/t10k-images-idx3-ubyte.gz"]


def test_unwritable_data_folder_is_one_line(tmp_path, serve):
    url, _ = serve(MNIST)
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(CnnkitError, match=r"cannot write .*data") as err:
        fetch(f"{url}/{LABELS}", blocker / "mnist" / LABELS, LABELS_MD5, quiet=True)
    assert "\n" not in str(err.value)
    assert blocker.read_text().startswith("a file")
