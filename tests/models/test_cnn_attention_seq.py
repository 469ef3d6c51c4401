"""cnn_attention_seq: shapes, the attention it exposes, and a real (small) training run on mnist-seq."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnkit.data import InMemoryLoader, build_mnist_seq
from cnnkit.data.formats import read_idx_pair
from cnnkit.data.mnist_seq import END, SEEDS, plan_sequences
from cnnkit.layers.attention import Attention, attend
from cnnkit.models import create_model, get_model_cfg
from cnnkit.utils import CnnkitError

# A narrower reader than the default (widths (32, 64, 128), 128-wide GRUs) so that the training
# test stays within a few seconds per hundred steps on one CPU thread.
SMALL = dict(widths=(16, 32, 64), enc_dim=64, dec_dim=64)


def test_registered_shapes_and_attention():
    cfg = get_model_cfg("cnn_attention_seq")
    assert cfg["input_size"] == cfg["test_input_size"] == (1, 28, 140)
    assert not cfg["fixed_input_size"]  # the trainer passes no img_size
    torch.manual_seed(0)
    model = create_model("cnn_attention_seq", num_classes=11, in_chans=1).eval()
    assert model.sequence_output and model.max_len == 5
    x = torch.randn(3, 1, 28, 140)
    logits = model(x)
    assert logits.shape == (3, 5, 11) and torch.isfinite(logits).all()
    features = model.forward_features(x)
    assert features.shape == (35, 3, 128)  # (L, B, E): one column per 4 pixels, BiGRU 2 × 64
    assert torch.equal(model.forward_head(features), logits)
    weights = model.last_attention
    assert weights.shape == (3, 5, 35) and not weights.requires_grad
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(3, 5), atol=1e-6)  # a softmax per step


def test_decoder_uses_the_chapters_attention():
    """Step 0 recomputed by hand from the chapter's layer and attend (the decoder's first state)."""
    torch.manual_seed(0)
    model = create_model("cnn_attention_seq", **SMALL).eval()
    assert type(model.decoder.attention) is Attention
    x = torch.randn(2, 1, 28, 140)
    with torch.no_grad():
        logits = model(x)
        enc = model.forward_features(x)  # (L, B, E)
        dec = model.decoder
        hidden = torch.tanh(dec.init_hidden(enc.mean(0)))  # (B, D)
        alpha = dec.attention(hidden, enc)  # (B, L)
        step0 = dec.fc(torch.cat([hidden, attend(alpha, enc)], 1))  # (B, K)
    assert torch.allclose(model.last_attention[:, 0], alpha, atol=1e-6)
    assert torch.allclose(logits[:, 0], step0, atol=1e-5)


def test_every_parameter_gets_a_gradient_and_variants():
    torch.manual_seed(0)
    for kwargs in ({}, {"rnn": False, "max_len": 3}, {"in_chans": 3, "num_classes": 7}):
        model = create_model("cnn_attention_seq", **kwargs).train()
        in_chans = kwargs.get("in_chans", 1)
        out = model(torch.randn(2, in_chans, 28, 140))
        assert out.shape == (2, kwargs.get("max_len", 5), kwargs.get("num_classes", 11))
        F.cross_entropy(out.flatten(0, 1), torch.randint(0, out.shape[-1], (2 * out.shape[1],))
                        ).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"{kwargs}: no gradient for {missing}"
    assert create_model("cnn_attention_seq", rnn=False).forward_features(
        torch.randn(1, 1, 28, 140)).shape == (35, 1, 128)  # the CNN's 128 channels, unmixed
    with pytest.raises(CnnkitError, match="max_len ≥ 1"):
        create_model("cnn_attention_seq", max_len=0)


def test_learns_to_read_held_out_sequences(mnist_dir):
    """200 Adam steps on 2,000 real training sequences; read 500 unseen test sequences."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same work on any machine: the budget is one core
    try:
        _train_and_read(mnist_dir)
    finally:
        torch.set_num_threads(threads)


def _train_and_read(mnist_dir):
    torch.manual_seed(0)
    train_digits = read_idx_pair(mnist_dir / "train-images-idx3-ubyte.gz",
                                 mnist_dir / "train-labels-idx1-ubyte.gz")
    test_digits = read_idx_pair(mnist_dir / "t10k-images-idx3-ubyte.gz",
                                mnist_dir / "t10k-labels-idx1-ubyte.gz")
    train = build_mnist_seq(*train_digits, "train", count=2_000)
    test = build_mnist_seq(*test_digits, "test", count=500)
    model = create_model("cnn_attention_seq", num_classes=11, in_chans=1, **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = InMemoryLoader(train, 64, shuffle=True, drop_last=True, seed=0)
    model.train()
    step, epoch = 0, 0
    while step < 200:
        loader.set_epoch(epoch)
        for x, y in loader:  # y: (B, 5)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == 200:
                break
        epoch += 1
    model.eval()
    x, y = next(iter(InMemoryLoader(test, len(test), shuffle=False)))
    with torch.no_grad():
        pred = model(x).argmax(-1)  # (500, 5)
    token_acc = (pred == y).float().mean().item()
    seq_acc = (pred == y).all(1).float().mean().item()
    # Chance: 1/11 per token; always answering the commonest token scores ~0.2 (END's share).
    assert token_acc > 0.5, token_acc
    assert seq_acc > 0.2, seq_acc
    # The attention has learnt where to look: for digit steps, the most-weighted column falls on
    # the digit being read (pixels offset + 28·t … + 28), ± one column, in most cases.
    plan = plan_sequences(len(test_digits[0]), len(test), SEEDS["test"])  # where each digit is
    assert torch.equal(plan.lengths, (y != END).sum(1))
    peak_px = model.last_attention.argmax(-1) * 4 + 2  # (500, 5) centre pixel of the peak column
    hits = total = 0
    for t in range(5):
        reading = plan.lengths > t
        left = plan.offsets[reading] + 28 * t  # (n,) the digit's left edge
        centre = peak_px[reading, t]
        hits += ((centre >= left - 4) & (centre < left + 28 + 4)).sum().item()
        total += int(reading.sum())
    assert hits / total > 0.5, hits / total
