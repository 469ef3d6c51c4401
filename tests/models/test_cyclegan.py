"""CycleGAN's ResNet generator and 70×70 PatchGAN (Zhu et al. 2017), against the authors' layout."""
import pytest
import torch
from torch import nn

from cnnkit.models import count_parameters, create_model
from cnnkit.models.cyclegan import (PatchDiscriminator, ResnetGenerator, UpConvNormAct,
                                    patch_side)
from cnnkit.utils import CnnkitError

# Parameter counts of the authors' implementation (junyanz/pytorch-CycleGAN-and-pix2pix,
# define_G(3, 3, 64, 'resnet_9blocks' | 'resnet_6blocks', norm='instance') and
# define_D(3, 64, 'basic', norm='instance')), as the issue quotes them.
PAPER_COUNTS = {"cyclegan_resnet_9blocks": 11_378_179, "cyclegan_resnet_6blocks": 7_837_699,
                "patchgan_70": 2_764_737}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_parameter_counts_at_the_paper_widths(name):
    model = create_model(name)
    assert count_parameters(model) == PAPER_COUNTS[name]
    assert model.generative is True  # the classifier zoo tests skip it


def test_generator_keeps_the_size_and_ends_in_tanh():
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=8, n_blocks=2)
    x = torch.rand(2, 3, 24, 36) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() < 1  # Tanh
    assert isinstance(g.head[-1], nn.Tanh)
    with pytest.raises(CnnkitError, match="multiples of 4, got 26×36"):
        g(torch.zeros(1, 3, 26, 36))


def test_generator_layout_is_the_authors():
    g = create_model("cyclegan_resnet_9blocks")
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    # c7s1-64, d128, d256, 9 × (2 × 3×3), c7s1-3; every conv with a bias
    assert [m.kernel_size[0] for m in convs] == [7, 3, 3] + [3] * 18 + [7]
    assert [m.stride[0] for m in convs] == [1, 2, 2] + [1] * 18 + [1]
    assert all(m.bias is not None for m in [*convs, *ups])
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
             m.output_padding) for m in ups] == [(256, 128, (3, 3), (2, 2), (1, 1), (1, 1)),
                                                 (128, 64, (3, 3), (2, 2), (1, 1), (1, 1))]
    # Reflection padding around the 7×7 and the residual convs; zero padding only in the downs.
    pads = [m.padding[0] for m in g.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert pads == [3] + [1] * 18 + [3]
    assert [m.padding[0] for m in convs] == [0, 1, 1] + [0] * 18 + [0]
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 18 + 2
    assert not any(m.affine or m.track_running_stats for m in norms)
    assert len(g.blocks) == 9 and len(create_model("cyclegan_resnet_6blocks").blocks) == 6


def test_resize_upsampling_keeps_the_count_and_paints_no_checkerboard():
    """Odena et al. 2016: on a constant input a stride-2 transposed 3×3 convolution gives a
    2-periodic pattern (output pixels receive 1, 2 or 4 kernel taps); nearest-resize + conv
    gives a constant interior."""
    for name in ("cyclegan_resnet_6blocks", "cyclegan_resnet_9blocks"):
        assert count_parameters(create_model(name, upsample="resize")) == PAPER_COUNTS[name]
    torch.manual_seed(0)
    flat = torch.ones(1, 4, 6, 6)
    interiors = {}
    for mode in ("transpose", "resize"):
        up = UpConvNormAct(4, 1, norm="none", act="none", upsample=mode)
        nn.init.constant_(up.conv.weight, 0.1)
        out = up(flat)
        assert out.shape == (1, 1, 12, 12)
        interiors[mode] = out[0, 0, 2:-2, 2:-2]
    assert torch.allclose(interiors["resize"], interiors["resize"][0, 0])
    assert interiors["transpose"].max() > 1.5 * interiors["transpose"].min()  # the checkerboard
    g = ResnetGenerator(ngf=8, n_blocks=1, upsample="resize")
    assert g(torch.zeros(1, 3, 16, 20)).shape == (1, 3, 16, 20)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    with pytest.raises(CnnkitError, match="unknown upsampling 'bilinear'"):
        ResnetGenerator(ngf=8, n_blocks=1, upsample="bilinear")


def test_residual_block_adds_its_input():
    g = ResnetGenerator(ngf=4, n_blocks=1)
    block = g.blocks[0]
    for p in block.block[1].parameters():  # zero the second conv: the branch then gives 0
        nn.init.zeros_(p)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_discriminator_layout_is_the_authors():
    d = create_model("patchgan_70")
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.stride[0] for m in convs] == [2, 2, 2, 1, 1]
    assert {(m.kernel_size, m.padding) for m in convs} == {((4, 4), (1, 1))}
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in d.features[0].modules())
    assert all(isinstance(layer.bn, nn.InstanceNorm2d) for layer in d.features[1:])
    assert {m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())  # LSGAN regresses raw outputs
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert patch_side(256) == 30 and patch_side(128) == 14


def test_each_patch_logit_sees_70_by_70_pixels():
    """The receptive field, measured: the input pixels with a gradient from one central logit.
    Without instance norm (which couples every pixel of a channel) the support is exactly the
    receptive field of the conv stack."""
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=8, norm="none")
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    out = d(x)  # (1, 1, 18, 18)
    out[0, 0, 9, 9].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_too_small_input_is_a_one_line_error():
    with pytest.raises(CnnkitError, match="3-layer PatchGAN needs larger images than 16×16"):
        PatchDiscriminator(ndf=4)(torch.zeros(1, 3, 16, 16))
    assert PatchDiscriminator(ndf=4, n_layers=2)(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 2, 2)


def test_init_is_normal_002_with_zero_biases():
    torch.manual_seed(0)
    nets = [create_model("cyclegan_resnet_6blocks"), create_model("patchgan_70")]
    convs = [m for net in nets for m in net.modules() if isinstance(m, (nn.Conv2d,
                                                                          nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert all((m.bias == 0).all() for m in convs)


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, **({"ngf": 4} if "resnet" in name else {"ndf": 4}))
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
