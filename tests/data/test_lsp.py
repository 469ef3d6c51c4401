"""Leeds Sports Pose on the real files in ../shared/datasets/lsp, and bad joint files."""
import csv

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.detection import flip_index_from_names
from cnnkit.data.lsp import (FLIP_INDEX, FLIP_PAIRS, JOINT_NAMES, SKELETON, TORSO, load_lsp,
                             read_joints, resolve_skeleton)
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

LSP = DATASETS / "lsp"


@pytest.fixture(scope="module")
def splits():
    return load_lsp(LSP, "train"), load_lsp(LSP, "test")


def test_standard_split_of_2000_images(splits):
    train, test = splits
    assert (len(train), len(test)) == (1000, 1000)
    assert train.file_names[0] == "im0001.jpg" and train.file_names[-1] == "im1000.jpg"
    assert test.file_names[0] == "im1001.jpg" and test.file_names[-1] == "im2000.jpg"
    assert train.joints.shape == (1000, 14, 2) and test.visible.shape == (1000, 14)
    image, target = test[0]
    assert image.dtype.is_floating_point is False and image.shape[0] == 3
    with Image.open(LSP / "images" / "im1001.jpg") as im:
        assert tuple(image.shape[1:]) == (im.height, im.width)
    assert set(target) == {"joints", "visible", "box"}


def test_mat_and_csv_agree_and_visibility_follows_the_readme():
    joints, visible = read_joints(LSP / "joints.mat")
    csv_joints, csv_visible = read_joints(LSP / "joints.csv")
    assert np.array_equal(joints, csv_joints) and np.array_equal(visible, csv_visible)
    # README.txt: the .mat flag is 0 for a visible joint; 25,956 of the 28,000 flags are 0.
    flags = scipy.io.loadmat(LSP / "joints.mat")["joints"][2].T  # (2000, 14)
    assert np.array_equal(visible, flags == 0)
    assert visible.sum() == 25956
    occluded = 1 - visible.mean(axis=0)
    # The README's check: the left shoulder (often behind the body) is the most often occluded
    # joint, 16.0 %; head top (0.4 %) and neck (0.6 %) the least. Read backwards, these flip.
    assert occluded[JOINT_NAMES.index("left_shoulder")] == pytest.approx(0.160)
    assert int(np.argmax(occluded)) == JOINT_NAMES.index("left_shoulder")
    # (shares that the README's one decimal rounds to 0.4 % and 0.6 %)
    assert 0.0035 - 1e-9 <= occluded[JOINT_NAMES.index("head_top")] < 0.0045
    assert 0.0055 - 1e-9 <= occluded[JOINT_NAMES.index("neck")] < 0.0065
    # Occluded share per split: train 7.1 %, test 7.5 %.
    assert 1 - visible[:1000].mean() == pytest.approx(0.071, abs=5e-4)
    assert 1 - visible[1000:].mean() == pytest.approx(0.075, abs=5e-4)


def test_torso_sizes_match_the_readme(splits):
    joints = np.concatenate([splits[0].joints.numpy(), splits[1].joints.numpy()]).astype(float)
    torso = np.linalg.norm(joints[:, TORSO[0]] - joints[:, TORSO[1]], axis=-1)
    assert np.median(torso) == pytest.approx(47.7, abs=0.05)
    assert torso.min() == pytest.approx(2.6, abs=0.05) and int(torso.argmin()) == 1184  # im1185
    assert torso.max() == pytest.approx(94.6, abs=0.05)


def test_person_boxes_hold_every_joint(splits):
    for ds in splits:
        cx, cy, w, h = ds.boxes.T
        assert np.allclose((w / h).numpy(), 0.75, atol=1e-5)
        x, y = ds.joints[..., 0], ds.joints[..., 1]
        assert ((x - cx[:, None]).abs() <= w[:, None] / 2 / 1.25 + 1e-3).all()
        assert ((y - cy[:, None]).abs() <= h[:, None] / 2 / 1.25 + 1e-3).all()


def test_joint_metadata_and_registry():
    assert len(JOINT_NAMES) == 14 and len(SKELETON) == 13
    # 13 limbs joining 14 joints into one piece: a tree (union-find finds no cycle).
    parent = list(range(14))

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a
    for a, b in SKELETON:
        assert root(a) != root(b)
        parent[root(a)] = root(b)
    assert len({root(a) for a in range(14)}) == 1
    assert list(FLIP_INDEX) == flip_index_from_names(JOINT_NAMES)
    assert all(FLIP_INDEX[a] == b and FLIP_INDEX[b] == a for a, b in FLIP_PAIRS)
    info = get_dataset_info("lsp")
    assert info.task == "pose" and info.classes == JOINT_NAMES and info.num_classes == 14
    assert info.skeleton == SKELETON and info.flip_pairs == FLIP_PAIRS
    assert (info.train_size, info.test_size) == (1000, 1000)
    test = load_dataset("lsp", "test", data_dir=DATASETS, quiet=True)
    assert len(test) == 1000 and test.file_names[0] == "im1001.jpg"


