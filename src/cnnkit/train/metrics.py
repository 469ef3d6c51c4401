"""Classification metrics from one pass over a loader: loss, top-1/top-5, confusion, per-class P/R/F1."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.device import autocast


@dataclass
class Evaluation:
    """Metrics of one pass. For sequence targets (labels (N, T)) a sample counts as correct only
    when every token is; loss, top-5 and the confusion matrix are per token."""
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # (K, K) int64, rows = true class, columns = predicted
    count: int
    token_acc: float = float("nan")  # top-1 per token (equals top1 for plain classification)

    @property
    def precision(self) -> torch.Tensor:
        return _safe_div(self.confusion.diag(), self.confusion.sum(0))

    @property
    def recall(self) -> torch.Tensor:
        return _safe_div(self.confusion.diag(), self.confusion.sum(1))

    @property
    def f1(self) -> torch.Tensor:
        p, r = self.precision, self.recall
        return _safe_div(2 * p * r, p + r)

    def per_class_table(self, classes: list[str]) -> str:
        lines = [f"{'class':>14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
        support = self.confusion.sum(1)
        for i, name in enumerate(classes):
            lines.append(f"{name[:14]:>14} {self.precision[i]:9.4f} {self.recall[i]:7.4f} "
                         f"{self.f1[i]:7.4f} {int(support[i]):8d}")
        lines.append(f"{'macro avg':>14} {self.precision.mean():9.4f} {self.recall.mean():7.4f} "
                     f"{self.f1.mean():7.4f} {self.count:8d}")
        return "\n".join(lines)


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, and 0 where b is 0 (a class never predicted or never present), as sklearn does."""
    a, b = a.double(), b.double()
    return torch.where(b > 0, a / torch.where(b > 0, b, 1.0), 0.0)


def token_loss(logits: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Cross-entropy of logits (B, K) with labels (B,), or per token of (B, T, K) with (B, T)."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), **kwargs)


def exact_matches(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Samples whose every token is predicted right (for plain labels: the correct ones)."""
    return (logits.argmax(-1) == y).view(len(y), -1).all(1).sum().item()


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, *, precision: str = "fp32",
             keep_outputs: bool = False, reduce_sum=None) -> tuple[Evaluation, torch.Tensor | None]:
    """Run `model` over `loader`; return the metrics (and the log-probabilities if asked).

    `reduce_sum` (a tensor → summed-over-ranks tensor function) makes the metrics those of the
    union of every rank's loader: the sums and the confusion matrix are reduced, never the
    ratios, so shards of unequal size weigh right. The log-probabilities stay this rank's own.
    """
    model.eval()
    loss_sum, exact, top1, top5, count, tokens = 0.0, 0, 0, 0, 0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    outputs = []
    k = min(5, num_classes)
    # Batches go where the model is (a parameter-free module stays on the CPU).
    device = next(model.parameters(), torch.empty(0)).device
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(precision, device.type):
            logits = model(x)
        logits = logits.float()
        exact += exact_matches(logits, y)
        flat_logits, flat_y = logits.flatten(0, -2), y.flatten()  # (B·T, K), (B·T,)
        loss_sum += F.cross_entropy(flat_logits, flat_y, reduction="sum").item()
        topk = flat_logits.topk(k, dim=1).indices  # (B·T, k)
        top1 += (topk[:, 0] == flat_y).sum().item()
        top5 += (topk == flat_y[:, None]).any(1).sum().item()
        confusion += torch.bincount(flat_y * num_classes + topk[:, 0],
                                    minlength=num_classes ** 2).cpu()
        count, tokens = count + len(y), tokens + len(flat_y)
        if keep_outputs:
            outputs.append(logits.log_softmax(-1))
    if reduce_sum is not None:
        totals = reduce_sum(torch.tensor([loss_sum, exact, top1, top5, count, tokens],
                                         dtype=torch.float64))
        loss_sum = totals[0].item()
        exact, top1, top5, count, tokens = (int(v) for v in totals[1:].tolist())
        confusion = reduce_sum(confusion)
    evaluation = Evaluation(loss=loss_sum / max(1, tokens), top1=exact / max(1, count),
                            top5=top5 / max(1, tokens),
                            confusion=confusion.view(num_classes, num_classes), count=count,
                            token_acc=top1 / max(1, tokens))
    return evaluation, (torch.cat(outputs) if keep_outputs else None)
