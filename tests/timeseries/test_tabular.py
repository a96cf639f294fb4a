"""Forecasting tables: long/wide CSV, Parquet, aeon's bundled series, and every bad-file path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from panformer.engine.errors import UserError
from panformer.timeseries.tabular import read_table


def write(path, text: str):
    path.write_text(text)
    return path


def test_long_csv_groups_ids_orders_time_and_sorts_variables(tmp_path):
    path = write(tmp_path / "long.csv", "id,time,variable,value\n"
                 "b,2,y,20\nb,1,y,10\nb,1,x,1\nb,2,x,2\n"
                 "a,10,x,5\na,3,x,3\na,3,y,30\na,10,y,50\n")
    table = read_table(path)
    assert table.ids == ["a", "b"] and table.variables == ["x", "y"]
    np.testing.assert_array_equal(table.values[0], [[3, 5], [30, 50]])  # numeric time order: 3 before 10
    np.testing.assert_array_equal(table.values[1], [[1, 2], [10, 20]])
    assert table.times[0].tolist() == ["3", "10"]


def test_long_csv_without_id_is_one_series_named_after_the_file(tmp_path):
    path = write(tmp_path / "sales.csv", "time,variable,value\n2024-01-02,v,2\n2024-01-01,v,1\n")
    table = read_table(path)
    assert table.ids == ["sales"]
    np.testing.assert_array_equal(table.values[0], [[1, 2]])


def test_wide_csv_with_time_and_id_columns(tmp_path):
    path = write(tmp_path / "wide.csv", "Date,id,load,temp\n2024-01-02,k,2,20\n2024-01-01,k,1,10\n2024-01-01,m,7,70\n")
    table = read_table(path)
    assert table.variables == ["load", "temp"] and table.ids == ["k", "m"]
    np.testing.assert_array_equal(table.values[0], [[1, 2], [10, 20]])
    np.testing.assert_array_equal(table.values[1], [[7], [70]])


def test_wide_csv_without_time_column_keeps_row_order(tmp_path):
    table = read_table(write(tmp_path / "w.csv", "a,b\n3,1\n2,2\n"))
    np.testing.assert_array_equal(table.values[0], [[3, 2], [1, 2]])


@pytest.mark.parametrize("form", ["long", "wide"])
def test_parquet_reads_like_csv(tmp_path, form):
    if form == "long":
        frame = pd.DataFrame({"id": ["s"] * 4, "time": [1, 2, 1, 2], "variable": ["u", "u", "v", "v"],
                              "value": [1.0, 2.0, 3.0, 4.0]})
    else:
        frame = pd.DataFrame({"time": [1, 2], "u": [1.0, 2.0], "v": [3.0, 4.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    from_parquet, from_csv = read_table(tmp_path / "t.parquet"), read_table(tmp_path / "t.csv")
    np.testing.assert_array_equal(from_parquet.values[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(from_parquet.values[0], from_csv.values[0])


def test_aeon_bundled_series_load_offline():
    airline = read_table("aeon:Airline")
    assert airline.values[0].shape == (1, 144) and airline.season == 12
    assert airline.values[0][0, :3].tolist() == [112, 118, 132]
    uschange = read_table("aeon:uschange")  # names are case-insensitive
    assert uschange.variables[0] == "Consumption" and uschange.values[0].shape == (5, 187)
    assert uschange.values[0][0, 0] == pytest.approx(0.615986218)


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("short_row.csv", "time,a,b\n1,2,3\n2,4\n", ["line 3", "2 fields", "header has 3"]),
        ("long_row.csv", "time,a\n1,2\n2,3,4\n", ["different numbers of fields"]),
        ("text.csv", "time,a\n1,2\n2,lots\n", ["column 'a'", "'lots'"]),
        ("nocols.csv", "id,variable,value\nx,a,1\n", ["missing time"]),
        ("gap.csv", "id,time,variable,value\nx,1,a,1\nx,2,a,2\nx,1,b,5\n", ["'b' at time 2"]),
        ("dupe.csv", "time,variable,value\n1,a,1\n1,a,2\n", ["two values"]),
        ("empty.csv", "", ["empty"]),
        ("onlytime.csv", "time\n1\n2\n", ["no value columns"]),
    ],
)
def test_bad_files_are_user_errors_naming_the_file(tmp_path, name, text, needles):
    path = write(tmp_path / name, text)
    with pytest.raises(UserError) as err:
        read_table(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="aeon:Airline"):
        read_table("aeon:NoSuchSeries")
    with pytest.raises(UserError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(UserError, match=r"\.csv, \.parquet or \.tsf"):
        read_table(write(tmp_path / "data.txt", "1,2\n"))
    with pytest.raises(UserError, match="not a readable"):
        read_table(write(tmp_path / "broken.parquet", "not parquet"))
    with pytest.raises(UserError, match=r"data\.time_column"):
        read_table(write(tmp_path / "w.csv", "t,a\n1,2\n"), time_column="when")


def test_large_parquet_is_read_by_row_group_like_the_data_frame_reader(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from panformer.timeseries import tabular

    rng = np.random.default_rng(0)
    ids = np.repeat(["s10", "s2", "s1"], 50)
    stamps = np.tile(np.datetime64("2024-01-01T00:00", "s") + np.arange(50).astype("timedelta64[h]"), 3)
    order = rng.permutation(150)  # rows shuffled across row groups: the reader sorts by id, then time
    frame = pd.DataFrame({"unique_id": ids, "ds": stamps, "y": rng.normal(size=150).astype(np.float32),
                          "price": rng.normal(size=150)}).iloc[order]
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet", row_group_size=40)
    streamed = read_table(tmp_path / "log.parquet")
    assert "read by row group" in streamed.layout and streamed.season == 24
    monkeypatch.setattr(tabular, "read_parquet_streamed", lambda path, time_column=None: None)
    whole = read_table(tmp_path / "log.parquet")  # the data-frame reader on the same file
    assert streamed.ids == whole.ids == ["s1", "s10", "s2"] and streamed.variables == whole.variables == ["y", "price"]
    assert streamed.exogenous == whole.exogenous == ["price"] and streamed.fingerprint() == whole.fingerprint()
    for a, b in zip(streamed.values, whole.values, strict=True):
        np.testing.assert_array_equal(a, b)


def test_large_parquet_gap_is_a_user_error_naming_the_series(tmp_path):
    frame = pd.DataFrame({"id": ["a", "a", "b", "b"], "time": [1, 2, 1, 2], "v": [1.0, 2.0, None, 4.0]})
    frame.to_parquet(tmp_path / "gap.parquet")
    with pytest.raises(UserError, match=r"gap\.parquet: series 'b' has no value for variable 'v' at time 1"):
        read_table(tmp_path / "gap.parquet")
