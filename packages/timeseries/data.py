"""Time-series classification data: UEA/UCR through aeon (`aeon:<Name>`), `.ts` files, and tables.

Tables are CSV or Parquet in the forecasting readers' long or wide form (see `tabular.py`) with one
more column, `label`, constant within each series id.

Series are held as float32 arrays `(C, T)` of possibly different lengths; a batch pads them to the
longest and carries the true lengths, so nothing is truncated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from panformer.engine.errors import UserError


@dataclass
class SeriesSet:
    """A list of multivariate series with optional string labels."""

    series: list[np.ndarray]  # each (C, T_i), float32, NaN for missing values
    labels: np.ndarray | None  # (N,) str
    source: str

    @property
    def channels(self) -> int:
        return self.series[0].shape[0]

    @property
    def max_length(self) -> int:
        return max(s.shape[1] for s in self.series)


def _as_series_list(x: np.ndarray | list, source: str) -> list[np.ndarray]:
    series = [np.asarray(s, dtype=np.float32) for s in x]
    if not series:
        raise UserError(f"{source}: holds no series")
    channels = {s.shape[0] for s in series}
    if len(channels) != 1 or any(s.ndim != 2 or s.shape[1] == 0 for s in series):
        raise UserError(f"{source}: series must all have the same number of channels and at least one step")
    return series


def read_ts_file(path: Path) -> SeriesSet:
    """Read a UEA/UCR `.ts` file (labels optional)."""
    from aeon.datasets import load_from_ts_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .ts file")
    try:
        x, y = load_from_ts_file(str(path))
    except Exception as err:  # aeon raises many types for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a readable .ts file ({reason}); check the header and data lines") from None
    labels = np.asarray(y).astype(str) if y is not None and len(y) else None
    return SeriesSet(_as_series_list(x, str(path)), labels, str(path))


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def read_labelled_table(path: Path) -> SeriesSet:
    """A CSV/Parquet table of series (long or wide form) whose optional `label` column labels each id."""
    from panformer.timeseries.tabular import read_frame, table_from_frame

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .csv or .parquet file")
    frame = read_frame(path).rename(columns=lambda c: str(c).strip())
    label_of: dict[str, str] | None = None
    if "label" in frame.columns:
        if "id" not in frame.columns:
            raise UserError(f"{path}: a `label` column needs an `id` column saying which series each row is")
        per_id = frame.groupby(frame["id"].astype(str))["label"].agg(lambda v: sorted(set(v.astype(str))))
        mixed = [i for i, v in per_id.items() if len(v) != 1]
        if mixed:
            raise UserError(f"{path}: series {mixed[:3]} have more than one label; give one label per id")
        label_of = {i: v[0] for i, v in per_id.items()}
        frame = frame.drop(columns="label")
    table = table_from_frame(frame, source=str(path))
    labels = None if label_of is None else np.array([label_of[i] for i in table.ids])
    return SeriesSet(_as_series_list(table.values, str(path)), labels, str(path))


def read_series_file(path: Path) -> SeriesSet:
    """A `.ts` file or a CSV/Parquet table."""
    return read_labelled_table(path) if Path(path).suffix.lower() in TABLE_SUFFIXES else read_ts_file(path)


def aeon_data_dir() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data"


def bundled_datasets() -> list[str]:
    return sorted(p.name for p in aeon_data_dir().iterdir() if (p / f"{p.name}_TRAIN.ts").exists())


def load_split(source: str, split: Literal["train", "test"]) -> SeriesSet:
    """`aeon:<Name>`, a `<Name>_TRAIN.ts` / `<Name>_TEST.ts` file, or a folder holding both."""
    if source.startswith("aeon:"):
        name = source.removeprefix("aeon:")
        bundled = aeon_data_dir() / name / f"{name}_{split.upper()}.ts"
        if bundled.exists():
            return read_ts_file(bundled)
        from aeon.datasets import load_classification

        try:
            x, y = load_classification(name, split=split)
        except Exception as err:
            raise UserError(
                f"--data {source}: not bundled with aeon and not downloadable here ({type(err).__name__}); "
                f"bundled: {', '.join(bundled_datasets())}; or give a .ts file"
            ) from None
        return SeriesSet(_as_series_list(x, source), np.asarray(y).astype(str), source)
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.glob(f"*_{split.upper()}.*") if p.suffix.lower() in (".ts", *TABLE_SUFFIXES))
        if not found:
            raise UserError(f"--data {path}: no *_{split.upper()}.ts/.csv/.parquet file in this folder")
        return read_series_file(found[0])
    if path.suffix.lower() in (".ts", *TABLE_SUFFIXES):
        stem = path.stem.rsplit("_", 1)[0] if path.stem.upper().endswith(("_TRAIN", "_TEST")) else None
        if stem is None:
            raise UserError(f"--data {path}: name the file <Name>_TRAIN{path.suffix} (with <Name>_TEST{path.suffix} beside it)")
        return read_series_file(path.with_name(f"{stem}_{split.upper()}{path.suffix}"))
    raise UserError(f"--data {source}: use aeon:<Name>, a <Name>_TRAIN.ts/.csv/.parquet file or a folder of them")


def stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `fraction` of each class goes to validation (at least one if the class has 2+)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            n_val = max(1, n_val)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(val, dtype=int))


def fingerprint(*sets: SeriesSet) -> str:
    h = hashlib.sha256()
    for s in sets:
        for series in s.series:
            h.update(np.ascontiguousarray(series).tobytes())
        if s.labels is not None:
            h.update("\x00".join(s.labels.tolist()).encode())
    return "sha256:" + h.hexdigest()[:16]


class SeriesDataset(Dataset):
    """Items are (values (C, T_i), label index); batches are padded by `collate_series`."""

    def __init__(self, series: list[np.ndarray], targets: np.ndarray) -> None:
        self.series = series
        self.targets = targets

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.series[i], int(self.targets[i])


def collate_series(items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest series. Returns values (B, C, T), lengths (B,), target (B,)."""
    lengths = torch.tensor([s.shape[1] for s, _ in items])
    values = torch.zeros(len(items), items[0][0].shape[0], int(lengths.max()))
    for i, (s, _) in enumerate(items):
        values[i, :, : s.shape[1]] = torch.from_numpy(s)
    target = torch.tensor([t for _, t in items])
    return {"values": values, "lengths": lengths, "target": target}
