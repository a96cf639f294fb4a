"""Time-series classification data: UEA/UCR through aeon (`aeon:<Name>`), the archives' own files
(`.ts`, the 2018 UCR `.tsv`, Weka `.arff`, all read by aeon's loaders), and tables.

Tables are CSV or Parquet in one of three layouts:

- one series per row with a `label` (or `class`/`target`) column, the other columns its time steps;
- no header row: the UCR layout saved as CSV (class label in the first column, then the time steps);
- the forecasting readers' long or wide form (see `tabular.py`) with an `id` column and a label
  column constant within each id.

Series are held as float32 arrays `(C, T)` of possibly different lengths; a batch pads them to the
longest and carries the true lengths, so nothing is truncated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    layout: str = ""  # how a table was read: which columns were taken as what

    @property
    def channels(self) -> int:
        return self.series[0].shape[0]

    @property
    def max_length(self) -> int:
        return max(s.shape[1] for s in self.series)


def _as_series_list(x: np.ndarray | list, source: str) -> list[np.ndarray]:
    series = [_without_end_padding(np.asarray(s, dtype=np.float32)) for s in x]
    if not series:
        raise UserError(f"{source}: holds no series")
    channels = {s.shape[0] for s in series}
    if len(channels) != 1 or any(s.ndim != 2 or s.shape[1] == 0 for s in series):
        raise UserError(f"{source}: series must all have the same number of channels and at least one step")
    return series


def _without_end_padding(series: np.ndarray) -> np.ndarray:
    """Drop the all-NaN steps after the last observed one: the archives pad shorter series with NaN."""
    if series.ndim != 2:
        return series
    observed = np.flatnonzero(~np.isnan(series).all(axis=0))
    return series[:, : observed[-1] + 1] if len(observed) else series


def read_archive_file(path: Path) -> SeriesSet:
    """Read a UEA/UCR `.ts`, 2018 UCR `.tsv` (label first, tab-separated) or Weka `.arff` file with
    aeon's loaders (labels optional in `.ts`)."""
    from aeon.datasets import load_from_arff_file, load_from_ts_file, load_from_tsv_file

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path} does not exist; give an existing {suffix} file")
    loader = {".ts": load_from_ts_file, ".tsv": load_from_tsv_file, ".arff": load_from_arff_file}[suffix]
    try:
        x, y = loader(str(path))
    except Exception as err:  # aeon raises many types for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a readable {suffix} file ({reason}); {ARCHIVE_LAYOUTS[suffix]}") from None
    labels = np.asarray(y).astype(str) if y is not None and len(y) else None
    return SeriesSet(_as_series_list(x, str(path)), labels, str(path), layout=f"a {suffix} file")


ARCHIVE_LAYOUTS = {
    ".ts": "check the header and data lines",
    ".tsv": "expected the UCR layout: no header, tab-separated, class label first, then the values",
    ".arff": "check the @attribute lines and @data",
}
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
SERIES_SUFFIXES = (*ARCHIVE_LAYOUTS, *TABLE_SUFFIXES)
LABEL_NAMES = ("label", "class", "target")


def label_column(columns: list[str]) -> str | None:
    """The class-label column of a table, by name (label, class or target, any case)."""
    lower = {str(c).strip().lower(): c for c in columns}
    return next((lower[n] for n in LABEL_NAMES if n in lower), None)


def has_no_header(path: Path) -> bool:
    """True for a CSV whose first row holds only numbers: data, not column names (the UCR layout)."""
    import csv

    if Path(path).suffix.lower() != ".csv":
        return False
    with open(path, newline="") as f:
        first = next(csv.reader(f), [])
    # Empty fields are missing values (the archive pads short series), not column names.
    return bool(first) and _is_number(first[0]) and all(_is_number(f) or not f.strip() for f in first)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_labelled_table(path: Path) -> SeriesSet:
    """A CSV/Parquet table of series in one of the layouts of this module's docstring."""
    import pandas as pd

    from panformer.timeseries.tabular import read_frame, table_from_frame

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .csv or .parquet file")
    frame = read_frame(path).rename(columns=lambda c: str(c).strip())
    if has_no_header(path):
        frame = pd.read_csv(path, header=None, skipinitialspace=True)
        layout = "no header row: the UCR layout, class label in column 1, one series per row"
        return _rows_as_series(frame.iloc[:, 1:], frame.iloc[:, 0], path, layout)
    label = label_column(list(frame.columns))
    id_column = next((c for c in frame.columns if c.lower() == "id"), None)
    if label is not None and id_column is None:
        layout = f"one series per row, class label in column '{label}', the other columns its time steps"
        return _rows_as_series(frame.drop(columns=label), frame[label], path, layout)
    label_of: dict[str, str] | None = None
    if label is not None:
        per_id = frame.groupby(frame[id_column].astype(str))[label].agg(lambda v: sorted(set(v.astype(str))))
        mixed = [i for i, v in per_id.items() if len(v) != 1]
        if mixed:
            raise UserError(f"{path}: series {mixed[:3]} have more than one label; give one label per id")
        label_of = {i: v[0] for i, v in per_id.items()}
        frame = frame.drop(columns=label)
    table = table_from_frame(frame, source=str(path))
    labels = None if label_of is None else np.array([label_of[i] for i in table.ids])
    layout = table.layout + (f", class label in column '{label}'" if label else ", no label/class/target column")
    return SeriesSet(_as_series_list(table.values, str(path)), labels, str(path), layout=layout)


def _rows_as_series(values: Any, labels: Any, path: Path, layout: str) -> SeriesSet:
    """One univariate series per row of `values` (a data frame); NaN at a row's end is padding."""
    import pandas as pd

    numeric = values.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise UserError(
            f"{path}: column '{values.columns[col]}' holds a non-numeric value {values.iat[row, col]!r} "
            f"(data row {row + 1}); read as {layout}; use numbers only"
        )
    series = numeric.to_numpy(dtype=np.float32)[:, None, :]  # (N, 1, T)
    return SeriesSet(_as_series_list(series, str(path)), labels.astype(str).to_numpy(), str(path), layout=layout)


def read_series_file(path: Path) -> SeriesSet:
    """An archive file (`.ts`, `.tsv`, `.arff`) or a CSV/Parquet table."""
    return read_labelled_table(path) if Path(path).suffix.lower() in TABLE_SUFFIXES else read_archive_file(path)


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
            return read_archive_file(bundled)
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
        found = sorted(p for p in path.glob(f"*_{split.upper()}.*") if p.suffix.lower() in SERIES_SUFFIXES)
        if not found:
            raise UserError(f"--data {path}: no *_{split.upper()}.ts/.tsv/.arff/.csv/.parquet file in this folder")
        return read_series_file(found[0])
    if path.suffix.lower() in SERIES_SUFFIXES:
        stem = path.stem.rsplit("_", 1)[0] if path.stem.upper().endswith(("_TRAIN", "_TEST")) else None
        if stem is None:
            raise UserError(f"--data {path}: name the file <Name>_TRAIN{path.suffix} (with <Name>_TEST{path.suffix} beside it)")
        return read_series_file(path.with_name(f"{stem}_{split.upper()}{path.suffix}"))
    raise UserError(
        f"--data {source}: use aeon:<Name>, a <Name>_TRAIN.ts/.tsv/.arff/.csv/.parquet file or a folder of them"
    )


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
