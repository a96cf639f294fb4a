"""Spatio-temporal forecasting on a sensor graph (traffic): data, synthetic generator, task.

Data: a readings table (a time column and one column per sensor, CSV or Parquet) plus an adjacency CSV
with columns `src, dst[, weight]` naming sensors (edges with weight <= 0 are dropped; the graph is
made undirected, as congestion spreads both ways along a road). Or `synthetic`: a seeded generator
(`synthetic_traffic`), clearly not real traffic, for demos and tests.

Legend: T time steps, N sensors, E edges, L context steps, H horizon.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Metrics, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.timeseries.forecast_metrics import TrafficMetrics, score_baseline
from panformer.timeseries.forecasting import future_times
from panformer.timeseries.models.sttn import STTN
from panformer.timeseries.tabular import read_table, write_table
from panformer.timeseries.windows import ForecastSplits, WindowDataset, make_forecast_splits

SYNTHETIC = "synthetic"


@dataclass
class TrafficData:
    """Readings (T, N) of N sensors, the sensor graph as an edge index (2, E), and time labels (T,)."""

    sensors: list[str]
    readings: np.ndarray
    edge_index: np.ndarray
    times: np.ndarray
    source: str


def synthetic_traffic(*, sensors: int = 12, days: int = 14, steps_per_day: int = 48, seed: int = 0) -> TrafficData:
    """SYNTHETIC traffic-like flows: a daily two-peak profile plus disturbances that diffuse over a
    random sensor graph. Deterministic for a seed.

    The graph links each sensor to its 3 nearest neighbours (random positions in the unit square). Each
    sensor's flow is its own daily profile (rush hours near 8:00 and 17:30) plus a disturbance that
    decays and spreads to neighbours every step, so neighbours' recent readings carry real signal.
    """
    rng = np.random.default_rng(seed)
    position = rng.uniform(size=(sensors, 2))
    distance = np.linalg.norm(position[:, None] - position[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, : min(3, sensors - 1)]
    adjacency = np.zeros((sensors, sensors))
    for i, row in enumerate(nearest):
        adjacency[i, row] = adjacency[row, i] = 1.0
    mixing = adjacency / adjacency.sum(1, keepdims=True).clip(min=1)

    steps = days * steps_per_day
    hour = (np.arange(steps) % steps_per_day) * 24.0 / steps_per_day
    peaks = np.exp(-(((hour - 8.0) / 1.5) ** 2)) + 0.8 * np.exp(-(((hour - 17.5) / 2.0) ** 2))
    amplitude = rng.uniform(60, 140, size=sensors)
    baseline = rng.uniform(20, 50, size=sensors)
    profile = baseline[None] + amplitude[None] * peaks[:, None]  # (T, N)

    disturbance = np.zeros((steps, sensors))
    state = np.zeros(sensors)
    for t in range(steps):
        shocks = rng.normal(0, 4, size=sensors) + (rng.uniform(size=sensors) < 0.01) * rng.normal(0, 40, size=sensors)
        state = 0.9 * (0.5 * state + 0.5 * mixing @ state) + shocks
        disturbance[t] = state
    readings = np.clip(profile + disturbance, 0, None).astype(np.float32)
    src, dst = np.nonzero(adjacency)
    times = pd.date_range("2024-01-01", periods=steps, freq=pd.Timedelta(days=1) / steps_per_day)
    return TrafficData(
        sensors=[f"s{i:02d}" for i in range(sensors)],
        readings=readings,
        edge_index=np.stack([src, dst]).astype(np.int64),
        times=times.astype(str).to_numpy(),
        source=f"{SYNTHETIC}(sensors={sensors}, days={days}, steps_per_day={steps_per_day}, seed={seed})",
    )


def write_traffic_csv(data: TrafficData, readings_path: Path, adjacency_path: Path) -> None:
    """Write readings (time + one column per sensor) and adjacency (src, dst, weight) CSVs."""
    frame = pd.DataFrame(data.readings, columns=data.sensors)
    frame.insert(0, "time", data.times)
    with atomic_path(readings_path) as tmp:
        frame.to_csv(tmp, index=False)
    names = np.asarray(data.sensors)
    edges = pd.DataFrame({"src": names[data.edge_index[0]], "dst": names[data.edge_index[1]], "weight": 1.0})
    with atomic_path(adjacency_path) as tmp:
        edges.to_csv(tmp, index=False)


def read_adjacency(path: Path, sensors: list[str]) -> np.ndarray:
    """Edge index (2, E) from a `src, dst[, weight]` CSV naming sensors; made undirected."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give an adjacency CSV with columns src, dst[, weight]")
    try:
        frame = pd.read_csv(path, skipinitialspace=True, dtype={"src": str, "dst": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise UserError(f"{path}: not a readable CSV ({type(err).__name__}); use columns src, dst[, weight]") from None
    missing = [c for c in ("src", "dst") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; use columns src, dst[, weight]")
    if "weight" in frame.columns:
        weight = pd.to_numeric(frame["weight"], errors="coerce")
        if weight.isna().any():
            raise UserError(f"{path}: column 'weight' holds a non-numeric value; use numbers only")
        frame = frame[weight > 0]
    index = {name: i for i, name in enumerate(sensors)}
    unknown = sorted((set(frame["src"].str.strip()) | set(frame["dst"].str.strip())) - set(index))
    if unknown:
        raise UserError(f"{path}: sensors {unknown[:5]} are not columns of the readings; name sensors as in the readings")
    src = frame["src"].str.strip().map(index).to_numpy()
    dst = frame["dst"].str.strip().map(index).to_numpy()
    edges = np.unique(np.concatenate([np.stack([src, dst]), np.stack([dst, src])], axis=1), axis=1)
    return edges[:, edges[0] != edges[1]].astype(np.int64)  # self loops are added by the mask


def read_traffic(readings: str | Path, adjacency: str | Path | None, *, time_column: str | None = None) -> TrafficData:
    if adjacency is None:
        raise UserError(f"--data {readings}: traffic readings need data.adjacency (a src, dst[, weight] CSV)")
    table = read_table(readings, time_column=time_column)
    if len(table.ids) != 1:
        raise UserError(f"{readings}: holds {len(table.ids)} series (an id column); traffic readings are one table")
    return TrafficData(
        sensors=table.variables,
        readings=table.values[0].T.copy(),
        edge_index=read_adjacency(Path(adjacency), table.variables),
        times=table.times[0],
        source=str(readings),
    )


def day_slots(times: np.ndarray, steps_per_day: int) -> np.ndarray:
    """Time-of-day slot (0..steps_per_day-1) of every step: from the clock when the times are dates,
    else counted from the first row (which is then taken to start a day)."""
    dates = pd.to_datetime(pd.Series(times), errors="coerce", format="mixed")
    if dates.notna().all():
        seconds = (dates - dates.dt.normalize()).dt.total_seconds().to_numpy()
        return (seconds * steps_per_day // 86400).astype(np.int64) % steps_per_day
    return np.arange(len(times), dtype=np.int64) % steps_per_day


class SlottedWindows(Dataset):
    """Forecasting windows plus the time-of-day slots of their context (L,) and target (H,) steps."""

    def __init__(self, windows: WindowDataset, slots: np.ndarray) -> None:
        self.windows, self.slots = windows, torch.from_numpy(slots)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = self.windows[i]
        _, t = self.windows.origins[i]
        item["slots"] = self.slots[t - self.windows.context : t]
        item["target_slots"] = self.slots[t : t + self.windows.horizon]
        return item


class TrafficDataConfig(StrictModel):
    source: str = Field(SYNTHETIC, description="'synthetic' or a readings .csv/.parquet (time + one column per sensor)")
    adjacency: str | None = Field(None, description="src, dst[, weight] CSV (needed with a readings file)")
    time_column: str | None = None
    steps_per_day: int = Field(48, ge=1, description="readings per day (time-of-day slots)")
    context: int = Field(12, ge=1)
    horizon: int = Field(12, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    sensors: int = Field(12, ge=2, description="synthetic: number of sensors")
    days: int = Field(14, ge=2, description="synthetic: days of readings")
    seed: int = Field(0, description="synthetic: generator seed")


class STTNConfig(StrictModel):
    name: Literal["sttn"] = "sttn"
    dim: int = Field(32, ge=8)
    depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class SpatioTemporalRecipe(Recipe):
    domain: Literal["timeseries"] = "timeseries"
    task: Literal["spatiotemporal"] = "spatiotemporal"
    data: TrafficDataConfig = TrafficDataConfig()
    model: STTNConfig = STTNConfig()


def load_traffic(data: TrafficDataConfig, source: str | None = None) -> TrafficData:
    source = source or data.source
    if source == SYNTHETIC:
        return synthetic_traffic(sensors=data.sensors, days=data.days, steps_per_day=data.steps_per_day, seed=data.seed)
    return read_traffic(source, data.adjacency, time_column=data.time_column)


def traffic_splits(traffic: TrafficData, data: TrafficDataConfig) -> tuple[ForecastSplits, np.ndarray]:
    """Chronological windows (the traffic convention: the last test_fraction for test, the
    val_fraction before it for validation) and every step's time-of-day slot."""
    steps = traffic.readings.shape[0]
    splits = make_forecast_splits(
        [traffic.readings.T], context=data.context, horizon=data.horizon,
        val_steps=max(data.horizon, round(data.val_fraction * steps)),
        test_steps=max(data.horizon, round(data.test_fraction * steps)),
        season=data.steps_per_day, names=[traffic.source],
    )
    return splits, day_slots(traffic.times, data.steps_per_day)


def traffic_baselines(traffic: TrafficData, data: TrafficDataConfig) -> dict[str, dict[str, float]]:
    """Test MAE/RMSE/MAPE of last value and historical average (the training mean of each sensor at
    each time of day)."""
    splits, slots = traffic_splits(traffic, data)
    train_end = splits.points[0].train_end
    train, train_slots = traffic.readings[:train_end], slots[:train_end]
    overall = train.mean(0)
    average = np.stack([
        train[train_slots == s].mean(0) if (train_slots == s).any() else overall
        for s in range(data.steps_per_day)
    ])  # (slots, N)
    average = torch.from_numpy(average.astype(np.float32))
    test = SlottedWindows(splits.test, slots)
    return {
        "last_value": score_baseline(
            test, lambda b: b["context"][..., -1:].expand_as(b["target"]), TrafficMetrics()
        ),
        "historical_average": score_baseline(
            test, lambda b: average[b["target_slots"]].transpose(1, 2), TrafficMetrics()
        ),
    }


class SpatioTemporalTask(Task):
    monitor = "mae"
    monitor_mode = "min"
    demo_output_name = "traffic-forecast.csv"

    def load_splits(self, recipe: SpatioTemporalRecipe, *, source: str | None = None) -> Splits:
        traffic = load_traffic(recipe.data, source)
        splits, slots = traffic_splits(traffic, recipe.data)
        info = {
            "sensors": traffic.sensors,
            "edge_index": traffic.edge_index.tolist(),
            "context": recipe.data.context,
            "horizon": recipe.data.horizon,
            "steps_per_day": recipe.data.steps_per_day,
            "mean": splits.mean.tolist(),
            "std": splits.std.tolist(),
            "source": source or recipe.data.source,
        }
        fingerprint = _fingerprint(traffic)
        return Splits(
            SlottedWindows(splits.train, slots), SlottedWindows(splits.val, slots),
            SlottedWindows(splits.test, slots), info, fingerprint,
        )

    def build_model(self, recipe: SpatioTemporalRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        model = STTN(
            num_nodes=len(info["sensors"]), edge_index=torch.tensor(info["edge_index"], dtype=torch.long).view(2, -1),
            context=info["context"], horizon=info["horizon"], steps_per_day=info["steps_per_day"],
            dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
        )
        with torch.no_grad():
            model.scaler.fit(torch.tensor(info["mean"]), torch.tensor(info["std"]))
        return model

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        pred = model(batch["context"], batch["slots"]).float()
        # MAE in units of each sensor's training std, so busy and quiet sensors weigh alike.
        loss = ((pred - batch["target"]).abs() / model_std(model)[:, None]).mean()
        return loss, pred.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return TrafficMetrics()

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: SpatioTemporalRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
    ) -> list[Path]:
        if output_path.suffix.lower() not in {".csv", ".parquet"}:
            raise UserError(f"--output {output_path}: write forecasts to a .csv or .parquet file")
        table = read_table(input_path, time_column=recipe.data.time_column)
        if table.variables != info["sensors"] or len(table.ids) != 1:
            raise UserError(f"{input_path}: give one readings table with the sensor columns {info['sensors']}")
        readings, context = table.values[0], info["context"]
        if readings.shape[1] < context:
            raise UserError(f"{input_path}: {readings.shape[1]} rows; the model needs the last {context} (data.context)")
        slots = day_slots(table.times[0], info["steps_per_day"])[-context:]
        window = torch.from_numpy(readings[:, -context:])[None].to(device)
        forecast = model(window, torch.from_numpy(slots)[None].to(device))[0].float().cpu().numpy()  # (N, H)
        future = future_times(table.times[0], info["horizon"])
        frame = pd.DataFrame([
            {"sensor": sensor, "step": h + 1, "time": future[h], "forecast": float(forecast[n, h])}
            for n, sensor in enumerate(info["sensors"]) for h in range(info["horizon"])
        ])
        with atomic_path(output_path) as tmp:
            write_table(frame, tmp, like=output_path)
        written = [output_path]
        if plot:
            written.append(_plot_sensors(readings, forecast, info, output_path))
        return written

    def demo_input(self, recipe: SpatioTemporalRecipe, info: dict[str, Any], workdir: Path) -> Path:
        traffic = load_traffic(recipe.data, info["source"])
        readings, adjacency = Path(workdir) / "traffic-readings.csv", Path(workdir) / "traffic-adjacency.csv"
        write_traffic_csv(traffic, readings, adjacency)
        return readings


def model_std(model: nn.Module) -> Tensor:
    """The training std per sensor (N,) from the model's scaler, through DDP/compile wrappers."""
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    return inner.scaler.std


def _fingerprint(traffic: TrafficData) -> str:
    h = hashlib.sha256("\x00".join(traffic.sensors).encode())
    h.update(np.ascontiguousarray(traffic.readings).tobytes())
    h.update(np.ascontiguousarray(traffic.edge_index).tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _plot_sensors(readings: np.ndarray, forecast: np.ndarray, info: dict[str, Any], output_path: Path) -> Path:
    """The first (up to) six sensors: recent readings and the forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(6, readings.shape[0])
    history = max(4 * info["context"], info["steps_per_day"])
    fig, axes = plt.subplots(shown, 1, figsize=(8, 1.8 * shown), squeeze=False, sharex=True)
    past = readings[:, -history:]
    t_past, t_future = np.arange(-past.shape[1] + 1, 1), np.arange(1, info["horizon"] + 1)
    for n, ax in enumerate(axes[:, 0]):
        ax.plot(t_past, past[n], color="0.3", lw=1.0, label="readings")
        ax.plot(t_future, forecast[n], color="C0", lw=1.5, label="forecast")
        ax.set_ylabel(info["sensors"][n])
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title(f"STTN {info['horizon']}-step forecast (first {shown} sensors)")
    axes[-1, 0].set_xlabel("steps relative to the last reading")
    fig.tight_layout()
    path = output_path.with_name(f"{output_path.stem}.png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
