"""The classification models: padding invariance, missing values, periods, the VSFormer prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panformer.timeseries.models.mptsnet import MPTSNet, dominant_periods
from panformer.timeseries.models.transformer import SeriesTransformer
from panformer.timeseries.models.vsformer import VSFormer


def build(name: str):
    torch.manual_seed(0)
    if name == "mptsnet":
        return MPTSNet(channels=3, num_classes=4, periods=[5, 8], amplitudes=[2.0, 1.0], dim=16, num_heads=2)
    cls = VSFormer if name == "vsformer" else SeriesTransformer
    return cls(channels=3, num_classes=4, max_length=40, dim=16, depth=2, num_heads=2, patch=4, stride=2)


@pytest.mark.parametrize("name", ["transformer", "vsformer", "mptsnet"])
def test_padding_does_not_change_the_prediction(name):
    model = build(name).eval()
    series = torch.randn(1, 3, 23)
    alone = model(series, torch.tensor([23]))
    padded = torch.cat([series, torch.randn(1, 3, 17) * 100], dim=-1)  # garbage after the end
    in_batch = model(torch.cat([padded, torch.randn(1, 3, 40)]), torch.tensor([23, 40]))
    torch.testing.assert_close(in_batch[:1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "vsformer", "mptsnet"])
def test_missing_values_give_finite_outputs_and_gradients(name):
    model = build(name)
    values = torch.randn(2, 3, 40)
    values[0, 1, 5:9] = float("nan")
    logits = model(values, torch.tensor([40, 31]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dominant_periods_finds_the_planted_period():
    t = np.arange(120)
    rng = np.random.default_rng(0)
    series = [np.stack([np.sin(2 * np.pi * t / 12), np.cos(2 * np.pi * t / 12)]) + 0.1 * rng.normal(size=(2, 120))
              for _ in range(5)]
    periods, amplitudes = dominant_periods(series, k=2, max_length=120)
    assert periods[0] == 12 and amplitudes[0] > amplitudes[1]


def test_vsformer_prior_is_fitted_and_used():
    model = build("vsformer").eval()
    class_means = torch.randn(4, 3, 40)
    model.fit_prior(class_means)
    n = model.prior.shape[0]
    assert torch.allclose(model.prior.diagonal()[:n], torch.ones(n), atol=1e-5)  # cos-sim of a token with itself
    x, lengths = torch.randn(2, 3, 40), torch.tensor([40, 40])
    before = model(x, lengths)
    with torch.no_grad():
        model.prior_gate.mul_(5.0)
    assert not torch.allclose(model(x, lengths), before)  # the prior really enters attention
