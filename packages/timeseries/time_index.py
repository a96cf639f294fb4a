"""Time labels of forecasting tables: calendar columns, the seasonal period they imply, and the labels
that continue them past the end of a series.

Labels are kept as strings (what the user's file says). They are read as one of:

- periods: `1959Q1` / `1970 Q1` (quarters), `1949-01` (months), `1700` (years, from a `year` column);
- dates and times, anything `pandas.to_datetime` reads (`2024-01-31`, `2021-05-01 00:30:00+00:00`);
- plain numbers (step counters), which carry no calendar and so no season.
"""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd

from panformer.engine.errors import UserError

# Calendar parts that, with a `year` column, make one time index (statsmodels' macrodata: year, quarter).
CALENDAR_PARTS = ("quarter", "month", "week")
_QUARTER = re.compile(r"^(\d{4})\s*-?\s*Q([1-4])$", re.IGNORECASE)
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_SECONDS_PER_DAY = 86_400


def calendar_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns that together form the time index: (`year`, one of quarter/month/week) when both
    hold whole numbers, else (); matched case-insensitively."""
    lower = {str(c).lower(): c for c in frame.columns}
    if "year" not in lower or not _whole_numbers(frame[lower["year"]]):
        return ()
    for part in CALENDAR_PARTS:
        if part in lower and _whole_numbers(frame[lower[part]]):
            return lower["year"], lower[part]
    return ()


def _whole_numbers(column: pd.Series) -> bool:
    values = pd.to_numeric(column, errors="coerce")
    return bool(values.notna().all() and (values == values.round()).all())


def calendar_labels(frame: pd.DataFrame, columns: tuple[str, ...], *, source: str) -> pd.Series:
    """One time label per row from split calendar columns: `1959Q1`, `1959-03`, or the Monday of an
    ISO week (`2009-01-26`)."""
    year_column, part_column = columns
    part = str(part_column).lower()
    years = frame[year_column].astype(int).tolist()
    values = frame[part_column].astype(int).tolist()
    limit = {"quarter": 4, "month": 12, "week": 53}[part]
    bad = next((i for i, v in enumerate(values) if not 1 <= v <= limit), None)
    if bad is not None:
        raise UserError(
            f"{source}: column '{part_column}' holds {values[bad]} (data row {bad + 1}), not a {part} (1-{limit}); "
            f"fix the row, or name another time column with --set data.time_column=NAME"
        )
    if part == "quarter":
        labels = [str(pd.Period(year=y, quarter=v, freq="Q")) for y, v in zip(years, values, strict=True)]
    elif part == "month":
        labels = [str(pd.Period(year=y, month=v, freq="M")) for y, v in zip(years, values, strict=True)]
    else:
        try:
            labels = [date.fromisocalendar(y, v, 1).isoformat() for y, v in zip(years, values, strict=True)]
        except ValueError as err:
            raise UserError(f"{source}: columns '{year_column}', '{part_column}' are not ISO weeks ({err})") from None
    return pd.Series(labels, index=frame.index)


def parse_times(labels: np.ndarray | list[str]) -> pd.PeriodIndex | pd.DatetimeIndex | None:
    """Read time labels as periods or dates; None when they are plain numbers or not all readable."""
    text = pd.Series(labels, dtype=str).str.strip()
    if text.empty or pd.to_numeric(text, errors="coerce").notna().all():
        return None
    quarters = text.str.extract(_QUARTER)
    if quarters.notna().all().all():
        return pd.PeriodIndex([pd.Period(year=int(y), quarter=int(q), freq="Q") for y, q in quarters.to_numpy()])
    if text.str.match(_MONTH).all():
        return pd.PeriodIndex(text, freq="M")
    dates = pd.to_datetime(text, errors="coerce", format="mixed")
    return pd.DatetimeIndex(dates) if dates.notna().all() else None


def infer_season(labels: np.ndarray | list[str]) -> tuple[int, str] | None:
    """(seasonal period, the frequency it came from) from the spacing of the labels: quarterly 4,
    monthly 12, weekly 52, daily 7, hourly 24 (in general steps per day below a day), yearly 1;
    None when the labels carry no calendar."""
    index = parse_times(labels)
    if index is None or len(index) < 2:
        return None
    if isinstance(index, pd.PeriodIndex):
        return {"Q": (4, "quarterly"), "M": (12, "monthly")}[index.freqstr[0]]
    step = pd.Series(index).diff().dropna().median().total_seconds()
    days = step / _SECONDS_PER_DAY
    if 360 <= days <= 370:
        return 1, "yearly"
    if 88 <= days <= 93:
        return 4, "quarterly"
    if 28 <= days <= 31:
        return 12, "monthly"
    if days == 7:
        return 52, "weekly"
    if days == 1:
        return 7, "daily"
    if 0 < step < _SECONDS_PER_DAY and _SECONDS_PER_DAY % step == 0:
        per_day = int(_SECONDS_PER_DAY // step)
        return per_day, "hourly" if per_day == 24 else f"every {step / 60:g} min"
    return None


def future_times(times: np.ndarray, horizon: int) -> list[str]:
    """Time labels for the H steps after `times`: continued when the spacing is regular (numbers,
    periods or dates), else `+1`, `+2`, ... relative to the last step."""
    relative = [f"+{h}" for h in range(1, horizon + 1)]
    if len(times) < 3:
        return relative
    numbers = pd.to_numeric(pd.Series(times), errors="coerce")
    if numbers.notna().all():
        steps = numbers.diff().dropna().unique()
        if len(steps) == 1:
            last, step = numbers.iloc[-1], steps[0]
            return [f"{last + step * h:g}" for h in range(1, horizon + 1)]
        return relative
    index = parse_times(times)
    if isinstance(index, pd.PeriodIndex):
        return [str(index[-1] + h) for h in range(1, horizon + 1)]
    if index is None or (freq := pd.infer_freq(index)) is None:
        return relative
    future = pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:]
    dates_only = index.tz is None and (index == index.normalize()).all()
    return [t.strftime("%Y-%m-%d") if dates_only else str(t) for t in future]