# --- bad input: one line, naming the problem ---

def _folder(tmp_path, n_images, rows, *, size=(40, 60)):
    (tmp_path / "images").mkdir(parents=True)
    for i in range(n_images):
        Image.new("RGB", size, (i * 40, 0, 0)).save(tmp_path / "images" / f"im{i + 1:04d}.jpg")
    header = ["image"] + [f"{n}_{c}" for n in JOINT_NAMES for c in ("x", "y", "visible")]
    with (tmp_path / "joints.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, row in enumerate(rows):
            writer.writerow([f"im{i + 1:04d}.jpg"] + [v for xy in row for v in (*xy, 1)])
    return tmp_path


def _rows(n):
    return [[(10.0 + j, 20.0 + 2 * j) for j in range(14)] for _ in range(n)]


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_valid_tmp_folder_loads(tmp_path):
    ds = load_lsp(_folder(tmp_path, 2, _rows(2)), "train")
    assert len(ds) == 2 and ds.visible.all()
    assert ds.joints[0, 13].tolist() == [23.0, 46.0]


def test_count_mismatch(tmp_path):
    folder = _folder(tmp_path, 2, _rows(3))
    with pytest.raises(CnnkitError) as excinfo:
        load_lsp(folder, "train")
    assert "3 joint entries but" in _one_line(excinfo) and "2 im*.jpg images" in str(excinfo.value)


def test_coordinates_far_outside_the_image(tmp_path):
    rows = _rows(2)
    rows[1][4] = (10.0, 500.0)  # left_knee of im0002, y = 500 in a 60-pixel-high image
    folder = _folder(tmp_path, 2, rows)
    with pytest.raises(CnnkitError) as excinfo:
        load_lsp(folder, "train")
    text = _one_line(excinfo)
    assert "im0002.jpg left_knee at (10.0, 500.0)" in text and "40×60" in text
    # Just over the border (im0126's right ankle is 0.04 px below its image) is accepted.
    rows[1][4] = (10.0, 60.04)
    assert len(load_lsp(_folder(tmp_path / "ok", 2, rows), "train")) == 2


def test_bad_mat_files(tmp_path):
    extended = np.zeros((14, 3, 5))  # LSP-extended's layout and its opposite visibility flag
    scipy.io.savemat(tmp_path / "ext.mat", {"joints": extended})
    with pytest.raises(CnnkitError, match="LSP-extended's layout") as excinfo:
        read_joints(tmp_path / "ext.mat")
    _one_line(excinfo)
    bad_flag = np.zeros((3, 14, 2))
    bad_flag[2, 3, 1] = 2.0
    scipy.io.savemat(tmp_path / "flag.mat", {"joints": bad_flag})
    with pytest.raises(CnnkitError, match="image 2 left_hip has flag 2; it must be 0 or 1"):
        read_joints(tmp_path / "flag.mat")
    with pytest.raises(CnnkitError, match="does not exist"):
        read_joints(tmp_path / "missing.mat")


def test_skeleton_with_an_unknown_joint():
    named = [(JOINT_NAMES[a], JOINT_NAMES[b]) for a, b in SKELETON]
    assert resolve_skeleton(named) == SKELETON
    with pytest.raises(CnnkitError) as excinfo:
        resolve_skeleton([("left_knee", "left_ankel")])
    text = _one_line(excinfo)
    assert "unknown joint 'left_ankel'" in text and "left_ankle" in text
    with pytest.raises(CnnkitError, match="joint index 14 is not in 0..13"):
        resolve_skeleton([(0, 14)])


def test_cli_reports_a_bad_joints_file_in_one_line_with_exit_2(tmp_path):
    from tests.cli._run import assert_one_line_error, cnnkit  # noqa: PLC0415
    _folder(tmp_path / "lsp", 2, _rows(3))  # data_dir/lsp, as the registry reads it
    proc = cnnkit("train", "--dataset", "lsp", "--data-dir", tmp_path, "--model",
                  "pose_hrnet_w16_small", "--epochs", "1", "--out-dir", tmp_path / "runs",
                  timeout=120)
    assert_one_line_error(proc, "joints.csv has 3 joint entries but", "2 im*.jpg images")
