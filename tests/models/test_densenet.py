"""DenseNet specifics: the small-input stem, memory-efficient mode, grey inputs, weight files."""
import logging

import torch

from cnnkit.models import create_model
from cnnkit.models.densenet import DenseNet


def test_small_input_stem_keeps_resolution():
    default, small = DenseNet(small_input=False), DenseNet(small_input=True)
    assert "pool0" in default.features._modules and "pool0" not in small.features._modules
    assert small.features.conv0.kernel_size == (3, 3) and small.features.conv0.stride == (1, 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # three transitions halve 32 → 4 with the small stem; stem and transitions give 32 → 1
        assert small.eval().forward_features(x).shape == (1, 1024, 4, 4)
        assert default.eval().forward_features(x).shape == (1, 1024, 1, 1)
    # the same checkpoint layout; only the stem kernel differs
    a, b = default.state_dict(), small.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if a[k].shape != b[k].shape] == ["features.conv0.weight"]


def test_memory_efficient_matches_plain_model():
    torch.manual_seed(0)
    plain = DenseNet(32, (2, 2), 16, num_classes=5, small_input=True)
    efficient = DenseNet(32, (2, 2), 16, num_classes=5, small_input=True, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 12, 12)
    results, bottleneck_runs = [], []
    for model in (plain, efficient):
        calls = []
        model.features.denseblock1.denselayer1.norm1.register_forward_hook(
            lambda *args, calls=calls: calls.append(1))
        xi = x.clone().requires_grad_()
        out = model.train()(xi)
        out.square().sum().backward()
        bottleneck_runs.append(len(calls))
        results.append((out, xi.grad, {n: p.grad for n, p in model.named_parameters()},
                        model.state_dict()))
    assert bottleneck_runs == [1, 2]  # the efficient model really recomputes in backward
    (out_a, gx_a, grads_a, state_a), (out_b, gx_b, grads_b, state_b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(gx_b, gx_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)
    # recomputation in backward must not update the BatchNorm running statistics twice
    for name in state_a:
        torch.testing.assert_close(state_b[name], state_a[name], msg=name)


def test_grey_28x28_input():
    model = create_model("densenet121", num_classes=10, in_chans=1, small_input=True)
    assert model.features.conv0.in_channels == 1 and model.in_chans == 1
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_weights_round_trip_and_new_head(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("densenet121")
    path = tmp_path / "densenet121.pth"
    torch.save(source.state_dict(), path)  # a plain torchvision-layout state_dict

    expected = source.state_dict()
    same = create_model("densenet121", weights=str(path)).state_dict()
    assert all(torch.equal(same[k], v) for k, v in expected.items())

    with caplog.at_level(logging.WARNING, logger="cnnkit"):
        other = create_model("densenet121", num_classes=10, weights=str(path))
    assert "classifier" in caplog.text and "re-initialised" in caplog.text
    assert other.classifier.weight.shape == (10, 1024)
    loaded = {k: v for k, v in other.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(v, expected[k]) for k, v in loaded.items())
