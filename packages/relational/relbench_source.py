"""RelBench sources: `relbench:<dataset>/<task>` (a Hub dataset, downloaded by relbench) or
`relbench:<local folder with manifest.yaml>/<task>`.

The database becomes a `Database` with RelBench's keys and time columns; the task's train/val/test
label tables become the task rows (served to the task SQL as the table `relbench_labels`), and the
dataset's own val/test timestamps become the split cut-offs. Offline, a Hub dataset cannot be fetched:
that is a one-line UserError.
"""

from __future__ import annotations

import pandas as pd

from panformer.engine.errors import UserError
from panformer.relational.database import Database, TableSchema


def read_relbench(source: str, spec):  # spec: TaskSpec (typed loosely to avoid an import cycle)
    """(Database, TaskSpec) for `relbench:<dataset>/<task>`."""
    body = source[len("relbench:"):]
    dataset_name, _, task_name = body.rpartition("/")
    if not dataset_name or not task_name:
        raise UserError(f"--data {source}: use relbench:<dataset>/<task>, e.g. relbench:rel-f1/driver-dnf")
    try:
        import relbench
    except ImportError:
        raise UserError(f"--data {source}: needs the relbench package; pip install relbench") from None
    try:
        dataset = relbench.load_dataset(dataset_name)
        task = dataset.load_task(task_name)
        rdb = task.get_db() if hasattr(task, "get_db") else dataset.get_db()
        splits = [task.get_table(split, mask_input_cols=False).df for split in ("train", "val", "test")]
    except (OSError, ValueError, ConnectionError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"--data {source}: cannot load the RelBench dataset ({first}); a Hub dataset needs the "
                        f"network the first time, or give a local folder holding manifest.yaml") from None
    except Exception as err:  # hub clients raise their own offline errors
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(f"--data {source}: cannot load the RelBench dataset ({type(err).__name__}: {first}); a Hub "
                        f"dataset needs the network the first time, or give a local folder holding manifest.yaml") from None
    kind = task.task_type.value
    if kind not in ("binary_classification", "regression"):
        raise UserError(f"--data {source}: {kind} tasks are not supported yet; use a binary or regression task")
    tables = {name: table.df.reset_index(drop=True) for name, table in rdb.table_dict.items()}
    schema = {name: TableSchema(name, table.pkey_col, dict(table.fkey_col_to_pkey_table), table.time_col)
              for name, table in rdb.table_dict.items()}
    db = Database.from_frames(dataset_name.rsplit("/", 1)[-1], tables, schema)
    labels = pd.concat(splits, ignore_index=True)
    db.connection.register("relbench_labels", labels)
    sql = (f'SELECT "{task.entity_col}" AS entity_id, "{task.time_col}" AS timestamp, '
           f'"{task.target_col}" AS label FROM relbench_labels')
    spec = spec.model_copy(update={
        "entity_table": task.entity_table, "sql": sql,
        "kind": "binary" if kind == "binary_classification" else "regression",
        "val_timestamp": str(dataset.val_timestamp), "test_timestamp": str(dataset.test_timestamp),
    })
    return db, spec
