"""Forecasting data from tables: CSV and Parquet in long or wide form, and aeon's bundled series.

Long form has one observation per row: `id, time, variable, value` (`id` may be left out for a single
series). Wide form has a time column and one numeric column per variable (and optionally an `id`
column). Either way the result is a `SeriesTable`: per series id, a float32 array (C, T) in time order.

Every problem with a file (missing columns, ragged rows, non-numeric values, gaps) is a `UserError`
that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from panformer.engine.errors import UserError

LONG_COLUMNS = ("time", "variable", "value")
TIME_NAMES = ("time", "date", "datetime", "timestamp", "ds")


@dataclass(frozen=True)
class AeonSeries:
    """A forecasting series bundled with aeon: its CSV, time column and seasonal period."""

    file: str
    time_column: str | None
    season: int
    drop: tuple[str, ...] = ()


# Read straight from aeon's data folder, offline. Seasons: the natural cycle of each series' frequency.
AEON_SERIES: dict[str, AeonSeries] = {
    "Airline": AeonSeries("Airline/Airline.csv", "Date", season=12),
    "Uschange": AeonSeries("Uschange/Uschange.csv", "Quarter", season=4, drop=("Unnamed: 0",)),
    "Solar": AeonSeries("solar/solar.csv", "datetime_gmt", season=48),
    "ShampooSales": AeonSeries("ShampooSales/ShampooSales.csv", "Time", season=12),
    "PBS": AeonSeries("PBS_dataset/PBS_dataset.csv", "Month", season=12),
}


@dataclass
class SeriesTable:
    """Multivariate series that share their variables, each in time order.

    values[i] is (C, T_i) float32 for series ids[i]; times[i] holds its T_i time labels as strings.
    """

    ids: list[str]
    variables: list[str]
    values: list[np.ndarray]
    times: list[np.ndarray]
    source: str
    season: int | None = None  # the dataset's natural seasonal period, when known

    @property
    def channels(self) -> int:
        return len(self.variables)

    def fingerprint(self) -> str:
        h = hashlib.sha256("\x00".join(self.variables).encode())
        for series_id, values in zip(self.ids, self.values, strict=True):
            h.update(series_id.encode())
            h.update(np.ascontiguousarray(values).tobytes())
        return "sha256:" + h.hexdigest()[:16]


def aeon_forecasting_names() -> list[str]:
    return sorted(AEON_SERIES)


def read_table(source: str | Path, *, time_column: str | None = None) -> SeriesTable:
    """`aeon:<Name>`, a `.csv` or a `.parquet` file, long or wide form."""
    text = str(source)
    if text.startswith("aeon:"):
        return _read_aeon(text)
    path = Path(text)
    if path.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise UserError(
            f"{path}: forecasting data must be a .csv or .parquet file or aeon:<Name> "
            f"(bundled: {', '.join(aeon_forecasting_names())})"
        )
    if not path.is_file():
        raise UserError(f"{path} does not exist; give an existing .csv or .parquet file")
    frame = read_frame(path)
    return table_from_frame(frame, source=str(path), time_column=time_column)


def _read_aeon(source: str) -> SeriesTable:
    from panformer.timeseries.data import aeon_data_dir

    name = source.removeprefix("aeon:")
    known = {k.lower(): k for k in AEON_SERIES}
    if name.lower() not in known:
        raise UserError(
            f"--data {source}: not a bundled aeon forecasting series; use one of "
            f"{', '.join('aeon:' + n for n in aeon_forecasting_names())} or a .csv/.parquet file"
        )
    spec = AEON_SERIES[known[name.lower()]]
    frame = pd.read_csv(aeon_data_dir() / spec.file).drop(columns=list(spec.drop))
    table = table_from_frame(frame, source=source, time_column=spec.time_column, default_id=known[name.lower()])
    table.season = spec.season
    return table


def read_frame(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            # Every row must have as many fields as the header: pandas rejects longer rows itself,
            # shorter ones are caught below.
            frame = pd.read_csv(path, skipinitialspace=True)
            _check_not_ragged(path, frame)
            return frame
        return pd.read_parquet(path)
    except UserError:
        raise
    except pd.errors.ParserError as err:
        reason = str(err).strip().splitlines()[-1]
        raise UserError(f"{path}: rows with different numbers of fields ({reason}); make every row match the header") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; give a header row and data rows") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable {path.suffix} file ({type(err).__name__}); check the file") from None


def _check_not_ragged(path: Path, frame: pd.DataFrame) -> None:
    """pandas pads short rows with NaN; find them by counting separators in the raw text."""
    expected = len(frame.columns)
    with open(path, newline="") as f:
        import csv

        for line_no, row in enumerate(csv.reader(f), start=1):
            if row and len(row) != expected:
                raise UserError(
                    f"{path} line {line_no}: {len(row)} fields but the header has {expected}; "
                    f"make every row match the header"
                )


def table_from_frame(
    frame: pd.DataFrame, *, source: str, time_column: str | None = None, default_id: str | None = None
) -> SeriesTable:
    """Build a `SeriesTable` from a long-form or wide-form data frame."""
    frame = frame.rename(columns=lambda c: str(c).strip())
    if frame.empty:
        raise UserError(f"{source}: holds no data rows")
    lower = {c.lower(): c for c in frame.columns}
    if all(name in lower for name in LONG_COLUMNS):
        return _from_long(frame.rename(columns={lower[n]: n for n in (*LONG_COLUMNS, "id") if n in lower}), source)
    if "variable" in lower or "value" in lower:
        missing = [n for n in LONG_COLUMNS if n not in lower]
        raise UserError(f"{source}: long form needs columns id, time, variable, value; missing {', '.join(missing)}")
    return _from_wide(frame, source, time_column=time_column, default_id=default_id or Path(source).stem)


def _numeric(column: pd.Series, source: str, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(
            f"{source}: column '{name}' holds a non-numeric value {column.iloc[row]!r} (data row {row + 1}); "
            f"use numbers only"
        )
    return values.to_numpy(dtype=np.float64)


def _time_order(times: pd.Series) -> np.ndarray:
    """Sort key for time labels: numbers, then dates, else the labels' own order in the file."""
    as_number = pd.to_numeric(times, errors="coerce")
    if as_number.notna().all():
        return np.argsort(as_number.to_numpy(), kind="stable")
    as_date = pd.to_datetime(times, errors="coerce", utc=True, format="mixed")
    if as_date.notna().all():
        return np.argsort(as_date.to_numpy(), kind="stable")
    return np.arange(len(times))


