"""Forecasting data: CSV and Parquet in long or wide form, the Monash archive's `.tsf`, aeon's series.

Long form has one observation per row: `id, time, variable, value` (`id` may be left out for a single
series). Wide form has a time column and one numeric column per variable (and optionally an `id`
column); Nixtla's layout (`unique_id, ds, y`, more numeric columns being exogenous variables) is wide
form too. Split calendar columns (`year` + `quarter`/`month`/`week`) become the time index. Either way
the result is a `SeriesTable`: per series id, a float32 array (C, T) in time order, with the time labels
and the seasonal period they imply.

Every problem with a file (missing columns, ragged rows, non-numeric values, gaps) is a `UserError`
that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from panformer.engine.errors import UserError
from panformer.timeseries.time_index import (
    calendar_columns,
    calendar_labels,
    infer_season,
    parse_times,
)

LONG_COLUMNS = ("time", "variable", "value")
TIME_NAMES = ("time", "date", "datetime", "timestamp", "ds", "period", "year")
ID_NAMES = ("id", "unique_id")
NIXTLA_COLUMNS = ("unique_id", "ds", "y")
# The Monash archive's `@frequency` -> pandas frequency of the time labels built from `start_timestamp`.
TSF_FREQUENCIES = {
    "yearly": "Y", "quarterly": "Q", "monthly": "M", "weekly": "W-MON", "daily": "D", "hourly": "h",
    "half_hourly": "30min", "10_minutes": "10min", "minutely": "min", "4_seconds": "4s",
}


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
    season_from: str = ""  # where `season` came from, for the notes `train` and `evaluate` print
    exogenous: list[str] = field(default_factory=list)  # variables given as inputs only (Nixtla's extra columns)
    layout: str = ""  # how the file was read: which columns were taken as what

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
    """`aeon:<Name>`, a `.csv`/`.parquet` file (long or wide form) or a `.tsf` file; the season is
    inferred from the time labels when the source does not declare it."""
    text = str(source)
    if text.startswith("aeon:"):
        table = _read_aeon(text)
    else:
        path = Path(text)
        if path.suffix.lower() not in {".csv", ".parquet", ".pq", ".tsf"}:
            raise UserError(
                f"{path}: forecasting data must be a .csv, .parquet or .tsf file or aeon:<Name> "
                f"(bundled: {', '.join(aeon_forecasting_names())})"
            )
        if not path.is_file():
            raise UserError(f"{path} does not exist; give an existing .csv, .parquet or .tsf file")
        if path.suffix.lower() == ".tsf":
            table = read_tsf(path)
        elif (streamed := read_parquet_streamed(path, time_column=time_column)) is not None:
            table = streamed
        else:
            table = table_from_frame(read_frame(path), source=str(path), time_column=time_column)
    if table.season is None and (inferred := infer_season(table.times[0])) is not None:
        table.season, table.season_from = inferred[0], f"{inferred[1]} time index"
    return table


def read_tsf(path: Path) -> SeriesTable:
    """A Monash forecasting archive `.tsf` file (aeon reads it): one univariate series per line."""
    from aeon.datasets import load_from_tsf_file

    try:
        frame, meta = load_from_tsf_file(str(path))
    except Exception as err:  # aeon raises many types for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a readable .tsf file ({reason}); check the @ header lines and @data") from None
    frequency = str(meta.get("frequency") or "")
    ids, values, times = [], [], []
    for i, row in frame.iterrows():
        series = np.asarray(row["series_value"], dtype=np.float64)[None]
        series_id = str(row.get("series_name", i))
        labels = _tsf_labels(row.get("start_timestamp"), frequency, series.shape[1])
        _check_complete(series, labels, ["value"], str(path), series_id)
        ids.append(series_id)
        values.append(series.astype(np.float32))
        times.append(labels)
    return SeriesTable(ids, ["value"], values, times, str(path),
                       layout=f".tsf, {len(ids)} series, frequency {frequency or 'not given'}")


def _tsf_labels(start: object, frequency: str, length: int) -> np.ndarray:
    """Time labels from a series' start and the file's frequency; step numbers when either is missing."""
    freq = TSF_FREQUENCIES.get(frequency)
    if freq is None or start is None or pd.isna(start):
        return np.arange(length).astype(str)
    if freq in ("Y", "Q", "M"):
        return np.array([str(p) for p in pd.period_range(pd.Timestamp(start), periods=length, freq=freq)])
    stamps = pd.date_range(pd.Timestamp(start), periods=length, freq=freq)
    return np.array([t.strftime("%Y-%m-%d") if freq in ("D", "W-MON") else str(t) for t in stamps])


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
    table.season, table.season_from = spec.season, "aeon's dataset description"
    return table


def _streamable_columns(schema: object, time_column: str | None) -> tuple[str, str, list[str]] | None:
    """(id, time, value columns) of a Parquet schema in wide form with an id column, a time column stored
    as timestamps, dates or integers and numeric value columns; None for any other layout."""
    import pyarrow as pa

    names = list(schema.names)
    lower = {n.lower(): n for n in names}
    if any(n in lower for n in LONG_COLUMNS[1:]) or calendar_columns(pd.DataFrame(columns=names)):
        return None
    id_column = next((n for n in names if n.lower() in ID_NAMES), None)
    time = time_column or next((n for n in names if n.lower() in TIME_NAMES and n != id_column), None)
    if id_column is None or time is None or time not in names:
        return None
    kind = schema.field(time).type
    if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_integer(kind)):
        return None
    variables = [n for n in names if n not in (id_column, time)]
    numeric = all(pa.types.is_integer(schema.field(v).type) or pa.types.is_floating(schema.field(v).type)
                  for v in variables)
    return (id_column, time, variables) if variables and numeric else None


def read_parquet_streamed(path: Path, *, time_column: str | None = None) -> SeriesTable | None:
    """A large Parquet file in wide form (id, a timestamp/integer time column, numeric values), read one
    row group at a time into flat arrays (no data frame of the whole file): 16 bytes a row for one
    variable. Time labels stay the file's own timestamps or integers. None when the file has another
    layout (then `read_frame` + `table_from_frame` read it)."""
    import pyarrow.parquet as pq

    if path.suffix.lower() not in (".parquet", ".pq"):
        return None
    try:
        file = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable {path.suffix} file ({type(err).__name__}); check the file") from None
    columns = _streamable_columns(file.schema_arrow, time_column)
    if columns is None:
        return None
    id_column, time, variables = columns
    rows = file.metadata.num_rows
    if rows == 0:
        raise UserError(f"{path}: holds no data rows")
    values = np.empty((len(variables), rows), dtype=np.float32)
    codes = np.empty(rows, dtype=np.int64)
    stamps: np.ndarray | None = None
    ids: dict[str, int] = {}
    done = 0
    for group in range(file.num_row_groups):
        batch = file.read_row_group(group, columns=[id_column, time, *variables])
        n = batch.num_rows
        encoded = batch.column(id_column).combine_chunks().cast("string").dictionary_encode()
        local = np.asarray([ids.setdefault(str(name), len(ids)) for name in encoded.dictionary.to_pylist()])
        if encoded.indices.null_count:
            raise UserError(f"{path}: column '{id_column}' has empty ids; give every row a series id")
        codes[done:done + n] = local[encoded.indices.to_numpy()]
        times = batch.column(time).to_numpy()
        if stamps is None:
            stamps = np.empty(rows, dtype=times.dtype)
        stamps[done:done + n] = times
        for c, v in enumerate(variables):
            values[c, done:done + n] = batch.column(v).to_numpy(zero_copy_only=False)
        done += n
    assert stamps is not None
    names = sorted(ids)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[[ids[name] for name in names]] = np.arange(len(names))
    codes = rank[codes]  # series in id order, as the data-frame reader gives them
    order = np.lexsort((stamps, codes))
    codes, stamps, values = codes[order], stamps[order], values[:, order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [rows]])
    table_values = [values[:, a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    table_times = [stamps[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    if np.isnan(values).any():
        c, row = np.argwhere(np.isnan(values))[0]
        s = int(np.searchsorted(ends, row, side="right"))
        raise UserError(f"{path}: series '{names[s]}' has no value for variable '{variables[c]}' at time "
                        f"{stamps[row]}; fill the gap (forecasting needs complete series)")
    exogenous: list[str] = []
    if set(NIXTLA_COLUMNS) <= {id_column, time, *variables}:
        exogenous = [v for v in variables if v != "y"]
        keep = [variables.index("y"), *(variables.index(v) for v in exogenous)]
        variables = ["y", *exogenous]
        table_values = [v[keep] for v in table_values]
    layout = (f"wide form: time column {time!r}, id column {id_column!r}, value columns {', '.join(variables)} "
              f"(Parquet, read by row group)")
    return SeriesTable(names, variables, table_values, table_times, str(path), exogenous=exogenous, layout=layout)


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


def _numeric(column: pd.Series, source: str, name: str, *, layout: str = "") -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        read_as = f"; read as {layout}" if layout else ""
        raise UserError(
            f"{source}: column '{name}' holds a non-numeric value {column.iloc[row]!r} (data row {row + 1}){read_as}; "
            f"use numbers only{', or name the time column with --set data.time_column=NAME' if layout else ''}"
        )
    return values.to_numpy(dtype=np.float64)


def _time_order(times: pd.Series) -> np.ndarray:
    """Sort key for time labels: numbers, then periods or dates, else the labels' own order in the file."""
    as_number = pd.to_numeric(times, errors="coerce")
    if as_number.notna().all():
        return np.argsort(as_number.to_numpy(), kind="stable")
    index = parse_times(times.astype(str).to_numpy())
    if index is not None:
        return np.argsort(index.asi8, kind="stable")
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
    return SeriesTable(ids, variables, values, times, source, layout="long form: id, time, variable, value")


