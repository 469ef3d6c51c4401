"""EMA of the weights: the update rule, its warm-up, and a state_dict round trip."""
import torch
from torch import nn

from cnnkit.diffusion import EMA


def test_update_is_the_exponential_average_with_tf_warmup():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()  # n = 0: decay min(0.9, 1/10) = 0.1
    for avg, old, new in zip(ema.model.parameters(), start, model.parameters()):
        assert torch.allclose(avg, 0.1 * old + 0.9 * new)
    ema.num_updates = 1000  # past the warm-up: the nominal decay
    before = [p.detach().clone() for p in ema.model.parameters()]
    ema.update()
    for avg, old, new in zip(ema.model.parameters(), before, model.parameters()):
        assert torch.allclose(avg, 0.9 * old + 0.1 * new)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_state_dict_round_trip():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99)
    ema.update()
    other = EMA(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99 and other.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(other.model.parameters(), ema.model.parameters()))