def _check_complete(values: np.ndarray, times: np.ndarray, variables: list[str], source: str, series_id: str) -> None:
    if np.isnan(values).any():
        c, t = np.argwhere(np.isnan(values))[0]
        raise UserError(
            f"{source}: series '{series_id}' has no value for variable '{variables[c]}' at time {times[t]}; "
            f"fill the gap (forecasting needs complete series)"
        )


def _from_long(frame: pd.DataFrame, source: str) -> SeriesTable:
    frame = frame.copy()
    if "id" not in frame.columns:
        frame["id"] = Path(source).stem
    frame["value"] = _numeric(frame["value"], source, "value")
    frame["id"] = frame["id"].astype(str)
    frame["variable"] = frame["variable"].astype(str)
    duplicated = frame.duplicated(["id", "time", "variable"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise UserError(
            f"{source}: series '{row['id']}' has two values for '{row['variable']}' at time {row['time']}; "
            f"keep one row per (id, time, variable)"
        )
    variables = sorted(frame["variable"].unique().tolist())
    ids, values, times = [], [], []
    for series_id, rows in frame.groupby("id", sort=True):
        wide = rows.pivot(index="time", columns="variable", values="value").reindex(columns=variables)
        wide = wide.iloc[_time_order(wide.index.to_series())]
        series_times = wide.index.astype(str).to_numpy()
        array = wide.to_numpy(dtype=np.float64).T
        _check_complete(array, series_times, variables, source, str(series_id))
        ids.append(str(series_id))
        values.append(array.astype(np.float32))
        times.append(series_times)
    return SeriesTable(ids, variables, values, times, source)


def _find_time_column(frame: pd.DataFrame, time_column: str | None, source: str) -> str | None:
    if time_column is not None:
        if time_column not in frame.columns:
            raise UserError(
                f"{source}: no column '{time_column}' (data.time_column); columns: {', '.join(frame.columns)}"
            )
        return time_column
    for column in frame.columns:
        if column.lower() in TIME_NAMES:
            return column
    return None


def _from_wide(frame: pd.DataFrame, source: str, *, time_column: str | None, default_id: str) -> SeriesTable:
    time_column = _find_time_column(frame, time_column, source)
    id_column = next((c for c in frame.columns if c.lower() == "id"), None)
    variables = [c for c in frame.columns if c not in {time_column, id_column}]
    if not variables:
        raise UserError(f"{source}: no value columns besides the time/id columns; add one column per variable")
    numeric = np.stack([_numeric(frame[v], source, v) for v in variables])  # (C, rows)
    all_times = frame[time_column].astype(str).to_numpy() if time_column else np.arange(len(frame)).astype(str)
    groups = frame.groupby(id_column, sort=True).indices if id_column else {default_id: np.arange(len(frame))}
    ids, values, times = [], [], []
    for series_id, rows in groups.items():
        if time_column:
            rows = rows[_time_order(frame[time_column].iloc[rows])]
        array, series_times = numeric[:, rows], all_times[rows]
        _check_complete(array, series_times, variables, source, str(series_id))
        ids.append(str(series_id))
        values.append(array.astype(np.float32))
        times.append(series_times)
    return SeriesTable(ids, variables, values, times, source)


def write_table(frame: pd.DataFrame, path: Path, *, like: Path) -> None:
    """Write `frame` to `path` as CSV or Parquet, chosen by the suffix of `like` (the final name;
    `path` may be a temporary file beside it)."""
    if like.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
