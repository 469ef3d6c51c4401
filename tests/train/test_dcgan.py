"""DCGAN networks (Radford et al. 2016) and their training loop, on real torch and digits."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnkit.generation import to_uint8
from cnnkit.generation.sample import Sampler, generate
from cnnkit.models.dcgan import Discriminator, Generator, base_side
from cnnkit.train.dcgan import GanConfig, train_gan
from cnnkit.utils import CnnkitError

SIZES = [(28, 1), (32, 3)]


@pytest.mark.parametrize("img_size,channels", SIZES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_and_range(img_size, channels, num_classes):
    torch.manual_seed(0)
    g = Generator(img_size=img_size, channels=channels, ngf=16, num_classes=num_classes)
    d = Discriminator(img_size=img_size, channels=channels, ndf=16, num_classes=num_classes)
    labels = torch.randint(0, 10, (5,)) if num_classes else None
    x = g(torch.randn(5, 100), labels)
    assert x.shape == (5, channels, img_size, img_size)
    assert x.abs().max() <= 1.0  # Tanh output
    logits = d(x, labels)
    assert logits.shape == (5,) and torch.isfinite(logits).all()


def test_paper_layout():
    """No pooling, BN everywhere except G's output and D's input layer, LeakyReLU 0.2 in D."""
    g, d = Generator(img_size=32, channels=3), Discriminator(img_size=32, channels=3)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in
                   [*g.modules(), *d.modules()])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.to_image.modules())
    assert isinstance(g.to_image.act, nn.Tanh)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.blocks[0].modules())
    assert all(isinstance(b.bn, nn.BatchNorm2d) for b in d.blocks[1:])
    assert {m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    # 32×32: 4 → 8 → 16 → 32 in G; 32 → 16 → 8 → 4 in D
    assert [m.stride for m in g.modules() if isinstance(m, nn.ConvTranspose2d)][1:] == [(2, 2)] * 3
    assert [m.stride for m in d.blocks.modules() if isinstance(m, nn.Conv2d)] == [(2, 2)] * 3


def test_base_side_rejects_odd_sizes():
    assert base_side(28) == 7 and base_side(32) == 4 and base_side(64) == 4
    with pytest.raises(CnnkitError, match="halves down"):
        base_side(27)


def test_init_statistics():
    """Paper §4: weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    torch.manual_seed(0)
    g, d = Generator(img_size=32, channels=3), Discriminator(img_size=32, channels=3)
    convs = torch.cat([m.weight.flatten() for net in (g, d) for m in net.modules()
                       if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(convs.mean().item()) < 1e-3
    assert convs.std().item() == pytest.approx(0.02, rel=0.02)
    bn = torch.cat([m.weight for net in (g, d) for m in net.modules()
                    if isinstance(m, nn.BatchNorm2d)]).detach()
    assert bn.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn.std().item() == pytest.approx(0.02, rel=0.15)
    assert all((m.bias == 0).all() for net in (g, d) for m in net.modules()
               if isinstance(m, nn.BatchNorm2d))


def test_conditioning_changes_outputs_and_is_required():
    torch.manual_seed(0)
    g = Generator(num_classes=10, ngf=16).eval()
    d = Discriminator(num_classes=10, ndf=16).eval()
    z = torch.randn(1, 100).repeat(2, 1)
    x = g(z, torch.tensor([3, 7]))
    assert not torch.allclose(x[0], x[1])  # same noise, different class → different image
    logits = d(x[:1].repeat(2, 1, 1, 1), torch.tensor([3, 7]))
    assert logits[0] != logits[1]
    with pytest.raises(CnnkitError, match="class-conditional"):
        g(z)
    with pytest.raises(CnnkitError, match="class-conditional"):
        d(x)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_parameter_gets_a_gradient(num_classes):
    torch.manual_seed(0)
    g = Generator(ngf=16, num_classes=num_classes)
    d = Discriminator(ndf=16, num_classes=num_classes)
    labels = torch.randint(0, 10, (4,)) if num_classes else None
    d(g(torch.randn(4, 100), labels), labels).sum().backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_d_step_and_one_g_step_change_only_their_network():
    torch.manual_seed(0)
    g, d = Generator(ngf=16), Discriminator(ndf=16)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    g0 = {k: v.clone() for k, v in g.state_dict().items()}
    d0 = {k: v.clone() for k, v in d.state_dict().items()}

    fake = g(torch.randn(8, 100))
    lr_, lf = d(real), d(fake.detach())
    loss_d = (F.binary_cross_entropy_with_logits(lr_, torch.ones(8))
              + F.binary_cross_entropy_with_logits(lf, torch.zeros(8)))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    assert all(not torch.equal(d0[k], v) for k, v in d.named_parameters())
    assert all(torch.equal(g0[k], v) for k, v in g.named_parameters())  # detached: G untouched

    loss_g = F.binary_cross_entropy_with_logits(d(fake), torch.ones(8))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    assert all(not torch.equal(g0[k], v) for k, v in g.named_parameters())


def test_generate_is_seeded_uint8_and_matches_to_uint8():
    torch.manual_seed(0)
    g = Generator(ngf=16, num_classes=10)
    labels = torch.arange(6) % 10
    sampler = Sampler("dcgan", g, [str(i) for i in range(10)], (1, 28, 28), 10)
    a = to_uint8(generate(sampler, 6, labels=labels, seed=1, batch_size=4))
    b = to_uint8(generate(sampler, 6, labels=labels, seed=1, batch_size=4))
    c = to_uint8(generate(sampler, 6, labels=labels, seed=2, batch_size=4))
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed decides the noise
    assert torch.equal(to_uint8(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0, 128, 255],
                                                                             dtype=torch.uint8))


def _tiny(tmp_path, **kw):
    return GanConfig(dataset="digits", ngf=8, ndf=8, batch_size=256, grid_size=20,
                     class_conditional=True, out_dir=str(tmp_path), quiet=True, **kw)


def test_train_writes_run_folder_and_resumes_exactly(tmp_path):
    straight = train_gan(_tiny(tmp_path, epochs=2, name="straight"), log=lambda *a: None)
    files = {p.name for p in straight.run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "last.pt", "losses.png", "samples_epoch001.png",
            "samples_epoch002.png"} <= files
    assert len((straight.run_dir / "metrics.csv").read_text().splitlines()) == 3  # header + 2
    # The grid is readable: enlarged to ≥ 600 px, a title and the 10 class names above it
    # (a bare 10 × 2 grid of 28-px digits would be 302 × 62 px).
    with Image.open(straight.run_dir / "samples_epoch001.png") as grid:
        assert grid.width >= 600 and grid.height > 2 * 62

    train_gan(_tiny(tmp_path, epochs=1, name="split"), log=lambda *a: None)
    resumed = train_gan(GanConfig(resume=str(tmp_path / "split"), epochs=2, quiet=True),
                        log=lambda *a: None)
    a = torch.load(straight.run_dir / "last.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)
    assert b["position"]["epochs_done"] == 2
    assert b["position"]["step"] == a["position"]["step"] == 2 * 5  # 1437 // 256 = 5 an epoch
    for net in ("generator", "discriminator"):
        for key, value in a["models"][net].items():
            assert torch.equal(value, b["models"][net][key]), f"{net}.{key}"
    assert a["extra"]["step_losses"] == b["extra"]["step_losses"]

    with pytest.raises(CnnkitError, match="already holds a run"):
        train_gan(_tiny(tmp_path, epochs=1, name="straight"), log=lambda *a: None)
