"""Out-of-core reading (issue #22): the database stays in DuckDB (attached read-only, or a streamed DuckDB
copy of a SQLite file), contexts come from SQL streams a chunk of queries at a time, and the answers are
the same whatever the chunk size."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from panformer.relational import sampling
from panformer.relational.database import read_database, seconds
from panformer.relational.demo import churn_sql, generate_tables
from panformer.relational.sampling import encode_database, sample_contexts
from tests.relational.helpers import small_shop


def test_contexts_are_the_same_in_small_chunks(tmp_path, monkeypatch):
    db = read_database(f"duckdb:///{small_shop(tmp_path, customers=60)}")
    rows = db.sql(churn_sql("shop"), what="task").sample(frac=1.0, random_state=0)  # queries in any order
    ids, ts = rows.entity_id.to_numpy(), seconds(rows.timestamp)
    enc = encode_database(db, stats_before=float(np.median(ts)))
    whole = sample_contexts(enc, "customers", ids, ts, max_cells=48, children_per_table=3)
    monkeypatch.setattr(sampling, "CHUNK_QUERIES", 7)
    chunked = sample_contexts(enc, "customers", ids, ts, max_cells=48, children_per_table=3)
    assert len(whole) == len(rows) > 7 * 10
    for name in whole.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name), err_msg=name)


def test_a_large_table_is_never_copied_into_python(tmp_path):
    """Two million orders: opening the database, encoding and sampling a few contexts allocate a few MB
    of Python/NumPy memory, not the table (about 100 MB as arrays)."""
    path = tmp_path / "big.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, region VARCHAR)")
    con.execute("INSERT INTO customers SELECT range, 'r' || (range % 4) FROM range(20000)")
    con.execute("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES customers, "
                "order_time TIMESTAMP, amount DOUBLE, note VARCHAR)")
    con.execute("INSERT INTO orders SELECT range, range % 20000, TIMESTAMP '2024-01-01' + to_seconds(range), "
                "range % 97, 'note ' || (range % 13) FROM range(2000000)")
    con.close()
    tracemalloc.start()
    db = read_database(f"duckdb:///{path}")
    enc = encode_database(db)
    ctx = sample_contexts(enc, "customers", np.arange(50), np.full(50, seconds(pd.Series(["2024-02-01"]))[0]),
                          max_cells=32, children_per_table=4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated"
    assert (ctx.kind[:, 0] > 0).all()


def test_sqlite_is_streamed_into_a_reused_duckdb_copy(tmp_path):
    tables = generate_tables(seed=2, customers=30)
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as con:
        for name, frame in tables.items():
            frame.to_sql(name, con, index=False)
    before = path.read_bytes()
    first = read_database(f"sqlite:///{path}", cache_dir=tmp_path / "cache")
    copies = list((tmp_path / "cache" / "copies").glob("*.duckdb"))
    assert len(copies) == 1
    stamp = copies[0].stat().st_mtime_ns
    again = read_database(f"sqlite:///{path}", cache_dir=tmp_path / "cache")
    assert copies[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert path.read_bytes() == before  # the user's file is never written
    pd.testing.assert_frame_equal(first.read_table("orders"), again.read_table("orders"))
    assert first.row_count("orders") == len(tables["orders"])


def test_duckdb_working_memory_is_bounded_and_spills_outside_the_working_directory(tmp_path, monkeypatch):
    """DuckDB would otherwise cache the file's blocks and hold every sort of the sampling queries in memory
    up to 80% of the RAM (peak RSS grew with the task), and spill into `.tmp` in the working directory."""
    monkeypatch.chdir(tmp_path)
    db = read_database(f"duckdb:///{small_shop(tmp_path, customers=30)}")
    limit, spill = db.connection.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchall()[0]
    number, unit = limit.split()
    assert unit == "MiB" and float(number) <= 1024
    assert not Path(spill).resolve().is_relative_to(tmp_path.resolve())
