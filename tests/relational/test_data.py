"""Readers, schema discovery and overrides, the demo database, context sampling (no future rows) and the
aggregate baseline, on small generated databases (DuckDB, SQLite, and a real PostgreSQL server)."""

from __future__ import annotations

import sqlite3
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from panformer.engine.errors import UserError
from panformer.relational.baseline import aggregate_features
from panformer.relational.database import read_database, seconds
from panformer.relational.demo import churn_sql, generate_tables
from panformer.relational.domain import RelationalData, TaskSpec, load_task_data
from panformer.relational.sampling import LABEL, TIME, encode_database, sample_contexts
from tests.relational.helpers import small_shop


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    path = small_shop(tmp_path_factory.mktemp("shop"))
    return read_database(f"duckdb:///{path}")


def test_duckdb_schema_discovered_from_keys(shop):
    assert set(shop.schema) == {"customers", "products", "orders", "reviews"}
    orders = shop.schema["orders"]
    assert orders.primary_key == "order_id" and orders.time_column == "order_time"
    assert orders.foreign_keys == {"customer_id": "customers", "product_id": "products"}
    assert "orders (" in shop.describe() and "customer_id -> customers" in shop.describe()


def test_demo_churn_task_has_signal(shop):
    rows = shop.sql(churn_sql("shop"), what="task")
    assert {"entity_id", "timestamp", "label"} <= set(rows.columns)
    assert 0.15 < rows.label.mean() < 0.85
    # Customers who ordered in the last 7 days churn less than those who did not.
    feats = aggregate_features(shop, "customers", rows.entity_id.to_numpy(), rows.timestamp)
    recent = feats["orders_customer_id_count_7d"].to_numpy() > 0
    assert rows.label[recent].mean() < rows.label[~recent].mean() - 0.1


def test_sqlite_reader_and_yaml_override(tmp_path):
    tables = generate_tables(seed=1, customers=30)
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as con:  # no constraints at all: the override file supplies them
        for name, frame in tables.items():
            frame.to_sql(name, con, index=False)
    before = path.read_bytes()
    override = tmp_path / "schema.yaml"
    override.write_text(
        "tables:\n"
        "  customers: {primary_key: customer_id}\n"
        "  products: {primary_key: product_id, time_column: launched}\n"
        "  orders: {primary_key: order_id, foreign_keys: {customer_id: customers, product_id: products}}\n"
        "  reviews: {primary_key: review_id, foreign_keys: {customer_id: customers}}\n")
    db = read_database(f"sqlite:///{path}", schema_file=override)
    assert db.schema["orders"].foreign_keys == {"customer_id": "customers", "product_id": "products"}
    assert db.schema["orders"].time_column == "order_time"  # the first timestamp column
    assert db.columns["orders"]["order_time"] == "time"
    assert pd.api.types.is_datetime64_any_dtype(db.read_table("orders")["order_time"])
    assert path.read_bytes() == before  # read-only: the user's database is untouched

    override.write_text("tables:\n  orders: {foreign_keys: {customer_id: clients}}\n")
    with pytest.raises(UserError, match="missing table 'clients'"):
        read_database(f"sqlite:///{path}", schema_file=override)


def test_bad_uris_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such DuckDB file"):
        read_database(f"duckdb:///{tmp_path / 'absent.duckdb'}")
    with pytest.raises(UserError, match="unknown database URI"):
        read_database("mysql://x/y")
    bad = tmp_path / "bad.duckdb"
    bad.write_text("not a database")
    with pytest.raises(UserError, match="not a readable DuckDB"):
        read_database(f"duckdb:///{bad}")


