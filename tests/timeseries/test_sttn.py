"""STTN: the synthetic traffic generator, adjacency files, the graph mask, baselines and the real CLI."""

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
from typer.testing import CliRunner

from panformer.engine.errors import UserError
from panformer.timeseries.cli import app
from panformer.timeseries.forecast_metrics import TrafficMetrics
from panformer.timeseries.models.sttn import STTN
from panformer.timeseries.spatiotemporal import (
    TrafficDataConfig,
    day_slots,
    read_adjacency,
    read_traffic,
    synthetic_traffic,
    traffic_baselines,
    write_traffic_csv,
)

BIN = Path(sys.executable).parent
TINY = ["--set", "data.sensors=5", "--set", "data.days=4", "--set", "data.steps_per_day=24",
        "--set", "data.context=6", "--set", "data.horizon=3", "--set", "model.dim=16", "--set", "train.epochs=2"]


def test_synthetic_traffic_is_seeded_symmetric_and_daily():
    a, b = synthetic_traffic(sensors=6, days=3, seed=1), synthetic_traffic(sensors=6, days=3, seed=1)
    np.testing.assert_array_equal(a.readings, b.readings)
    assert not np.array_equal(a.readings, synthetic_traffic(sensors=6, days=3, seed=2).readings)
    assert a.readings.shape == (3 * 48, 6) and (a.readings >= 0).all()
    edges = set(map(tuple, a.edge_index.T.tolist()))
    assert edges and all((d, s) in edges for s, d in edges)  # undirected
    hourly = a.readings.mean(1).reshape(3, 48).mean(0)
    assert hourly[16] > 2 * hourly[4]  # the 8:00 rush hour is busier than 2:00
    assert a.times[48].endswith("00:00:00") and day_slots(a.times, 48)[49] == 1


def test_adjacency_csv_is_read_and_made_undirected(tmp_path):
    path = tmp_path / "adj.csv"
    path.write_text("src,dst,weight\na,b,1\nb,c,0.5\nc,a,0\n")
    edges = read_adjacency(path, ["a", "b", "c"])
    assert sorted(map(tuple, edges.T.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]  # weight 0 dropped


@pytest.mark.parametrize(
    ("text", "needle"),
    [("src,to\na,b\n", "missing column(s) dst"), ("src,dst\na,zz\n", "['zz']"),
     ("src,dst,weight\na,b,heavy\n", "non-numeric")],
)
def test_bad_adjacency_is_a_user_error(tmp_path, text, needle):
    path = tmp_path / "adj.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=r"adj\.csv") as err:
        read_adjacency(path, ["a", "b"])
    assert needle in str(err.value)


def test_readings_file_needs_an_adjacency(tmp_path):
    with pytest.raises(UserError, match=r"data\.adjacency"):
        read_traffic(tmp_path / "r.csv", None)


def test_spatial_attention_only_reads_graph_neighbours():
    torch.manual_seed(0)
    # Sensors 0-1 are linked, sensor 2 is alone; with one block, 2 cannot hear 0 or 1.
    model = STTN(num_nodes=3, edge_index=torch.tensor([[0, 1], [1, 0]]), context=6, horizon=2, steps_per_day=4,
                 dim=16, depth=1, num_heads=2).eval()
    x, slots = torch.randn(1, 3, 6), torch.arange(6)[None] % 4
    changed = x.clone()
    changed[:, 0] += 5.0
    with torch.no_grad():
        before, after = model(x, slots), model(changed, slots)
    assert before.shape == (1, 3, 2)
    torch.testing.assert_close(before[:, 2], after[:, 2])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_traffic_metrics_by_hand():
    metrics = TrafficMetrics()
    metrics.update({"target": torch.tensor([[2.0, 4.0, 0.0]])}, torch.tensor([[1.0, 4.0, 3.0]]))
    result = metrics.compute()
    assert result["mae"] == pytest.approx(4 / 3)
    assert result["rmse"] == pytest.approx(np.sqrt(10 / 3))
    assert result["mape"] == pytest.approx(100 * 0.5 / 2)  # the zero target is left out of MAPE


def test_historical_average_is_exact_on_a_purely_daily_signal():
    traffic = synthetic_traffic(sensors=3, days=6, steps_per_day=8, seed=0)
    profile = np.tile(np.arange(8, dtype=np.float32)[:, None] * [1.0, 2.0, 3.0], (6, 1)) + 1
    traffic.readings = profile.astype(np.float32)
    result = traffic_baselines(traffic, TrafficDataConfig(steps_per_day=8, context=4, horizon=2))
    assert result["historical_average"]["mae"] == pytest.approx(0.0, abs=1e-6)
    assert result["last_value"]["mae"] > 1.0


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread is fastest for these tiny models
    return subprocess.run([str(BIN / "panformer-timeseries"), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_train_evaluate_predict_on_tiny_synthetic_and_file_data(tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--recipe", "sttn-synthetic", "--out", str(run), "--device", "cpu", *TINY)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["test"]) >= {"mae", "rmse", "mape"}

    traffic = synthetic_traffic(sensors=5, days=4, steps_per_day=24, seed=0)
    readings, adjacency = tmp_path / "readings.csv", tmp_path / "adjacency.csv"
    write_traffic_csv(traffic, readings, adjacency)
    out = tmp_path / "forecast.csv"
    result = cli("predict", "--checkpoint", str(run), "--input", str(readings), "--output", str(out), "--plot")
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 5 * 3 and set(frame["sensor"]) == set(traffic.sensors)
    assert frame["time"].iloc[0] == "2024-01-05 00:00:00"  # the hourly clock is continued
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

    # The same data as files trains too (readings CSV + adjacency CSV).
    result = cli("train", "--recipe", "sttn-synthetic", "--data", str(readings), "--out", str(tmp_path / "r2"),
                 "--device", "cpu", *TINY, "--set", f"data.adjacency={adjacency}", "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr

    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"time": range(10), "x": range(10)}).to_csv(wrong, index=False)
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(run), "--input", str(wrong),
                                      "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "sensor columns" in result.stderr
