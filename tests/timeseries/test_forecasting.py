"""Forecasting: windows without leakage, metrics by hand, the models' contracts, and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from panformer.engine.config import validate_recipe
from panformer.engine.errors import UserError
from panformer.timeseries.cli import app
from panformer.timeseries.domain import TimeSeriesDomain
from panformer.timeseries.forecast_metrics import (
    ForecastMetrics,
    pinball_loss,
    seasonal_naive,
    seasonal_naive_metrics,
    seasonal_naive_scale,
)
from panformer.timeseries.forecasting import forecast_outputs
from panformer.timeseries.models.encoder_decoder import EncoderDecoderForecaster
from panformer.timeseries.models.patchtst import PatchTST
from panformer.timeseries.windows import (
    Origins,
    chronological_split,
    make_forecast_splits,
    window_starts,
)
from tests.cli import assert_user_error, invoke

BIN = Path(sys.executable).parent


# --- windows and splits -------------------------------------------------------------------------


def test_chronological_split_cuts_val_and_test_from_the_end():
    points = chronological_split(100, context=20, horizon=5, val_steps=10, test_steps=15)
    assert (points.train_end, points.val_end, points.length) == (75, 85, 100)


def test_window_starts_keep_the_last_window_and_respect_context():
    assert window_starts(0, 20, context=8, horizon=4, stride=3) == [10, 13, 16]
    assert window_starts(10, 20, context=8, horizon=4) == list(range(10, 17))
    assert window_starts(0, 10, context=8, horizon=4) == []


def test_splits_never_leak_targets_or_statistics():
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(2, 60)).astype(np.float32), rng.normal(size=(2, 45)).astype(np.float32)]
    for s in series:
        s[:, -16:] += 1000.0  # validation and test parts: any leak would show in the fitted statistics
    splits = make_forecast_splits(series, context=10, horizon=4, val_steps=8, test_steps=8, season=3, stride=2)
    ends = [(s.shape[1] - 16, s.shape[1] - 8, s.shape[1]) for s in series]
    for dataset, (lo, hi) in [(splits.train, (0, 0)), (splits.val, (0, 1)), (splits.test, (1, 2))]:
        assert len(dataset) > 0
        for s, t in dataset.origins:
            begin = 0 if dataset is splits.train else ends[s][lo]
            end = ends[s][hi] if dataset is not splits.train else ends[s][0]
            assert begin <= t and t + 4 <= end and t - 10 >= 0
    train_parts = np.concatenate([s[:, :-16] for s in series], axis=1)
    np.testing.assert_allclose(splits.mean, train_parts.mean(1), rtol=1e-5)
    np.testing.assert_allclose(splits.std, train_parts.std(1), rtol=1e-5)
    assert np.abs(splits.mean).max() < 10
    np.testing.assert_allclose(splits.scales[0], seasonal_naive_scale(series[0][:, :-16], season=3))
    item = splits.test[len(splits.test) - 1]
    np.testing.assert_array_equal(item["target"], series[1][:, -4:])
    np.testing.assert_array_equal(item["context"], series[1][:, -14:-4])


def test_horizon_longer_than_the_series_is_a_user_error():
    with pytest.raises(UserError, match=r"has 30 steps.*shorten data.context or data.horizon"):
        make_forecast_splits([np.zeros((1, 30))], context=10, horizon=12, val_steps=12, test_steps=12, season=1)
    with pytest.raises(UserError, match="at least the horizon"):
        chronological_split(100, context=10, horizon=12, val_steps=5, test_steps=12)


# --- metrics and baselines, against hand-computed values ----------------------------------------


def test_seasonal_naive_repeats_the_last_season():
    context = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7]])
    assert seasonal_naive(context, horizon=5, season=3).tolist() == [[5, 6, 7, 5, 6]]
    assert seasonal_naive(context, horizon=2, season=1).tolist() == [[7, 7]]


def test_seasonal_naive_scale_by_hand():
    series = np.array([[1.0, 2, 4, 7, 11], [5, 5, 5, 5, 5]])
    # m = 2: |4-1|, |7-2|, |11-4| -> mean 5; a constant series gets scale 1 instead of 0
    np.testing.assert_allclose(seasonal_naive_scale(series, season=2), [5.0, 1.0])
    np.testing.assert_allclose(seasonal_naive_scale(series[:, :2], season=2), [1.0, 1.0])  # falls back to m=1


def test_forecast_metrics_by_hand():
    metrics = ForecastMetrics()
    batch = {"target": torch.tensor([[[1.0, 2.0, 0.0]]]), "scale": torch.tensor([[2.0]])}
    outputs = {"point": torch.tensor([[[2.0, 2.0, 0.0]]]),
               "lower": torch.tensor([[[0.0, 2.5, -1.0]]]), "upper": torch.tensor([[[3.0, 3.0, 1.0]]])}
    metrics.update(batch, outputs)
    result = metrics.compute()
    assert result["mae"] == pytest.approx(1 / 3)
    assert result["mse"] == pytest.approx(1 / 3)
    assert result["mase"] == pytest.approx(1 / 6)
    assert result["smape"] == pytest.approx(100 * (2 * 1 / 3) / 3)  # 0/0 counts as a perfect step
    assert result["coverage"] == pytest.approx(2 / 3)  # 2.0 is below [2.5, 3.0]
    assert result["width"] == pytest.approx((3 + 0.5 + 2) / 3)


def test_pinball_loss_by_hand():
    target = torch.tensor([10.0])
    pred = torch.tensor([[8.0, 10.0, 13.0]])
    q = torch.tensor([0.1, 0.5, 0.9])
    # errors y - q_hat: 2, 0, -3 -> 0.1*2, 0, (0.9-1)*(-3)
    assert float(pinball_loss(pred, target, q)) == pytest.approx((0.2 + 0 + 0.3) / 3)


def test_quantile_outputs_are_sorted_and_the_median_is_the_point():
    pred = torch.tensor([[[[3.0, 1.0, 2.0]]]])
    out = forecast_outputs(pred, [0.1, 0.5, 0.9])
    assert (float(out["lower"]), float(out["point"]), float(out["upper"])) == (1.0, 2.0, 3.0)


def test_seasonal_naive_metrics_on_a_perfectly_seasonal_series_is_zero():
    series = [np.tile(np.array([1.0, 5.0, 3.0, 2.0], dtype=np.float32), 15)[None]]
    splits = make_forecast_splits(series, context=8, horizon=4, val_steps=4, test_steps=8, season=4)
    assert seasonal_naive_metrics(splits.test, season=4, horizon=4)["mase"] == 0.0
    assert seasonal_naive_metrics(splits.test, season=1, horizon=4)["mase"] > 0.5


# --- models -------------------------------------------------------------------------------------


def test_patchtst_with_instance_norm_is_affine_equivariant():
    torch.manual_seed(0)
    model = PatchTST(channels=2, context=24, horizon=6, num_outputs=3, patch=8, stride=4, dim=16, depth=1,
                     num_heads=2).eval()
    x = torch.randn(3, 2, 24)
    with torch.no_grad():
        base, shifted = model(x), model(5 * x + 100)
    assert base.shape == (3, 2, 6, 3)
    torch.testing.assert_close(shifted, 5 * base + 100, rtol=1e-4, atol=1e-3)


def test_patchtst_channels_are_independent():
    torch.manual_seed(0)
    model = PatchTST(channels=2, context=16, horizon=4, patch=4, stride=4, dim=16, depth=1, num_heads=2).eval()
    x = torch.randn(1, 2, 16)
    y = x.clone()
    y[:, 1] = torch.randn(16)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, 0], model(y)[:, 0])


def test_encoder_decoder_decoding_is_causal_and_autoregressive():
    torch.manual_seed(0)
    model = EncoderDecoderForecaster(channels=2, context=12, horizon=5, num_outputs=3, point_index=1, dim=16,
                                     depth=1, decoder_depth=1, num_heads=2).eval()
    x, target = torch.randn(4, 2, 12), torch.randn(4, 2, 5)
    with torch.no_grad():
        forced = model(x, target)
        changed = target.clone()
        changed[..., 3:] += 10.0  # values after step 3 may change outputs from step 4 on only
        forced_changed = model(x, changed)
        torch.testing.assert_close(forced[:, :, :4], forced_changed[:, :, :4])
        assert not torch.allclose(forced[:, :, 4], forced_changed[:, :, 4])
        # Autoregressive decoding equals teacher forcing on the model's own point forecasts.
        free = model(x)
        torch.testing.assert_close(free, model(x, free[..., 1]), rtol=1e-4, atol=1e-4)


def test_quantiles_without_the_median_are_rejected():
    domain = TimeSeriesDomain()
    raw = {"domain": "timeseries", "task": "forecasting", "model": {"name": "patchtst", "quantiles": [0.1, 0.9]}}
    with pytest.raises(UserError, match=r"include 0\.5"):
        validate_recipe(domain.recipe_type_for, raw, source="test")


# --- the real CLI: train -> evaluate -> predict -------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    """The installed command in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread is fastest for these tiny models
    return subprocess.run([str(BIN / "panformer-timeseries"), *args], capture_output=True, text=True,
                          timeout=300, env=env)




