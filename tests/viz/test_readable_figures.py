"""Figures people read: labelled sample grids at a readable size, filter grids with indices and
one colour scale, activation figures of deep models of bounded height, uncluttered edge plots."""
import numpy as np
import torch
from PIL import Image

import cnnkit.viz.edges as edges
import cnnkit.viz.inside as inside
from cnnkit.models import create_model
from cnnkit.viz import image_grid
from tests._idx import read_idx


def test_conditional_grid_is_readable_and_labelled(tmp_path, mnist_dir):
    digits = torch.from_numpy(read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:20].copy())
    path = image_grid(digits[:, None], tmp_path / "g.png", nrow=10, title="samples",
                      col_labels=[str(k) for k in range(10)])
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape[1] >= 600  # the bare grid is 10·30 + 2 = 302 px wide
    grid_top = np.argmax((pixels < 5).mean(1) > 0.5)  # first mostly-black row: the grid
    band = pixels[grid_top - 22:grid_top - 2]  # the label band just above it
    scale = pixels.shape[1] // 302
    for k in range(10):
        centre = (2 + 30 * k + 14) * scale
        assert band[:, centre - 8:centre + 8].min() < 100, f"no label over column {k}"


def _capture(monkeypatch, module):
    figures = []
    real = module.save_figure

    def keep(fig, path, **kw):
        fig.canvas.draw()
        figures.append((fig, fig.canvas.get_renderer()))
        return real(fig, path, **kw)
    monkeypatch.setattr(module, "save_figure", keep)
    return figures


def test_filter_grid_has_indices_and_one_colour_scale(tmp_path, monkeypatch):
    figures = _capture(monkeypatch, inside)
    torch.manual_seed(0)
    inside.plot_filters(create_model("lenet"), tmp_path / "f.png")
    fig, _ = figures[0]
    titles = [ax.get_title() for ax in fig.axes]
    assert [f"#{i}" for i in range(20)] == [t for t in titles if t.startswith("#")]
    limits = {im.get_clim() for ax in fig.axes for im in ax.get_images()}
    assert len(limits) == 1 and list(limits)[0][0] == -list(limits)[0][1]  # shared, centred
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


def test_activations_of_a_deep_model_stay_readable(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    maps = inside.feature_maps(model, x)
    assert len(maps) > 20
    path = inside.plot_feature_maps(maps, x[0], tmp_path / "a.png")
    height = Image.open(path).size[1]
    assert height <= 1400, height  # every one of 22 stages at 1.5 in × 110 dpi: 3,600 px


def test_learned_kernel_labels_do_not_overlap(tmp_path, monkeypatch):
    figures = _capture(monkeypatch, edges)
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    edges.plot_learned_kernel(sobel, sobel, [10 ** -k for k in range(15)], "Sobel",
                              tmp_path / "l.png")
    fig, renderer = figures[0]
    curve, kernel = fig.axes[2], fig.axes[1]
    ylabel = curve.yaxis.get_label().get_window_extent(renderer)
    xlabel = curve.xaxis.get_label().get_window_extent(renderer)
    assert not ylabel.overlaps(kernel.get_window_extent(renderer))
    assert xlabel.y0 >= 0 and ylabel.x0 >= 0  # inside the figure, not cut off
