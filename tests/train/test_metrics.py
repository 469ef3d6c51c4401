"""evaluate() against hand-computed metrics, for plain labels and for sequence targets."""
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cnnkit.train.metrics import evaluate, exact_matches, token_loss


class Fixed(torch.nn.Module):
    """Returns prepared logits batch by batch, ignoring the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.i = logits, 0

    def forward(self, x):
        out = self.logits[self.i:self.i + len(x)]
        self.i += len(x)
        return out


def batches(y, size):
    return [(torch.zeros(len(y[i:i + size])), y[i:i + size]) for i in range(0, len(y), size)]


def test_classification_metrics_match_sklearn():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 7), torch.randint(0, 7, (50,))
    ev, log_probs = evaluate(Fixed(logits), batches(y, 16), 7, keep_outputs=True)
    pred = logits.argmax(1)
    assert ev.top1 == ev.token_acc == (pred == y).sum().item() / 50
    assert ev.top5 == (logits.topk(5, 1).indices == y[:, None]).any(1).sum().item() / 50
    assert abs(ev.loss - torch.nn.functional.cross_entropy(logits, y).item()) < 1e-6
    assert (ev.confusion.numpy() == confusion_matrix(y, pred, labels=range(7))).all()
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    torch.testing.assert_close(ev.precision, torch.tensor(p, dtype=torch.float64))
    torch.testing.assert_close(ev.recall, torch.tensor(r, dtype=torch.float64))
    torch.testing.assert_close(ev.f1, torch.tensor(f, dtype=torch.float64))
    torch.testing.assert_close(log_probs, logits.log_softmax(1))


def test_sequence_targets_count_whole_sequences():
    y = torch.tensor([[1, 2, 3], [1, 2, 3], [0, 0, 0]])
    logits = torch.full((3, 3, 4), -5.0)
    logits.scatter_(2, torch.tensor([[1, 2, 3], [1, 2, 0], [0, 0, 0]]).unsqueeze(2), 5.0)
    ev, _ = evaluate(Fixed(logits), batches(y, 2), 4)
    assert ev.top1 == 2 / 3  # the second sequence has one wrong token
    assert ev.token_acc == 8 / 9
    assert exact_matches(logits, y) == 2
    assert ev.confusion.sum() == 9
    torch.testing.assert_close(token_loss(logits, y),
                               torch.nn.functional.cross_entropy(logits.view(9, 4), y.view(9)))
