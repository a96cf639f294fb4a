"""Shared helpers for the relational tests: the CLI in a subprocess, one-line error checks, small databases."""

from __future__ import annotations

from pathlib import Path

from panformer.relational.cli import app
from panformer.relational.demo import ensure_demo_database
from tests.cli import cli_of, invoke

cli = cli_of("panformer.relational.cli")


def cli_inprocess(*args: str):
    """The same CLI in this process (fast, for bad input and small verbs): .exit_code, .stdout, .stderr."""
    return invoke(app, *args)




def small_shop(folder: Path, *, customers: int = 80, seed: int = 0) -> Path:
    """A small generated shop database (DuckDB, with keys)."""
    return ensure_demo_database(folder, variant="shop", seed=seed, customers=customers)


def write_relbench_folder(folder: Path, *, customers: int = 60) -> Path:
    """The generated shop in RelBench's on-disk layout (manifest.yaml, db/*.parquet, a churn task with
    train/val/test label files): a local RelBench dataset, readable offline."""
    import pandas as pd
    import yaml

    from panformer.relational.database import read_database
    from panformer.relational.demo import churn_sql

    db = read_database(f"duckdb:///{small_shop(folder / 'src', customers=customers)}")
    (folder / "db").mkdir(parents=True, exist_ok=True)
    # RelBench keys are row numbers 0..n-1 in time order: sort each table by time and renumber the keys.
    frames, new_ids = {}, {}
    for name in db.schema:
        frame, s = db.read_table(name), db.schema[name]
        frame = frame.sort_values(s.time_column, kind="stable").reset_index(drop=True)
        new_ids[name] = pd.Series(range(len(frame)), index=frame[s.primary_key].to_numpy())
        frames[name] = frame
    tables = {}
    for name, frame in frames.items():
        s = db.schema[name]
        frame[s.primary_key] = new_ids[name][frame[s.primary_key]].to_numpy()
        for column, parent in s.foreign_keys.items():
            frame[column] = new_ids[parent][frame[column]].to_numpy()
        frame.to_parquet(folder / "db" / f"{name}.parquet", index=False)
        tables[name] = {"pkey": s.primary_key, "time_col": s.time_column, "fkeys": s.foreign_keys}
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "name": "rel-shop", "val_timestamp": "2024-08-15", "test_timestamp": "2024-10-01", "tables": tables,
        "manifest_version": 1}))
    rows = db.sql(churn_sql("shop"), what="task").rename(
        columns={"entity_id": "customer_id", "label": "churn"})
    rows["customer_id"] = new_ids["customers"][rows["customer_id"]].to_numpy()
    task = folder / "tasks" / "churn"
    task.mkdir(parents=True, exist_ok=True)
    (task / "manifest.yaml").write_text(yaml.safe_dump({
        "name": "churn", "kind": "external", "task_type": "binary_classification", "entity_table": "customers",
        "entity_col": "customer_id", "target_col": "churn", "time_col": "timestamp", "timedelta": "30 days",
        "manifest_version": 1}))
    val, test = "2024-08-15", "2024-10-01"
    rows[rows.timestamp < val].to_parquet(task / "train.parquet", index=False)
    rows[(rows.timestamp >= val) & (rows.timestamp < test)].to_parquet(task / "val.parquet", index=False)
    rows[rows.timestamp >= test].to_parquet(task / "test.parquet", index=False)
    return folder