def _find_time_column(frame: pd.DataFrame, time_column: str | None, source: str, *, skip: set[str]) -> str | None:
    """The named column; else one with a time-like name; else the first text column that reads as dates."""
    if time_column is not None:
        if time_column not in frame.columns:
            raise UserError(
                f"{source}: no column '{time_column}' (data.time_column); columns: {', '.join(frame.columns)}"
            )
        return time_column
    for column in frame.columns:
        if column.lower() in TIME_NAMES and column not in skip:
            return column
    for column in frame.columns:
        text = frame[column]
        if column not in skip and pd.to_numeric(text, errors="coerce").isna().any() and parse_times(text) is not None:
            return column
    return None


def _from_wide(frame: pd.DataFrame, source: str, *, time_column: str | None, default_id: str) -> SeriesTable:
    id_column = next((c for c in frame.columns if c.lower() in ID_NAMES), None)
    parts = calendar_columns(frame) if time_column is None else ()
    if parts:
        # Split calendar columns are one time index, not variables to forecast.
        labels = calendar_labels(frame, parts, source=source)
        frame = frame.drop(columns=list(parts)).assign(**{"+".join(parts): labels})
        time_column = "+".join(parts)
    time_column = _find_time_column(frame, time_column, source, skip={id_column})
    variables = [c for c in frame.columns if c not in {time_column, id_column}]
    if not variables:
        raise UserError(f"{source}: no value columns besides the time/id columns; add one column per variable")
    exogenous: list[str] = []
    if set(NIXTLA_COLUMNS) <= set(frame.columns):
        # Nixtla's layout: `y` is the target, any other numeric column an exogenous input.
        exogenous = [v for v in variables if v != "y"]
        variables = ["y", *exogenous]
    time_text = repr(time_column) if time_column else "none (row order)"
    id_text = repr(id_column) if id_column else "none (one series)"
    layout = f"wide form: time column {time_text}, id column {id_text}, value columns {', '.join(variables)}"
    numeric = np.stack([_numeric(frame[v], source, v, layout=layout) for v in variables])  # (C, rows)
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
    return SeriesTable(ids, variables, values, times, source, exogenous=exogenous, layout=layout)


def write_table(frame: pd.DataFrame, path: Path, *, like: Path) -> None:
    """Write `frame` to `path` as CSV or Parquet, chosen by the suffix of `like` (the final name;
    `path` may be a temporary file beside it)."""
    if like.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
