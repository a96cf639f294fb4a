"""Task SQL runs in the source database's own dialect (issue #23): SQLite's date functions on a SQLite file,
DuckDB's SQL on DuckDB, read-only, with the same task rows as the same task written for DuckDB; bad SQL is
one line naming the dialect. (PostgreSQL's dialect is tested on a real server in test_data.py.)"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from panformer.engine.errors import UserError
from panformer.relational.demo import DDL, churn_sql, generate_tables, write_database
from panformer.relational.domain import RelationalData, TaskSpec, load_task_data
from tests.cli import assert_user_error
from tests.relational.helpers import cli_inprocess

# The demo's churn task in SQLite's SQL: day arithmetic with date()/julianday(), years with strftime().
SQLITE_CHURN = """\
WITH RECURSIVE times(ts) AS (
  SELECT '2024-03-01' UNION ALL SELECT date(ts, '+14 days') FROM times WHERE ts < date('2024-12-01', '-14 days'))
SELECT c.customer_id AS entity_id, t.ts AS timestamp,
       NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
                   AND julianday(o.order_time) > julianday(t.ts)
                   AND julianday(o.order_time) <= julianday(t.ts, '+30 days')) AS label
FROM times t JOIN customers c ON julianday(c.signup_time) <= julianday(t.ts)
WHERE strftime('%Y', t.ts) = '2024'
  AND EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
              AND julianday(o.order_time) <= julianday(t.ts)
              AND julianday(o.order_time) > julianday(date(t.ts, '-90 days')))
"""


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory) -> tuple[Path, Path]:
    """The same generated shop as a SQLite file (keys declared in its DDL) and as a DuckDB file."""
    folder = tmp_path_factory.mktemp("dialects")
    tables = generate_tables(seed=3, customers=60)
    sqlite_path = folder / "shop.sqlite"
    with sqlite3.connect(sqlite_path) as con:
        for name in ("customers", "products", "orders", "reviews"):  # parents before children
            con.execute(f"CREATE TABLE {name} ({DDL[name]})")
            frame = tables[name].copy()
            for column in frame.columns:  # SQLite keeps times as ISO text
                if pd.api.types.is_datetime64_any_dtype(frame[column]):
                    frame[column] = frame[column].dt.strftime("%Y-%m-%d %H:%M:%S")
            con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * frame.shape[1])})",
                            frame.astype(object).itertuples(index=False))
    con.close()
    return sqlite_path, write_database(folder / "shop.duckdb", tables)


def task_data(source: str, sql: str) -> RelationalData:
    return RelationalData(source=source, baseline=False, task=TaskSpec(entity_table="customers", sql=sql))


def test_sqlite_task_in_sqlite_sql_gives_the_duckdb_rows_and_leaves_the_file_alone(shop_files):
    sqlite_path, duckdb_path = shop_files
    before = sqlite_path.read_bytes(), os.stat(sqlite_path).st_mtime_ns
    sqlite_source, duckdb_source = f"sqlite:///{sqlite_path}", f"duckdb:///{duckdb_path}"
    sqlite_task, _ = load_task_data(sqlite_source, task_data(sqlite_source, SQLITE_CHURN))
    duckdb_task, _ = load_task_data(duckdb_source, task_data(duckdb_source, churn_sql("shop")))
    assert len(sqlite_task.rows) > 100 and 0.1 < sqlite_task.rows.label.mean() < 0.9
    assert sqlite_task.rows.timestamp.dtype.kind == "M"  # SQLite's text dates become timestamps
    pd.testing.assert_frame_equal(sqlite_task.rows, duckdb_task.rows, check_dtype=False)
    assert (sqlite_path.read_bytes(), os.stat(sqlite_path).st_mtime_ns) == before
    assert sorted(p.name for p in sqlite_path.parent.iterdir()) == ["shop.duckdb", "shop.sqlite"]  # no journal


def test_sqlite_task_trains_and_loads(shop_files, tmp_path):
    from panformer.engine.config import validate_recipe
    from panformer.engine.trainer import Trainer
    from panformer.relational.domain import RelationalDomain

    sqlite_path = shop_files[0]
    before = sqlite_path.read_bytes(), os.stat(sqlite_path).st_mtime_ns
    domain = RelationalDomain()
    raw = {"domain": "relational", "data": {
        "source": f"sqlite:///{sqlite_path}", "cache_dir": str(tmp_path / "cache"), "max_cells": 40,
        "children_per_table": 3,
        "task": {"name": "churn", "kind": "binary", "entity_table": "customers", "sql": SQLITE_CHURN}},
        "model": {"dim": 16, "depth": 1, "num_heads": 2}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    result = Trainer(domain, validate_recipe(domain.recipe_type_for, raw, source="test"), run_dir=tmp_path / "r").fit()
    assert 0 <= result.test_metrics["auroc"] <= 1 and 0 <= result.test_metrics["trees_auroc"] <= 1
    assert (sqlite_path.read_bytes(), os.stat(sqlite_path).st_mtime_ns) == before


@pytest.mark.parametrize(("kind", "sql", "dialect"), [
    ("sqlite", churn_sql("shop"), "SQLite"),  # DuckDB's INTERVAL 30 DAY is not SQLite
    ("sqlite", "SELECT customer_id AS entity_id FROM customerz", "SQLite"),
    ("duckdb", SQLITE_CHURN, "DuckDB"),  # nor is SQLite's julianday() DuckDB
])
def test_bad_task_sql_is_one_line_naming_the_dialect(shop_files, kind, sql, dialect):
    path = shop_files[0] if kind == "sqlite" else shop_files[1]
    source = f"{kind}:///{path}"
    with pytest.raises(UserError) as info:
        load_task_data(source, task_data(source, sql))
    message = str(info.value)
    assert "\n" not in message and message.startswith("recipe data.task.sql: ")
    assert f"failed in {dialect}" in message and f"write the task in {dialect}'s SQL" in message
    assert source in message


def test_cli_answers_a_duckdb_task_on_sqlite_with_one_line_and_exit_2(shop_files, tmp_path):
    recipe, out = tmp_path / "task.yaml", tmp_path / "run"
    recipe.write_text(yaml.safe_dump({"data": {
        "source": f"sqlite:///{shop_files[0]}", "task": {"entity_table": "customers", "sql": churn_sql("shop")}}}))
    assert_user_error(cli_inprocess("train", "--recipe", str(recipe), "--out", str(out)),
                      "data.task.sql", "failed in SQLite", "write the task in SQLite's SQL")
    assert not out.exists()


def test_task_timestamps_must_be_dates(shop_files):
    source = f"sqlite:///{shop_files[0]}"
    with pytest.raises(UserError, match="timestamp column holds numbers"):
        load_task_data(source, task_data(source, "SELECT customer_id AS entity_id, julianday(signup_time) AS "
                                                 "timestamp, 1 AS label FROM customers"))
