"""Time-series forecasting: recipe, chronological splits, models, loss, metrics and predict.

A recipe names a table (`aeon:Airline`, a CSV or Parquet file in long or wide form), a context length
L and a horizon H. Every series is cut in time into train/validation/test parts (validation and test
are the last windows); the model maps the last L steps of each variable to the next H, as a point
forecast or as quantiles (prediction intervals). Selection is on validation MASE; test is scored once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Metrics, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.plots import pyplot, save_png
from panformer.engine.runlog import console
from panformer.timeseries.baselines import baseline_metrics
from panformer.timeseries.forecast_metrics import ForecastMetrics, pinball_loss
from panformer.timeseries.models.encoder_decoder import EncoderDecoderForecaster
from panformer.timeseries.models.patchtst import PatchTST
from panformer.timeseries.tabular import SeriesTable, read_table, write_table
from panformer.timeseries.time_index import future_times
from panformer.timeseries.windows import WindowDataset, make_forecast_splits


class ForecastingData(StrictModel):
    source: str = Field("aeon:Airline", description="aeon:<Name>, or a .csv/.parquet file (long or wide form)")
    time_column: str | None = Field(None, description="wide form: the time column (default: time/date/...)")
    context: int = Field(36, ge=2, description="L: steps of history the model sees")
    horizon: int = Field(12, ge=1, description="H: steps to forecast")
    val_steps: int | None = Field(None, ge=1, description="steps held out for validation (default H)")
    test_steps: int | None = Field(None, ge=1, description="final steps held out for test (default H)")
    season: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description="seasonal period for MASE and the baselines; null/auto: the data's (from its time index)"
    )
    stride: int = Field(1, ge=1, description="step between training windows")


class ForecastHead(StrictModel):
    """Output options shared by every forecasting model."""

    quantiles: list[float] = Field(default_factory=list, description="e.g. [0.1, 0.5, 0.9]; empty: point")
    loss: Literal["mse", "mae"] = Field("mse", description="point loss when no quantiles are given")
    instance_norm: bool = Field(True, description="RevIN: normalise each window by its own level and scale")

    @field_validator("quantiles")
    @classmethod
    def _median_and_order(cls, quantiles: list[float]) -> list[float]:
        if quantiles and (0.5 not in quantiles or any(not 0 < q < 1 for q in quantiles)):
            raise ValueError("quantiles must lie in (0, 1) and include 0.5 (the point forecast)")
        if quantiles != sorted(set(quantiles)):
            raise ValueError("quantiles must be increasing without repeats")
        return quantiles


class PatchTSTConfig(ForecastHead):
    name: Literal["patchtst"] = "patchtst"
    patch: int = Field(12, ge=1)
    stride: int = Field(6, ge=1)
    dim: int = Field(64, ge=8)
    depth: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    signature_depth: int | None = Field(None, ge=1, le=3, description="add path-signature features per patch")


class EncoderDecoderConfig(ForecastHead):
    name: Literal["encoder_decoder"] = "encoder_decoder"
    dim: int = Field(64, ge=8)
    depth: int = Field(2, ge=1, description="encoder blocks")
    decoder_depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


ForecastModelConfig = Annotated[PatchTSTConfig | EncoderDecoderConfig, Field(discriminator="name")]


class ForecastingRecipe(Recipe):
    domain: Literal["timeseries"] = "timeseries"
    task: Literal["forecasting"] = "forecasting"
    data: ForecastingData = ForecastingData()
    model: ForecastModelConfig = PatchTSTConfig()


def point_index(quantiles: list[float]) -> int:
    """Which output is the point forecast: the median, or the only output."""
    return quantiles.index(0.5) if quantiles else 0


def forecast_outputs(pred: Tensor, quantiles: list[float]) -> dict[str, Tensor]:
    """pred (B, C, H, Q) -> {"point", and with quantiles "lower"/"upper" (the outermost pair)}.

    Quantiles are sorted per step first, so crossing quantile outputs still give a valid interval.
    """
    if not quantiles:
        return {"point": pred[..., 0]}
    ordered = pred.sort(dim=-1).values
    return {"point": ordered[..., point_index(quantiles)], "lower": ordered[..., 0], "upper": ordered[..., -1]}


class ForecastingTask(Task):
    monitor = "mase"
    monitor_mode = "min"
    demo_output_name = "forecast.csv"

    def __init__(self) -> None:
        # Set by `build_model` from the recipe: `loss` and `predict` run on the model it built.
        self.quantiles: list[float] = []
        self.point_loss = "mse"
        self.teacher_forcing = False

    def load_splits(self, recipe: ForecastingRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        table = read_table(source, time_column=data.time_column)
        notes = [f"{source}: {table.layout}"]
        if table.exogenous:
            notes.append(
                f"{source}: exogenous columns {', '.join(table.exogenous)} are left out: the {recipe.model.name} "
                f"forecaster takes no exogenous inputs and forecasts 'y' from its own past"
            )
            table = targets_only(table)
        if isinstance(data.season, int):
            season, season_from = data.season, "data.season"
        else:
            season, season_from = table.season or 1, table.season_from or "no calendar in the time index"
        splits = make_forecast_splits(
            table.values, context=data.context, horizon=data.horizon,
            val_steps=data.val_steps or data.horizon, test_steps=data.test_steps or data.horizon,
            season=season, stride=data.stride, names=[f"{source}: series '{i}'" for i in table.ids],
        )
        # Said once the data is known to be usable, so a bad file still gets a one-line error alone.
        for note in [*notes, f"{source}: season {season} ({season_from})"]:
            console.print(f"timeseries: {note}", soft_wrap=True, markup=False, highlight=False)
        info = {
            "variables": table.variables,
            "series": table.ids,
            "context": data.context,
            "horizon": data.horizon,
            "season": season,
            "season_from": season_from,
            "quantiles": recipe.model.quantiles,
            "mean": splits.mean.tolist(),
            "std": splits.std.tolist(),
            "source": source,
        }
        return Splits(splits.train, splits.val, splits.test, info, table.fingerprint())

    def build_model(self, recipe: ForecastingRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        self.quantiles, self.point_loss = list(info["quantiles"]), cfg.loss
        self.teacher_forcing = cfg.name == "encoder_decoder"
        shape = dict(
            channels=len(info["variables"]), context=info["context"], horizon=info["horizon"],
            num_outputs=max(1, len(self.quantiles)),
        )
        common = dict(
            dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout, instance_norm=cfg.instance_norm,
        )
        if cfg.name == "patchtst":
            if cfg.patch > info["context"]:
                raise UserError(f"model.patch {cfg.patch} is longer than data.context {info['context']}; shorten it")
            model: nn.Module = PatchTST(
                **shape, **common, patch=cfg.patch, stride=cfg.stride, signature_depth=cfg.signature_depth
            )
        else:
            model = EncoderDecoderForecaster(
                **shape, **common, decoder_depth=cfg.decoder_depth, point_index=point_index(self.quantiles)
            )
        with torch.no_grad():
            model.scaler.fit(torch.tensor(info["mean"]), torch.tensor(info["std"]))
        return model

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        context, target = batch["context"], batch["target"]
        # The encoder-decoder is teacher-forced in training and autoregressive otherwise.
        pred = model(context, target) if self.teacher_forcing and model.training else model(context)
        pred = pred.float()
        # Errors are measured in units of each series' seasonal-naive error (the MASE scale), so
        # variables and series of different magnitudes weigh alike.
        scale = batch["scale"][..., None]  # (B, C, 1)
        if self.quantiles:
            q = torch.tensor(self.quantiles, device=pred.device)
            loss = pinball_loss(pred / scale[..., None], target / scale, q)
        else:
            error = (pred[..., 0] - target) / scale
            loss = error.square().mean() if self.point_loss == "mse" else error.abs().mean()
        return loss, {k: v.detach() for k, v in forecast_outputs(pred, self.quantiles).items()}

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return ForecastMetrics()

    def evaluation_extras(
        self, model: nn.Module, *, recipe: ForecastingRecipe, info: dict[str, Any], splits: Splits, device: torch.device
    ) -> dict[str, float]:
        """The season used, and seasonal naive and ETS on the same test windows (with intervals at the
        model's outermost quantiles), so the model's scores read against maintained baselines."""
        quantiles = info["quantiles"]
        level = quantiles[-1] - quantiles[0] if quantiles else None
        extras: dict[str, float] = {"season": float(splits.info["season"])}
        for name, scores in baseline_metrics(
            splits.test, season=splits.info["season"], horizon=info["horizon"], level=level
        ).items():
            extras |= {f"{name}_{key}": value for key, value in scores.items()}
        return extras

    @torch.no_grad()
    def forecast(
        self, model: nn.Module, table: SeriesTable, info: dict[str, Any], device: torch.device, *, batch_size: int = 256
    ) -> list[dict[str, np.ndarray]]:
        """Forecast H steps past the end of every series of `table`: per series, arrays (C, H)
        keyed point, lower, upper and one per quantile."""
        context, results = info["context"], []
        for start in range(0, len(table.ids), batch_size):
            chunk = table.values[start : start + batch_size]
            windows = torch.stack([torch.from_numpy(v[:, -context:]) for v in chunk]).to(device)
            pred = model(windows).float()
            outputs = forecast_outputs(pred, self.quantiles)
            if self.quantiles:
                ordered = pred.sort(dim=-1).values
                outputs.update({f"q{q:g}": ordered[..., i] for i, q in enumerate(self.quantiles)})
            results += [{k: v[i].cpu().numpy() for k, v in outputs.items()} for i in range(len(chunk))]
        return results

    def predict(
        self,
        model: nn.Module,
        *,
        recipe: ForecastingRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
    ) -> list[Path]:
        if output_path.suffix.lower() not in {".csv", ".parquet"}:
            raise UserError(f"--output {output_path}: write forecasts to a .csv or .parquet file")
        table = targets_only(read_table(input_path, time_column=recipe.data.time_column))
        check_compatible(table, info, input_path)
        forecasts = self.forecast(model, table, info, device)
        rows = []
        for series_id, times, values in zip(table.ids, table.times, forecasts, strict=True):
            future = future_times(times, info["horizon"])
            for c, variable in enumerate(table.variables):
                for h in range(info["horizon"]):
                    row = {"id": series_id, "variable": variable, "step": h + 1, "time": future[h]}
                    row.update({k: float(v[c, h]) for k, v in values.items()})
                    rows.append(row)
        frame = pd.DataFrame(rows).rename(columns={"point": "forecast"})
        with atomic_path(output_path) as tmp:
            write_table(frame, tmp, like=output_path)
        written = [output_path]
        if plot:
            written += plot_forecasts(table, forecasts, info, output_path)
        return written

    @torch.no_grad()
    def evaluation_plot(
        self,
        model: nn.Module,
        dataset: WindowDataset,
        info: dict[str, Any],
        *,
        path: Path,
        batch_size: int,
        device: torch.device,
    ) -> Path:
        """The last test window of each series (up to 8 panels): context, actual values, forecast, interval."""
        last = {}
        for i, (series, origin) in enumerate(dataset.origins):
            if origin >= dataset.origins[last.get(series, i)][1]:
                last[series] = i
        panels = [(i, c) for i in last.values() for c in range(len(info["variables"]))][:8]
        plt = pyplot()
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False)
        for ax, (i, c) in zip(axes[:, 0], panels, strict=True):
            item = dataset[i]
            pred = model(item["context"][None].to(device)).float()
            forecast = {k: v[0, c].cpu().numpy() for k, v in forecast_outputs(pred, self.quantiles).items()}
            _draw_forecast(ax, item["context"][c].numpy(), forecast, self.quantiles, truth=item["target"][c].numpy())
            ax.set_ylabel(f"{info['series'][dataset.origins[i][0]]}\n{info['variables'][c]}", fontsize=8)
        axes[0, 0].set_title("last test window: forecast vs actual")
        axes[0, 0].legend(loc="upper left", fontsize=8)
        axes[-1, 0].set_xlabel("steps relative to the forecast origin")
        return _save(fig, path)

    def demo_input(self, recipe: ForecastingRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The training source as a wide CSV: the demo forecasts past the end of the data."""
        table = read_table(info["source"], time_column=recipe.data.time_column)
        path = Path(workdir) / "forecast-input.csv"
        frames = [
            pd.DataFrame({"id": series_id, "time": times, **dict(zip(table.variables, values, strict=True))})
            for series_id, times, values in zip(table.ids, table.times, table.values, strict=True)
        ]
        with atomic_path(path) as tmp:
            pd.concat(frames).to_csv(tmp, index=False)
        return path


def targets_only(table: SeriesTable) -> SeriesTable:
    """The table without its exogenous variables (our forecasters take none)."""
    if not table.exogenous:
        return table
    keep = [i for i, v in enumerate(table.variables) if v not in table.exogenous]
    return replace(
        table, variables=[table.variables[i] for i in keep], values=[v[keep] for v in table.values], exogenous=[]
    )


def check_compatible(table: SeriesTable, info: dict[str, Any], path: Path) -> None:
    if table.variables != info["variables"]:
        raise UserError(
            f"{path}: variables {table.variables} differ from the model's {info['variables']}; "
            f"give the same columns/variables it was trained on"
        )
    for series_id, values in zip(table.ids, table.values, strict=True):
        if values.shape[1] < info["context"]:
            raise UserError(
                f"{path}: series '{series_id}' has {values.shape[1]} steps; the model needs the last "
                f"{info['context']} (data.context) to forecast"
            )


def _draw_forecast(
    ax: Any, past: np.ndarray, forecast: dict[str, np.ndarray], quantiles: list[float], *, truth: np.ndarray | None = None
) -> None:
    """One variable on one axis: history up to step 0, then the forecast (and interval, and truth)."""
    t_past = np.arange(-len(past) + 1, 1)
    t_future = np.arange(1, len(forecast["point"]) + 1)
    ax.plot(t_past, past, color="0.3", lw=1.2, label="history")
    if truth is not None:
        ax.plot(t_future, truth, color="0.3", lw=1.2, ls=":", label="actual")
    ax.plot(t_future, forecast["point"], color="C0", lw=1.5, label="forecast")
    if "lower" in forecast:
        ax.fill_between(t_future, forecast["lower"], forecast["upper"], color="C0", alpha=0.25,
                        label=f"{quantiles[0]:g}–{quantiles[-1]:g} quantiles")
    ax.axvline(0.5, color="0.6", lw=0.8, ls="--")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    return save_png(fig, path)


def plot_forecasts(
    table: SeriesTable, forecasts: list[dict[str, np.ndarray]], info: dict[str, Any], output_path: Path
) -> list[Path]:
    """One PNG per series beside the output: recent history, forecast and interval, one panel per variable."""
    plt = pyplot()
    written = []
    history = max(3 * info["context"], 4 * info["horizon"])
    for series_id, values, forecast in zip(table.ids, table.values, forecasts, strict=True):
        fig, axes = plt.subplots(len(values), 1, figsize=(8, 2.4 * len(values)), squeeze=False, sharex=True)
        for c, ax in enumerate(axes[:, 0]):
            _draw_forecast(ax, values[c, -history:], {k: v[c] for k, v in forecast.items()}, info["quantiles"])
            ax.set_ylabel(table.variables[c])
        axes[0, 0].set_title(f"{series_id}: {info['horizon']}-step forecast")
        axes[0, 0].legend(loc="upper left", fontsize=8)
        axes[-1, 0].set_xlabel("steps relative to the last observation")
        written.append(_save(fig, output_path.with_name(f"{output_path.stem}-{_safe_name(series_id)}.png")))
    return written


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "series"
