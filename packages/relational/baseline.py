"""RelBench's classic baseline: gradient-boosted trees on aggregates over the same foreign-key paths.

For each (entity, time): the entity row's own values and age; for each table pointing to the entity,
row counts in 7/30/90-day windows and overall, days since the latest row, means of its numeric columns
(all time and last 90 days); and means of the numeric columns of the rows those rows point to (an
order's product price). Only rows at or before the time are aggregated, in DuckDB SQL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from panformer.relational.database import Database

WINDOWS = (7, 30, 90)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def aggregate_features(db: Database, entity_table: str, entity_ids: np.ndarray, timestamps: pd.Series) -> pd.DataFrame:
    """One row of numeric features per query, in query order."""
    con = db.connection
    queries = pd.DataFrame({"qid": np.arange(len(entity_ids)), "entity_id": entity_ids,
                            "ts": pd.to_datetime(pd.Series(timestamps)).to_numpy()})
    con.register("_queries", queries)
    schema = db.schema[entity_table]
    kinds = db.columns[entity_table]
    selects = []
    for column in schema.feature_columns(kinds):
        kind = kinds[column]
        if kind in ("number", "bool"):
            selects.append(f"CAST(e.{_q(column)} AS DOUBLE) AS {_q('self_' + column)}")
        elif kind == "time":
            selects.append(f"date_diff('second', e.{_q(column)}, q.ts) / 86400.0 AS {_q('self_age_' + column)}")
        elif _distinct(db, entity_table, column) <= 64:
            selects.append(f"CAST(hash(e.{_q(column)}) % 100003 AS DOUBLE) AS {_q('self_code_' + column)}")
    own = "SELECT q.qid" + "".join(f", {s}" for s in selects) + (
        f" FROM _queries q LEFT JOIN {_q(entity_table)} e ON e.{_q(schema.primary_key)} = q.entity_id")
    features = db.sql(own, what=f"baseline features of {entity_table}").set_index("qid")
    for child_name, child in db.schema.items():
        for fk, parent in child.foreign_keys.items():
            if parent != entity_table:
                continue
            ckinds, t = db.columns[child_name], child.time_column
            prefix = f"{child_name}_{fk}"
            when = f" AND c.{_q(t)} <= q.ts" if t else ""
            cols = [f"count(c.{_q(fk)}) AS {_q(prefix + '_count')}"]
            if t:
                cols += [f"count(c.{_q(fk)}) FILTER (WHERE c.{_q(t)} > q.ts - INTERVAL {d} DAY) AS {_q(f'{prefix}_count_{d}d')}"
                         for d in WINDOWS]
                cols.append(f"date_diff('second', max(c.{_q(t)}), q.ts) / 86400.0 AS {_q(prefix + '_days_since')}")
            for column in child.feature_columns(ckinds):
                if ckinds[column] in ("number", "bool"):
                    value = f"CAST(c.{_q(column)} AS DOUBLE)"
                    cols.append(f"avg({value}) AS {_q(f'{prefix}_{column}_mean')}")
                    if t:
                        cols.append(f"avg({value}) FILTER (WHERE c.{_q(t)} > q.ts - INTERVAL 90 DAY) "
                                    f"AS {_q(f'{prefix}_{column}_mean_90d')}")
            joins = ""
            for j, (other_fk, grand) in enumerate(child.foreign_keys.items()):
                if other_fk == fk:
                    continue
                gkinds, gschema = db.columns[grand], db.schema[grand]
                joins += (f" LEFT JOIN {_q(grand)} p{j} ON p{j}.{_q(gschema.primary_key)} = c.{_q(other_fk)}")
                for column in gschema.feature_columns(gkinds):
                    if gkinds[column] == "number":
                        cols.append(f"avg(CAST(p{j}.{_q(column)} AS DOUBLE)) AS {_q(f'{prefix}_{grand}_{column}_mean')}")
            query = (f"SELECT q.qid, {', '.join(cols)} FROM _queries q LEFT JOIN {_q(child_name)} c "
                     f"ON c.{_q(fk)} = q.entity_id{when}{joins} GROUP BY q.qid, q.ts")
            part = db.sql(query, what=f"baseline features of {child_name}").set_index("qid").drop(columns="ts", errors="ignore")
            features = features.join(part)
    con.unregister("_queries")
    return features.sort_index().astype(np.float64)


def _distinct(db: Database, table: str, column: str) -> int:
    return int(db.connection.execute(f"SELECT count(DISTINCT {_q(column)}) FROM {db.table_ref(table)}").fetchall()[0][0])


def fit_trees(features: pd.DataFrame, labels: np.ndarray, *, kind: str, seed: int = 0):
    """HistGradientBoosting (early stopping on an internal 10% split of the training rows)."""
    from sklearn.ensemble import (  # slow import
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    model_type = HistGradientBoostingClassifier if kind == "binary" else HistGradientBoostingRegressor
    model = model_type(max_iter=300, learning_rate=0.05, early_stopping=True, random_state=seed)
    return model.fit(features.to_numpy(), labels)
