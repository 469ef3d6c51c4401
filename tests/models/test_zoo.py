"""Every registered model, checked the same way (timm tests/test_models.py, STYLE.md habit 10).

Adding a model adds no test code: output shape, finite values, a gradient for every parameter,
and — where ../shared/reference has one — the reference parameter count and state_dict layout.
Classifiers give (N, classes); sequence readers (N, max_len, classes); dense predictors
(`dense_output`, segmentation) (N, classes, H', W'), H' = H unless the model says otherwise.
"""
import json

import pytest
import torch

from cnnkit.models import count_parameters, create_model, get_model_cfg, list_models
from tests.conftest import REFERENCE

PARAM_COUNTS = json.loads((REFERENCE / "param_counts.json").read_text())
MANIFESTS = REFERENCE / "state_dicts"


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    entries = {}
    for line in (MANIFESTS / f"{name}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            entries[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return entries


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_small_input(name):
    cfg = get_model_cfg(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **cfg["test_kwargs"])
    if (getattr(model, "generative", False) or getattr(model, "detector", False)
            or getattr(model, "pose", False)):
        pytest.skip("a generative model, a detector or a pose network, not a classifier: "
                    "tested in its own file")
    x = torch.randn(2, *cfg["test_input_size"])
    out = model.train()(x)
    expected = (2, 7)
    if getattr(model, "sequence_output", False):  # one distribution per output position
        expected = (2, model.max_len, 7)
    elif getattr(model, "dense_output", False):  # segmentation: one per pixel, (N, K, H', W')
        size = model.output_size(*x.shape[-2:]) if hasattr(model, "output_size") else x.shape[-2:]
        expected = (2, 7, *size)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()  # touches every logit, so every parameter
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", [n for n in list_models() if n in PARAM_COUNTS])
def test_reference_parameter_count(name):
    assert count_parameters(create_model(name)) == PARAM_COUNTS[name]["params"]


@pytest.mark.parametrize("name", [n for n in list_models() if (MANIFESTS / f"{n}.txt").is_file()])
def test_reference_state_dict_layout(name):
    expected = read_manifest(name)
    got = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    assert sorted(set(expected) - set(got)) == [], "keys missing"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}
