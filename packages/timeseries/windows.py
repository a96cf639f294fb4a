"""Sliding windows over series and chronological train/validation/test splits.

Each series of T steps is cut in time, never shuffled across it:

    [ ......... train ......... | ... val ... | ... test ... ]
    0                       train_end      val_end          T

A window is (context: the L steps before a forecast origin t, target: the H steps from t). Training
windows lie entirely inside the training part; validation and test windows have their targets inside
their own part (their context may reach back into earlier parts, which are the known past at that
origin). So no target value a model is scored on is ever seen during training, and statistics that
are fitted (normalisation, the MASE scale) use the training part only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.timeseries.forecast_metrics import seasonal_naive_scale


@dataclass(frozen=True)
class SplitPoints:
    """Where a series of `length` steps is cut: train is [0, train_end), val [train_end, val_end),
    test [val_end, length)."""

    length: int
    train_end: int
    val_end: int


def chronological_split(
    length: int, *, context: int, horizon: int, val_steps: int, test_steps: int, name: str = "series"
) -> SplitPoints:
    """Cut the last `test_steps` for test and the `val_steps` before them for validation.

    The training part must hold at least one full window (context + horizon steps), and the
    validation and test parts at least one target (horizon steps) each.
    """
    if val_steps < horizon or test_steps < horizon:
        raise UserError(
            f"data.val_steps ({val_steps}) and data.test_steps ({test_steps}) must be at least the "
            f"horizon ({horizon}); raise them or shorten data.horizon"
        )
    needed = context + horizon + val_steps + test_steps
    if length < needed:
        raise UserError(
            f"{name} has {length} steps, but context {context} + horizon {horizon} + validation "
            f"{val_steps} + test {test_steps} need {needed}; shorten data.context or data.horizon"
        )
    val_end = length - test_steps
    return SplitPoints(length=length, train_end=val_end - val_steps, val_end=val_end)


def window_starts(begin: int, end: int, *, context: int, horizon: int, stride: int = 1) -> list[int]:
    """Forecast origins t whose target [t, t + H) lies in [begin, end) and whose context [t - L, t)
    starts at or after step 0. The last origin is always included."""
    first, last = max(begin, context), end - horizon
    if last < first:
        return []
    starts = list(range(last, first - 1, -stride))  # anchored at the end, so the latest window is kept
    return starts[::-1]


def fit_normalisation(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-variable mean and std over the training parts (C, T_i) of all series."""
    stacked = np.concatenate(parts, axis=1).astype(np.float64)
    std = stacked.std(axis=1)
    return stacked.mean(axis=1), np.where(std > 0, std, 1.0)


class Origins(Sequence[tuple[int, int]]):
    """Forecast origins (series index, t) of several series, without one object per window.

    Series s has `counts[s]` origins `firsts[s] + k * stride` (those of `window_starts`), so the index
    costs three numbers per series however long the series are (S series, W windows in all).
    """

    def __init__(self, firsts: np.ndarray, counts: np.ndarray, stride: int) -> None:
        self.firsts, self.counts, self.stride = np.asarray(firsts, np.int64), np.asarray(counts, np.int64), stride
        self.ends = np.cumsum(self.counts)  # (S,) one past each series' last window

    @classmethod
    def of(cls, begin_end: list[tuple[int, int]], *, context: int, horizon: int, stride: int) -> Origins:
        """The origins `window_starts` gives each series' (begin, end) part."""
        firsts, counts = [], []
        for begin, end in begin_end:
            first, last = max(begin, context), end - horizon
            count = (last - first) // stride + 1 if last >= first else 0
            firsts.append(last - (count - 1) * stride if count else 0)
            counts.append(count)
        return cls(np.asarray(firsts), np.asarray(counts), stride)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        s = int(np.searchsorted(self.ends, i, side="right"))
        k = i - (int(self.ends[s]) - int(self.counts[s]))
        return s, int(self.firsts[s]) + k * self.stride

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for s, (first, count) in enumerate(zip(self.firsts.tolist(), self.counts.tolist(), strict=True)):
            for k in range(count):
                yield s, first + k * self.stride


class WindowDataset(Dataset):
    """(context, target) windows over several series.

    Items: context (C, L), target (C, H), scale (C,) the series' MASE scale, series (int) its index.
    """

    def __init__(
        self,
        series: list[np.ndarray],
        origins: Sequence[tuple[int, int]],
        scales: np.ndarray,
        *,
        context: int,
        horizon: int,
    ) -> None:
        self.series = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in series]
        self.origins = origins  # (series index, forecast origin t)
        self.scales = torch.as_tensor(scales, dtype=torch.float32)
        self.context, self.horizon = context, horizon

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, t = self.origins[i]
        x = self.series[s]
        return {
            "context": x[:, t - self.context : t],
            "target": x[:, t : t + self.horizon],
            "scale": self.scales[s],
            "series": torch.tensor(s),
        }


@dataclass
class ForecastSplits:
    """Windows for the three splits plus what was fitted on the training parts."""

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    scales: np.ndarray  # (S, C) MASE scale per series and variable
    points: list[SplitPoints]  # where each series was cut


def make_forecast_splits(
    series: list[np.ndarray],
    *,
    context: int,
    horizon: int,
    val_steps: int,
    test_steps: int,
    season: int,
    stride: int = 1,
    names: list[str] | None = None,
) -> ForecastSplits:
    """Chronological splits of every series (C, T_i) into train/val/test windows."""
    names = names or [f"series {i}" for i in range(len(series))]  # how errors name each series
    points = [
        chronological_split(
            s.shape[1], context=context, horizon=horizon, val_steps=val_steps, test_steps=test_steps,
            name=name,
        )
        for s, name in zip(series, names, strict=True)
    ]
    train_parts = [s[:, : p.train_end] for s, p in zip(series, points, strict=True)]
    mean, std = fit_normalisation(train_parts)
    scales = np.stack([seasonal_naive_scale(part, season=season) for part in train_parts])

    def windows(begin_end: list[tuple[int, int]], step: int) -> WindowDataset:
        origins = Origins.of(begin_end, context=context, horizon=horizon, stride=step)
        return WindowDataset(series, origins, scales, context=context, horizon=horizon)

    return ForecastSplits(
        train=windows([(0, p.train_end) for p in points], stride),
        val=windows([(p.train_end, p.val_end) for p in points], 1),
        test=windows([(p.val_end, p.length) for p in points], 1),
        mean=mean,
        std=std,
        scales=scales,
        points=points,
    )
