"""Statistical baselines scored on the model's own test windows: seasonal naive and ETS.

At every test window (series s, forecast origin t) a baseline is fitted to the whole known past of
the series, steps [0, t) of each variable, and forecasts the H steps from t, so it is scored on
exactly the targets the model is. Legend: C variables, H horizon steps, m season.

- seasonal naive: the last season repeated; its interval is Gaussian around it with the in-sample
  seasonal-naive residual spread, widened by the number of seasons ahead, sd_h = sd * sqrt(k + 1),
  k = floor((h - 1) / m) (the textbook seasonal-naive forecast distribution).
- ETS: statsmodels' `ETSModel` with additive errors; trend (none or damped additive) and season
  (none, or additive when the past holds two full seasons) chosen by AICc; its exact predictive
  interval.

Intervals are the central `level` share (0.8 for a model's 0.1/0.9 quantiles); without a level only
point metrics are reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm

from panformer.engine.runlog import progress_bar
from panformer.timeseries.forecast_metrics import ForecastMetrics
from panformer.timeseries.windows import WindowDataset

# history (T,) -> point (H,), lower (H,), upper (H,)
Forecaster = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def seasonal_naive_forecaster(*, season: int, horizon: int, level: float) -> Forecaster:
    def forecast(history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = season if len(history) > season else 1
        steps = np.arange(horizon)
        point = history[-m:][steps % m]
        residuals = history[m:] - history[:-m]
        sd = float(np.sqrt(np.mean(residuals**2))) if len(residuals) else 0.0
        half = norm.ppf(0.5 + level / 2) * sd * np.sqrt(steps // m + 1)
        return point, point - half, point + half

    return forecast


def ets_forecaster(*, season: int, horizon: int, level: float) -> Forecaster:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    def forecast(history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = pd.Series(history)  # statsmodels' ETS predictions need an indexed series
        seasons = [None, "add"] if season > 1 and len(history) >= 2 * season else [None]
        best = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter from the optimiser on short series
            for trend in (None, "add"):
                for seasonal in seasons:
                    fitted = ETSModel(
                        y, error="add", trend=trend, damped_trend=trend is not None, seasonal=seasonal,
                        seasonal_periods=season if seasonal else None,
                    ).fit(disp=False)
                    if best is None or fitted.aicc < best.aicc:
                        best = fitted
            frame = best.get_prediction(start=len(y), end=len(y) + horizon - 1).summary_frame(alpha=1 - level)
        return frame["mean"].to_numpy(), frame["pi_lower"].to_numpy(), frame["pi_upper"].to_numpy()

    return forecast


BASELINES: dict[str, Callable[..., Forecaster]] = {"seasonal_naive": seasonal_naive_forecaster, "ets": ets_forecaster}


def baseline_metrics(
    windows: WindowDataset, *, season: int, horizon: int, level: float | None
) -> dict[str, dict[str, float]]:
    """{baseline name: ForecastMetrics of its forecasts over `windows`} (coverage and width with a level)."""
    results = {}
    with progress_bar(enabled=len(windows) > 1) as bar:
        for name, make in BASELINES.items():
            forecast = make(season=season, horizon=horizon, level=level or 0.8)
            metrics = ForecastMetrics()
            task = bar.add_task(f"{name} on test windows", total=len(windows), status="")
            for i, (s, t) in enumerate(windows.origins):
                item = windows[i]
                past = windows.series[s][:, :t].double().numpy()  # (C, t): everything known at the origin
                per_variable = [forecast(history) for history in past]  # C x (point, lower, upper), each (H,)
                point, lower, upper = (torch.from_numpy(np.stack(part))[None] for part in zip(*per_variable, strict=True))
                outputs = {"point": point} | ({"lower": lower, "upper": upper} if level else {})
                metrics.update({"target": item["target"][None], "scale": item["scale"][None]}, outputs)
                bar.advance(task)
            results[name] = metrics.compute()
    return results
