"""Forecast losses, metrics and the seasonal-naive baseline.

Legend: B batch, C variables, L context steps, H horizon steps, Q quantiles, N sensors.

Point metrics are in the data's own units: MAE, MSE, sMAPE (in %) and MASE (the absolute error divided
by the in-sample seasonal-naive error of the series' training part, so MASE < 1 beats seasonal naive
on average). With quantiles, coverage is the share of targets inside [lowest, highest] quantile, and
width is that interval's mean width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from panformer.engine.domain import Metrics


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean quantile (pinball) loss. pred (..., Q), target (...), quantiles (Q,) in (0, 1)."""
    error = target.unsqueeze(-1) - pred
    return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()


def seasonal_naive(context: Tensor, *, horizon: int, season: int) -> Tensor:
    """Repeat the last full season of the context. context (..., L) -> (..., H)."""
    season = min(season, context.shape[-1])
    last = context[..., -season:]
    reps = math.ceil(horizon / season)
    return last.repeat(*([1] * (last.dim() - 1)), reps)[..., :horizon]


def seasonal_naive_scale(series: np.ndarray, *, season: int) -> np.ndarray:
    """MASE denominator per variable: mean |y_t - y_{t-m}| over the series (C, T).

    Falls back to m = 1 when the series is not longer than one season. A constant series has no
    in-sample error; its scale is 1 so its MASE equals its MAE rather than dividing by zero.
    """
    m = season if series.shape[1] > season else 1
    diffs = np.abs(series[:, m:].astype(np.float64) - series[:, :-m])
    scale = diffs.mean(axis=1)
    return np.where(scale > 0, scale, 1.0)


class ForecastMetrics(Metrics):
    """MAE, MSE, MASE, sMAPE, and interval coverage/width when the outputs carry an interval.

    `update` takes the batch (target (B, C, H), scale (B, C)) and outputs {"point": (B, C, H),
    optionally "lower"/"upper": (B, C, H)}, all in the data's units.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def _add(self, key: str, value: Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value.double().sum())

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        target, point = batch["target"].double(), outputs["point"].double()
        error = point - target
        self._add("mae", error.abs())
        self._add("mse", error.square())
        self._add("mase", error.abs() / batch["scale"].double()[..., None])
        denominator = target.abs() + point.abs()
        ratio = torch.where(denominator > 0, 2 * error.abs() / denominator.clamp(min=1e-12), 0.0)
        self._add("smape", 100 * ratio)
        if "lower" in outputs:
            lower, upper = outputs["lower"].double(), outputs["upper"].double()
            self._add("coverage", ((target >= lower) & (target <= upper)).double())
            self._add("width", upper - lower)
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}


class TrafficMetrics(Metrics):
    """MAE, RMSE and MAPE (in %, over targets with |y| > `mape_floor`, the traffic convention)."""

    def __init__(self, *, mape_floor: float = 1e-3) -> None:
        self.mape_floor = mape_floor
        self.abs = self.sq = self.ape = 0.0
        self.count = self.ape_count = 0

    def update(self, batch: dict[str, Tensor], outputs: Tensor) -> None:
        target = batch["target"].double()
        error = outputs.double() - target
        self.abs += float(error.abs().sum())
        self.sq += float(error.square().sum())
        counted = target.abs() > self.mape_floor
        self.ape += float((error.abs()[counted] / target.abs()[counted]).sum())
        self.count += target.numel()
        self.ape_count += int(counted.sum())

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {
            "mae": self.abs / n,
            "rmse": math.sqrt(self.sq / n),
            "mape": 100 * self.ape / max(self.ape_count, 1),
        }


def score_baseline(
    windows: Dataset, forecast: Callable[[dict[str, Tensor]], Any], metrics: Metrics, *, batch_size: int = 256
) -> dict[str, float]:
    """Score a non-learned forecaster over a dataset of windows: `forecast(batch)` gives the outputs
    `metrics.update` takes."""
    for start in range(0, len(windows), batch_size):
        items = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
        batch = default_collate(items)
        metrics.update(batch, forecast(batch))
    return metrics.compute()


def seasonal_naive_metrics(windows: Dataset, *, season: int, horizon: int) -> dict[str, float]:
    """The seasonal-naive baseline's MAE, MSE, MASE and sMAPE over forecasting windows."""

    def forecast(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"point": seasonal_naive(batch["context"], horizon=horizon, season=season)}

    return score_baseline(windows, forecast, ForecastMetrics())