@pytest.fixture(scope="module")
def wide_csv(tmp_path_factory) -> Path:
    """Two seasonal series with a trend, wide form with an id column."""
    folder = tmp_path_factory.mktemp("fc")
    t = np.arange(120)
    frames = [
        pd.DataFrame({"id": name, "time": t, "load": level + 0.1 * t + 5 * np.sin(2 * np.pi * t / 12),
                      "temp": 10 + np.cos(2 * np.pi * t / 12)})
        for name, level in [("north", 50.0), ("south", 20.0)]
    ]
    path = folder / "loads.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run_dir(wide_csv) -> Path:
    out = wide_csv.parent / "run"
    result = cli("train", "--recipe", "forecast-airline", "--data", str(wide_csv), "--out", str(out),
                 "--set", "train.epochs=2", "--set", "data.context=24", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


def test_train_and_evaluate_report_forecast_metrics(run_dir, wide_csv):
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["test"]) >= {"mae", "mse", "mase", "smape", "coverage", "width", "loss"}
    plot = run_dir.parent / "evaluation.png"
    result = cli("evaluate", "--checkpoint", str(run_dir), "--data", str(wide_csv), "--json", "--device", "cpu",
                 "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["mase"] == pytest.approx(saved["test"]["mase"], rel=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_writes_forecasts_with_intervals_and_plots(run_dir, wide_csv, tmp_path, suffix):
    out = tmp_path / f"forecast{suffix}"
    args = ("predict", "--checkpoint", str(run_dir), "--input", str(wide_csv), "--output", str(out), "--plot")
    if suffix == ".csv":
        result = cli(*args)
        assert result.returncode == 0, result.stderr
    else:
        result = invoke(app, *args)
        assert result.exit_code == 0, result.output
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert len(frame) == 2 * 2 * 12  # series x variables x horizon
    assert {"id", "variable", "step", "time", "forecast", "lower", "upper", "q0.1", "q0.9"} <= set(frame.columns)
    assert (frame["lower"] <= frame["forecast"]).all() and (frame["forecast"] <= frame["upper"]).all()
    assert str(frame["time"].iloc[0]) == "120"  # the regular numeric time axis is continued
    for name in ("north", "south"):
        png = out.with_name(f"forecast-{name}.png")
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_predict_bad_inputs_are_exit_2(run_dir, tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,time,load,temp\nnorth,1,2,3\nnorth,2,3\n")
    assert_user_error(invoke(app, "predict", "--checkpoint", str(run_dir), "--input", str(ragged),
                          "--output", str(tmp_path / "p.csv")), str(ragged), "line 3")
    short = tmp_path / "short.csv"
    pd.DataFrame({"time": range(5), "load": range(5), "temp": range(5)}).to_csv(short, index=False)
    assert_user_error(invoke(app, "predict", "--checkpoint", str(run_dir), "--input", str(short),
                          "--output", str(tmp_path / "p.csv")), "needs the last 24")
    other = tmp_path / "other.csv"
    pd.DataFrame({"time": range(30), "power": range(30)}).to_csv(other, index=False)
    assert_user_error(invoke(app, "predict", "--checkpoint", str(run_dir), "--input", str(other),
                          "--output", str(tmp_path / "p.csv")), "variables ['power']")
    assert not (tmp_path / "p.csv").exists()


def test_train_with_a_horizon_longer_than_the_series_is_exit_2(tmp_path):
    result = invoke(app, "train", "--recipe", "forecast-airline", "--set", "data.horizon=200",
                 "--set", "data.val_steps=200", "--set", "data.test_steps=200", "--out", str(tmp_path / "r"))
    assert_user_error(result, "aeon:Airline", "has 144 steps")


def test_window_origins_cost_numbers_per_series_not_per_window():
    parts = [(0, 100), (30, 61), (5, 20), (0, 7)]
    for stride in (1, 3, 7):
        origins = Origins.of(parts, context=10, horizon=4, stride=stride)
        expected = [(s, t) for s, (b, e) in enumerate(parts) for t in window_starts(b, e, context=10, horizon=4,
                                                                                     stride=stride)]
        assert list(origins) == expected and [origins[i] for i in range(len(origins))] == expected
        assert origins[-1] == expected[-1] and len(origins) == len(expected)
    assert len(Origins.of([(0, 10**9)], context=10, horizon=4, stride=1).firsts) == 1
