"""`cnnkit conv`, `edges`, `visualize` from the command line, on real images."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

EM_IMAGE = DATASETS / "isbi2012-membrane" / "train" / "image" / "0.png"  # 512×512 grey


def assert_real_png(path, min_size=(300, 150)):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "blank figure"


@pytest.fixture(scope="module")
def colour_image(tmp_path_factory):
    """A real CIFAR photo, enlarged: edges on a colour image use the channel rule."""
    from tests.data.conftest import unzip_cifar_test
    folder = tmp_path_factory.mktemp("cifar")
    path = unzip_cifar_test(folder, per_class=1, classes=("ship",))["ship"][0]
    return path


def test_edges_figure_grey_and_colour(tmp_path, colour_image):
    for image in (EM_IMAGE, colour_image):
        out = tmp_path / f"{image.stem}-edges.png"
        proc = cnnkit("edges", image, "-o", out)
        assert proc.returncode == 0, proc.stderr
        assert_real_png(out)


def test_learned_kernel_matches_sobel(tmp_path):
    images = sorted((DATASETS / "isbi2012-membrane" / "train" / "image").glob("*.png"))[:3]
    out = tmp_path / "learned.png"
    proc = cnnkit("edges", "--learn", *images, "--size", "96", "-o", out)
    assert proc.returncode == 0, proc.stderr
    max_diff = float(proc.stdout.split("max |learned − sobel| = ")[1].split()[0])
    assert max_diff < 0.05
    assert_real_png(out)


def test_learn_kernel_recovers_sobel_in_python():
    from cnnkit.data.imagefolder import decode_image
    from cnnkit.ops import SOBEL_X
    from cnnkit.train.learn_filter import learn_kernel
    x = decode_image(EM_IMAGE, 1, 64)[None].float() / 255  # (1, 1, 64, 64)
    learned, losses = learn_kernel(x, SOBEL_X, steps=400)
    assert (learned[0] - SOBEL_X).abs().max() < 0.05
    assert losses[-1] < 1e-3 * losses[0]


def test_conv_command_and_output_size(tmp_path):
    out = tmp_path / "conv.png"
    proc = cnnkit("conv", EM_IMAGE, "--kernel", "sobel_x", "--stride", "2", "--padding", "1",
                  "--dilation", "2", "--mode", "convolution", "-o", out)
    assert proc.returncode == 0, proc.stderr
    # ⌊(512 + 2 − 2·2 − 1)/2⌋ + 1 = 255
    assert "output (255, 255)" in proc.stdout
    assert_real_png(out)


def test_conv_and_edges_bad_input(tmp_path, colour_image):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(" ".join(["1"] * 9) for _ in range(9)))
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tiny)
    two_channel = tmp_path / "two.txt"
    two_channel.write_text("1 0\n0 1\n\n0 1\n1 0\n")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    assert_one_line_error(cnnkit("conv", tiny, "--kernel", big), "kernel")
    assert_one_line_error(cnnkit("conv", EM_IMAGE, "--stride", "0"), "stride")
    assert_one_line_error(cnnkit("conv", colour_image, "--kernel", two_channel), "channels")
    assert_one_line_error(cnnkit("conv", EM_IMAGE, "--kernel", "sobel_z"), "sobel_x")
    assert_one_line_error(cnnkit("edges", junk), "junk.jpg")
    assert_one_line_error(cnnkit("edges", tmp_path / "missing.png"), "missing.png")


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = cnnkit("train", "--dataset", "digits", "--epochs", "2", "--quiet", "--out-dir", out,
                  "--name", "v")
    assert proc.returncode == 0, proc.stderr
    return out / "v"


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    import gzip
    raw = gzip.open(DATASETS / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    pixels = np.frombuffer(raw, np.uint8, offset=16)[:784].reshape(28, 28)  # the first test "7"
    path = tmp_path_factory.mktemp("img") / "seven.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("what", ["filters", "activations", "saliency"])
def test_visualize_figures(what, lenet_run, digit_png, tmp_path):
    out = tmp_path / f"{what}.png"
    args = [lenet_run / "best.pt"] + ([digit_png] if what != "filters" else [])
    proc = cnnkit("visualize", what, *args, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert_real_png(out, min_size=(200, 100))


def test_visualize_receptive_field_table():
    proc = cnnkit("visualize", "receptive-field", "lenet")
    assert proc.returncode == 0, proc.stderr
    assert "conv2" in proc.stdout and "16" in proc.stdout  # LeNet's maxpool2 sees 16×16 pixels


def test_visualize_bad_input(lenet_run, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    assert_one_line_error(cnnkit("visualize", "activations", lenet_run / "best.pt", junk), "junk.png")
    assert_one_line_error(cnnkit("visualize", "filters", lenet_run / "best.pt", "--layer", "conv9"),
                          "conv1")
    assert_one_line_error(cnnkit("visualize", "receptive-field", "lenett"), "lenet")


def test_grad_cam_matches_hand_computation():
    """Grad-CAM on LeNet's rectified conv2 maps A (relu2) for the logit y = fc2(...) (not the
    log-probability) equals ReLU(Σ_k mean(∂y/∂A_k)·A_k), each unit placed at its receptive field
    centre 6.5 + 2i (bilinear between centres, zero one jump beyond), scaled to max 1."""
    import torch.nn.functional as F
    from cnnkit.models import create_model
    from cnnkit.viz.inside import grad_cam
    torch.manual_seed(0)
    model = create_model("lenet").eval()
    x = torch.randn(1, 1, 28, 28)
    cam, target = grad_cam(model, x)
    relu2_out = model.relu2(model.conv2(model.maxpool1(model.relu1(model.conv1(x)))))
    relu2_out.retain_grad()
    logits = model.fc2(model.relu3(model.fc1(torch.flatten(model.maxpool2(relu2_out), 1))))
    assert target == int(logits.argmax())
    logits[0, target].backward()
    alpha = relu2_out.grad.mean((2, 3), keepdim=True)
    small = F.relu((alpha * relu2_out).sum(1))[0].detach()  # (8, 8)
    expected = torch.zeros(28, 28)
    for p in range(28):
        for q in range(28):
            for i in range(8):
                for j in range(8):
                    wy = max(0.0, 1 - abs(p - (6.5 + 2 * i)) / 2)
                    wx = max(0.0, 1 - abs(q - (6.5 + 2 * j)) / 2)
                    expected[p, q] += wy * wx * small[i, j]
    torch.testing.assert_close(cam, expected / expected.max())
