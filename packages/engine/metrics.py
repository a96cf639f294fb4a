"""Metrics several domains share. Domain-specific ones live in their domain."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from panformer.engine.domain import Metrics


class ClassificationMetrics(Metrics):
    """Accuracy, macro-F1 (over classes present in the labels) and top-k accuracy from logits.

    `update(batch, logits)` reads the labels from `batch[target_key]`; the confusion matrix
    (rows true, columns predicted) stays available for plots.
    """

    def __init__(self, num_classes: int, *, top_k: Sequence[int] = (), target_key: str = "target") -> None:
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.top_k = [k for k in top_k if k > 1]
        self.top_k_hits = dict.fromkeys(self.top_k, 0)
        self.target_key = target_key

    def update(self, batch: dict[str, Tensor], outputs: Tensor) -> None:
        """outputs: logits (B, K)."""
        logits = outputs.detach().float().cpu()
        target = batch[self.target_key].cpu()
        pred = logits.argmax(-1)
        self.confusion += torch.bincount(
            target * self.confusion.shape[0] + pred, minlength=self.confusion.numel()
        ).view_as(self.confusion)
        for k in self.top_k:
            best = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
            self.top_k_hits[k] += int((best == target[:, None]).any(-1).sum())

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp = c.diag()
        precision = tp / c.sum(0).clamp(min=1)
        recall = tp / c.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        present = c.sum(1) > 0
        total = max(float(c.sum()), 1.0)
        return {
            "accuracy": float(tp.sum()) / total,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            **{f"top{k}_accuracy": hits / total for k, hits in self.top_k_hits.items()},
        }
