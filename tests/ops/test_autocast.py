"""The scratch ops inside bf16 autocast training, as `cnnkit train --backend scratch` runs them."""
import torch
import torch.nn.functional as F

from cnnkit.models import create_model


def test_scratch_lenet_trains_under_bf16_autocast():
    torch.manual_seed(0)
    scratch = create_model("lenet", backend="scratch")
    reference = create_model("lenet")
    reference.load_state_dict(scratch.state_dict())
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = []
    for model in (scratch, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    # scratch convs run in float32 under autocast, torch's in bf16: close, not equal
    assert abs(losses[0] - losses[1]) < 0.05
    torch.testing.assert_close(scratch.fc2.weight.grad, reference.fc2.weight.grad,
                               atol=0.02, rtol=0.1)
