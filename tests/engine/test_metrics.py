from __future__ import annotations

import pytest
import torch

from panformer.engine.metrics import ClassificationMetrics


def test_accuracy_macro_f1_and_top_k_by_hand():
    metrics = ClassificationMetrics(3, top_k=(2,))
    logits = torch.tensor([[3.0, 2.0, 0.0],   # true 0, predicted 0
                           [3.0, 2.0, 0.0],   # true 1, predicted 0, second choice 1
                           [0.0, 1.0, 3.0],   # true 2, predicted 2
                           [2.0, 0.0, 1.0]])  # true 1, predicted 0, second choice 2
    metrics.update({"target": torch.tensor([0, 1])}, logits[:2])
    metrics.update({"target": torch.tensor([2, 1])}, logits[2:])
    result = metrics.compute()
    assert result["accuracy"] == pytest.approx(2 / 4)
    assert result["top2_accuracy"] == pytest.approx(3 / 4)
    # F1: class 0: p=1/3, r=1 -> 0.5; class 1: 0; class 2: 1 -> mean 0.5
    assert result["macro_f1"] == pytest.approx(0.5)
    assert metrics.confusion.tolist() == [[1, 0, 0], [2, 0, 0], [0, 0, 1]]