def test_contexts_never_see_the_future_and_take_the_latest_children(shop):
    rows = shop.sql(churn_sql("shop"), what="task")
    enc = encode_database(shop)
    ts = seconds(rows.timestamp)
    started = time.perf_counter()
    ctx = sample_contexts(enc, "customers", rows.entity_id.to_numpy(), ts, max_cells=64, children_per_table=4)
    rate = len(rows) / (time.perf_counter() - started)
    assert rate > 500, rate  # vectorised: thousands per second on one core
    # Every time cell is at or before the prediction time (relative time >= 0).
    assert (ctx.value[ctx.kind == TIME] >= 0).all()
    assert (ctx.kind[np.arange(len(rows)), ctx.label_pos] == LABEL).all()
    # The orders in context i are exactly that customer's 4 latest orders at or before the time.
    orders = shop.read_table("orders")
    order_table = enc.index["orders"]
    for i in [0, len(rows) // 2, len(rows) - 1]:
        cust, t = rows.entity_id[i], rows.timestamp[i]
        expected = orders[(orders.customer_id == cust) & (orders.order_time <= t)].nlargest(4, "order_time")
        in_context = {int(r) for r, w in zip(ctx.row_ids[i], ctx.table_words[i], strict=True)
                      if r >= 0 and (w == enc.tables[order_table].name_words).all()}
        assert len(in_context) == len(expected)
    # The label cell's row points to the entity row (local row 0).
    assert (ctx.parent_rows[np.arange(len(rows)), ctx.label_pos, 0] == 0).all()


def test_baseline_features_ignore_later_rows(shop):
    orders = shop.read_table("orders")
    cust = int(orders.customer_id.iloc[0])
    t = orders[orders.customer_id == cust].order_time.min()
    feats = aggregate_features(shop, "customers", np.array([cust]), pd.Series([t - pd.Timedelta(seconds=1)]))
    assert feats["orders_customer_id_count"].iloc[0] == 0


POSTGRES_CHURN = """\
SELECT c.customer_id AS entity_id, t.ts AS timestamp,
       CAST(NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND o.order_time > t.ts
                        AND o.order_time <= t.ts + make_interval(days => 30)) AS INTEGER) AS label
FROM generate_series(TIMESTAMP '2024-03-01', TIMESTAMP '2024-11-30', INTERVAL '14 days') AS t(ts)
JOIN customers c ON c.signup_time <= t.ts
WHERE to_char(t.ts, 'YYYY-MM') LIKE '2024%'
  AND EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
              AND o.order_time <= t.ts AND o.order_time > t.ts - INTERVAL '90 days')
"""


def test_postgres_reader_on_a_real_server(postgres_uri, tmp_path):
    import sqlalchemy

    path = small_shop(tmp_path, customers=40)
    con = duckdb.connect(str(path), read_only=True)
    frames = {name: con.execute(f"SELECT * FROM {name}").df() for name in ("customers", "products", "orders", "reviews")}
    con.close()
    engine = sqlalchemy.create_engine(postgres_uri.replace("postgresql://", "postgresql+psycopg://"))
    ddl = {
        "customers": "customer_id INTEGER PRIMARY KEY, signup_time TIMESTAMP, region VARCHAR, age INTEGER",
        "products": "product_id INTEGER PRIMARY KEY, category VARCHAR, price DOUBLE PRECISION, launched TIMESTAMP",
        "orders": "order_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers, product_id INTEGER "
                  "REFERENCES products, order_time TIMESTAMP, quantity INTEGER, amount DOUBLE PRECISION",
        "reviews": "review_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers, product_id INTEGER "
                   "REFERENCES products, review_time TIMESTAMP, rating INTEGER, text VARCHAR",
    }
    with engine.begin() as c:
        for name, columns in ddl.items():
            c.execute(sqlalchemy.text(f"CREATE TABLE {name} ({columns})"))
    for name in ddl:
        frames[name].to_sql(name, engine, if_exists="append", index=False)
    engine.dispose()

    db = read_database(postgres_uri)
    assert db.schema["reviews"].foreign_keys == {"customer_id": "customers", "product_id": "products"}
    assert db.schema["orders"].primary_key == "order_id" and db.schema["orders"].time_column == "order_time"
    assert db.row_count("orders") == len(frames["orders"])
    rows = db.sql(churn_sql("shop"), what="task")
    assert len(rows) > 0 and set(rows.label.unique()) <= {0, 1}

    # The task runs on the server in PostgreSQL's SQL (make_interval, to_char, '%' untouched by the driver)
    # and gives the rows of the same task in DuckDB's SQL on the DuckDB file.
    def task(source: str, sql: str) -> pd.DataFrame:
        data = RelationalData(source=source, task=TaskSpec(entity_table="customers", sql=sql))
        return load_task_data(source, data)[0].rows

    pd.testing.assert_frame_equal(task(postgres_uri, POSTGRES_CHURN), task(f"duckdb:///{path}", churn_sql("shop")),
                                  check_dtype=False)
    with pytest.raises(UserError, match=r"failed in PostgreSQL: .*write the task in PostgreSQL's SQL"):
        task(postgres_uri, churn_sql("shop"))  # DuckDB's range() and INTERVAL 30 DAY
    with pytest.raises(UserError, match="read-only transaction"):
        task(postgres_uri, "DELETE FROM reviews RETURNING customer_id AS entity_id, review_time AS timestamp, "
                           "rating AS label")
    assert read_database(postgres_uri).row_count("reviews") == len(frames["reviews"])

    with pytest.raises(UserError, match="cannot read the database"):
        read_database(postgres_uri.rsplit(":", 1)[0] + ":1/postgres")
