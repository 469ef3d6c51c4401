"""plot_attention on real mnist-seq canvases: the heat map is read back from the PNG and must lie
under the image columns it describes."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import build_mnist_seq
from cnnkit.data.formats import read_idx_pair
from cnnkit.data.mnist_seq import CLASSES, SEEDS, plan_sequences
from cnnkit.utils import CnnkitError
from cnnkit.viz.attention import plot_attention

L = 35  # attention columns of cnn_attention_seq on a 140-pixel canvas: 4 pixels each


@pytest.fixture(scope="module")
def sequences(mnist_dir):
    """Four real test canvases (4, 1, 28, 140), their labels (4, 5) and their plan."""
    digits, labels = read_idx_pair(mnist_dir / "t10k-images-idx3-ubyte.gz",
                                   mnist_dir / "t10k-labels-idx1-ubyte.gz")
    ds = build_mnist_seq(digits, labels, "test", count=4)
    return ds.images, ds.labels, plan_sequences(len(digits), 4, SEEDS["test"])


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)  # (H, W, 3)


def canvas_boxes(pixels: np.ndarray) -> list[tuple[slice, int, int]]:
    """Rows and x extent [x0, x1) of each drawn canvas, top to bottom: the bands of near-black
    rows wider than 300 pixels (text never is; a canvas's background is black) and more than
    10 rows high (an axes frame is a one-pixel line)."""
    black = (pixels < 16).all(-1)  # (H, W)
    rows = np.flatnonzero(black.sum(1) > 300)
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    boxes = []
    for band in (band for band in bands if len(band) > 10):
        cols = np.flatnonzero(black[band].any(0))
        boxes.append((slice(band[0], band[-1] + 1), int(cols[0]), int(cols[-1]) + 1))
    return boxes


def test_heat_map_cells_lie_under_their_pixels(tmp_path, sequences):
    images, labels, plan = sequences
    # Sequence 0 attends, at step 0 only, to one column in the middle of its first digit; every
    # other weight is spread evenly (a dark colour when the peak sets the top of the scale).
    peak = int(plan.offsets[0] + 14) // 4
    attention = torch.full((4, 5, L), 1 / L)
    attention[0, 0] = 0.0
    attention[0, 0, peak] = 1.0
    path = tmp_path / "attention.png"
    assert plot_attention(images, attention, labels, labels, CLASSES, path) == path
    assert Image.open(path).text["Title"] == "attention over image columns, 4 of 4 sequences"
    assert plt.get_fignums() == [] and not list(tmp_path.glob("*.tmp"))
    pixels = read_png(path)
    boxes = canvas_boxes(pixels)
    assert len(boxes) == 4
    (rows, x0, x1), (next_rows, *_) = boxes[:2]
    assert x1 - x0 > 400 and 4.5 < (x1 - x0) / (rows.stop - rows.start) < 5.5  # ~ at 5:1
    below = pixels[rows.stop:next_rows.start]  # sequence 0's heat map (and the next title)
    r, g, b = below[..., 0], below[..., 1], below[..., 2]
    yellow = (r > 200) & (g > 180) & (b < 100)  # viridis' top colour (253, 231, 37)
    ys, xs = np.nonzero(yellow)
    assert len(xs) > 20, "the peak cell is missing"
    map_rows = np.flatnonzero(((below[..., 2] > 60) & (below[..., 0] < 120)).sum(1) > 300)
    step_px = (map_rows[-1] + 1 - map_rows[0]) / 5  # the map's dark rows: 5 steps
    assert ys.max() - ys.min() == pytest.approx(step_px, abs=3)
    assert ys.min() - map_rows[0] < 3  # the top row of the map: step 0
    column_px = (x1 - x0) / L
    expected = x0 + (peak + 0.5) * column_px
    assert abs((xs.min() + xs.max()) / 2 - expected) < 0.5 * column_px
    assert xs.max() - xs.min() == pytest.approx(column_px, abs=3)
    # ... and under the ink of the digit it stands for (white strokes in the canvas above).
    ink = x0 + np.flatnonzero((pixels[rows, x0:x1] > 200).all(-1).any(0))
    first_digit = ink[ink < x0 + (int(plan.offsets[0]) + 28) * (x1 - x0) / 140]
    assert first_digit.min() < (xs.min() + xs.max()) / 2 < first_digit.max()


def test_wrong_tokens_are_red_and_labels_optional(tmp_path, sequences):
    images, labels, _ = sequences
    attention = torch.softmax(torch.randn(4, 5, L, generator=torch.Generator().manual_seed(0)), -1)
    red = lambda p: ((p[..., 0] > 200) & (p[..., 1] < 60) & (p[..., 2] < 60)).sum()  # noqa: E731
    right = plot_attention(images, attention, labels, labels, CLASSES, tmp_path / "right.png")
    assert red(read_png(right)) == 0
    preds = labels.clone()
    preds[1, 0] = (preds[1, 0] + 1) % 10
    wrong = plot_attention(images, attention, preds, labels, CLASSES, tmp_path / "wrong.png")
    assert red(read_png(wrong)) > 20
    alone = plot_attention(images[:2], attention[:2], preds[:2], None, CLASSES,
                           tmp_path / "alone.png", max_sequences=1)
    assert Image.open(alone).text["Title"] == "attention over image columns, 1 of 2 sequences"
    assert red(read_png(alone)) == 0  # nothing to be wrong against


def test_bad_inputs_say_what_is_wrong(tmp_path, sequences):
    images, labels, _ = sequences
    attention = torch.full((4, 5, L), 1 / L)
    with pytest.raises(CnnkitError, match=r"attention must be \(N, T, L\) with N = 4"):
        plot_attention(images, attention[:3], labels, labels, CLASSES, tmp_path / "x.png")
    with pytest.raises(CnnkitError, match=r"predictions must be \(N, T\) = \(4, 5\)"):
        plot_attention(images, attention, labels[:, :4], labels, CLASSES, tmp_path / "x.png")
    with pytest.raises(CnnkitError, match="labels hold class 10, outside the 10 class names"):
        plot_attention(images, attention, labels.clamp(max=9), labels, CLASSES[:10],
                       tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
