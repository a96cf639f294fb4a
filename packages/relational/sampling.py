"""Context sampling: for each (entity, time) a bounded set of cells reached over foreign keys.

A context holds the entity's row, the rows it points to, the latest `children_per_table` rows of each
table pointing to it (at or before the time), and the rows those point to; never a row whose time is
after the prediction time. Every non-key value of those rows is a cell token; a last "label cell"
(its row points to the entity's row) carries the task's question. Everything is vectorised over all
queries at once with NumPy (sorted keys and `searchsorted`), not a Python loop per query.

Legend: N contexts, L cells per context, W hashed words per text cell, P parents per row.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from panformer.engine.errors import UserError
from panformer.relational.database import Database, cell_kind, seconds

HASH_BUCKETS = 4096
WORDS = 4  # hashed words kept per text cell and per name
# Cell kinds (0 is padding).
PAD, NUMBER, BOOL, TIME, TEXT, LABEL = range(6)
KIND_CODES = {"number": NUMBER, "bool": BOOL, "time": TIME, "text": TEXT}
DAY = 86_400.0


def hash_words(text: str) -> list[int]:
    """Up to WORDS stable word hashes in 1..HASH_BUCKETS-1 (0 pads); database-agnostic by design."""
    words = [w for w in re.split(r"[^0-9a-z]+", str(text).lower()) if w][:WORDS]
    ids = [1 + zlib.crc32(w.encode()) % (HASH_BUCKETS - 1) for w in words]
    return ids + [0] * (WORDS - len(ids))


@dataclass
class EncodedColumn:
    """One feature column ready to become cells: `values` float (rows,) or `words` int (rows, W)."""

    name: str
    kind: int
    column_id: int
    values: np.ndarray  # number: z-score; bool: 0/1; time: seconds; text: unused (zeros)
    words: np.ndarray | None  # text only
    present: np.ndarray  # bool (rows,): not null


@dataclass
class EncodedTable:
    name: str
    table_id: int
    times: np.ndarray | None  # seconds (rows,), NaN = unknown
    columns: list[EncodedColumn]
    parents: list[tuple[int, np.ndarray]]  # (parent table id, parent row index (rows,), -1 = none)
    name_words: list[int] = field(default_factory=list)


@dataclass
class EncodedDatabase:
    """A database turned into arrays the sampler indexes; `column_words[column_id]` names each column."""

    database: Database
    tables: list[EncodedTable]
    index: dict[str, int]
    column_words: np.ndarray  # (C + 1, W); the last row names the label column
    children: dict[int, list[tuple[int, int]]]  # parent table id -> [(child table id, parent slot)]

    def table(self, name: str) -> EncodedTable:
        return self.tables[self.index[name]]


def encode_database(db: Database, *, stats_before: float | None = None, label_name: str = "label") -> EncodedDatabase:
    """Encode every table's cells. Numbers are z-scored per column over the rows dated before
    `stats_before` (seconds) when given, so statistics never come from the test period."""
    names = list(db.schema)
    index = {name: i for i, name in enumerate(names)}
    tables, column_words = [], []
    for name in names:
        frame, schema = db.tables[name], db.schema[name]
        times = seconds(frame[schema.time_column]) if schema.time_column else None
        fit_rows = np.ones(len(frame), bool)
        if stats_before is not None and times is not None:
            fit_rows = ~(times >= stats_before)
        columns = []
        for column in schema.feature_columns(frame):
            series = frame[column]
            kind = KIND_CODES[cell_kind(series)]
            present = series.notna().to_numpy().copy()
            words = None
            if kind == NUMBER:
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                ref = values[fit_rows & present] if (fit_rows & present).any() else values[present]
                mean, std = (float(np.mean(ref)), float(np.std(ref))) if len(ref) else (0.0, 1.0)
                values = (values - mean) / (std if std > 0 else 1.0)
            elif kind == BOOL:
                values = series.fillna(False).to_numpy(dtype=np.float64)
            elif kind == TIME:
                values = seconds(series)
                present &= ~np.isnan(values)
            else:
                codes, uniques = pd.factorize(series.astype("string"), use_na_sentinel=True)
                table_words = np.array([hash_words(u) for u in uniques] + [[0] * WORDS], dtype=np.int64)
                words = table_words[codes]  # -1 (null) picks the zero row
                values = np.zeros(len(frame))
            columns.append(EncodedColumn(column, kind, len(column_words), np.nan_to_num(values, nan=0.0)
                                         if kind != TIME else values, words, present))
            column_words.append(hash_words(column))
        tables.append(EncodedTable(name, index[name], times, columns, [], hash_words(name)))
    for name in names:
        schema, table = db.schema[name], tables[index[name]]
        for column, parent in schema.foreign_keys.items():
            parent_keys = pd.Index(db.tables[parent][db.schema[parent].primary_key])
            rows = parent_keys.get_indexer(db.tables[name][column])
            table.parents.append((index[parent], rows.astype(np.int64)))
    children: dict[int, list[tuple[int, int]]] = {}
    for table in tables:
        for slot, (parent_id, _) in enumerate(table.parents):
            children.setdefault(parent_id, []).append((table.table_id, slot))
    column_words.append(hash_words(label_name))
    return EncodedDatabase(db, tables, index, np.array(column_words, dtype=np.int64), children)


@dataclass
class Contexts:
    """Padded contexts: every array has N rows; see the module legend."""

    kind: np.ndarray  # int (N, L)
    value: np.ndarray  # float (N, L): number/bool value, or the relative-time feature
    words: np.ndarray  # int (N, L, W): hashed words of text cells
    column_words: np.ndarray  # int (N, L, W): hashed words of the column name
    table_words: np.ndarray  # int (N, L, W): hashed words of the table name
    column_ids: np.ndarray  # int (N, L): same id = same column of the same table
    row_ids: np.ndarray  # int (N, L): row within the context
    parent_rows: np.ndarray  # int (N, L, P): parent rows of each cell's row, -1 none
    label_pos: np.ndarray  # int (N,): where the label cell sits

    def __len__(self) -> int:
        return len(self.kind)


def _latest_children(
    parent_rows: np.ndarray, times: np.ndarray, entity_rows: np.ndarray, cutoff: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each query q, up to k child rows with parent == entity_rows[q] and time <= cutoff[q], latest
    first. Returns (query index, child row) pairs. Vectorised: one sort, two searchsorted calls."""
    keep = parent_rows >= 0
    rows = np.flatnonzero(keep)
    t = np.nan_to_num(times[rows], nan=-np.inf)
    order = np.lexsort((t, parent_rows[rows]))
    rows, sorted_parent, sorted_time = rows[order], parent_rows[rows][order], t[order]
    start = np.searchsorted(sorted_parent, entity_rows, side="left")
    stop = np.searchsorted(sorted_parent, entity_rows, side="right")
    # Within each parent's block times are sorted, so a combined (parent, time) key makes one
    # searchsorted answer "the last row at or before the cutoff" for every query.
    key = sorted_parent.astype(np.float64) * 1e11 + np.clip(sorted_time, -4e10, 4e10)
    hi = np.searchsorted(key, entity_rows.astype(np.float64) * 1e11 + cutoff, side="right")
    hi = np.clip(hi, start, stop)
    lo = np.maximum(start, hi - k)
    counts = (hi - lo).astype(np.int64)
    query = np.repeat(np.arange(len(entity_rows)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    picked = np.repeat(hi, counts) - 1 - within  # latest first
    return query, rows[picked]


def sample_contexts(
    enc: EncodedDatabase,
    entity_table: str,
    entity_ids: np.ndarray,
    timestamps: np.ndarray,
    *,
    max_cells: int = 96,
    children_per_table: int = 8,
    source: str = "task",
) -> Contexts:
    """Contexts for N (entity id, timestamp) queries; timestamps are float seconds."""
    if entity_table not in enc.index:
        raise UserError(f"{source}: entity table '{entity_table}' is not in the database; known: {', '.join(enc.index)}")
    table = enc.table(entity_table)
    pk = enc.database.schema[entity_table].primary_key
    if pk is None:
        raise UserError(f"{source}: entity table '{entity_table}' has no primary key; declare one in a schema file")
    entity_rows = pd.Index(enc.database.tables[entity_table][pk]).get_indexer(pd.Series(entity_ids))
    if (entity_rows < 0).any():
        missing = entity_ids[entity_rows < 0][0]
        raise UserError(f"{source}: entity id {missing!r} is not in {entity_table}.{pk}; give ids that exist")
    n = len(entity_rows)
    cutoff = np.asarray(timestamps, dtype=np.float64)

    def visible(t: EncodedTable, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if t.times is None:
            return np.ones(len(rows), bool)
        return ~(t.times[rows] > cutoff[queries])  # unknown times are kept

    # Candidate rows as (query, table, row, priority); lower priority survives truncation first.
    parts = [(np.arange(n), np.full(n, table.table_id), entity_rows, np.zeros(n))]
    for parent_id, rows in table.parents:
        p = rows[entity_rows]
        ok = (p >= 0) & visible(enc.tables[parent_id], np.maximum(p, 0), np.arange(n))
        parts.append((np.arange(n)[ok], np.full(ok.sum(), parent_id), p[ok], np.ones(ok.sum())))
    for child_id, slot in enc.children.get(table.table_id, []):
        child = enc.tables[child_id]
        times = child.times if child.times is not None else np.zeros(len(child.parents[slot][1]))
        query, rows = _latest_children(child.parents[slot][1], times, entity_rows, cutoff, children_per_table)
        rank = np.arange(len(query)) - np.repeat(np.r_[0, np.cumsum(np.bincount(query, minlength=n))[:-1]],
                                                 np.bincount(query, minlength=n))
        parts.append((query, np.full(len(query), child_id), rows, 2 + rank))
        for parent_id, prow in child.parents:  # the children's other parents (an order's product)
            if parent_id == table.table_id:
                continue
            p = prow[rows]
            ok = (p >= 0) & visible(enc.tables[parent_id], np.maximum(p, 0), query)
            parts.append((query[ok], np.full(ok.sum(), parent_id), p[ok], 2.5 + rank[ok]))
    q, t, r, prio = (np.concatenate(x) for x in zip(*parts, strict=True))
    rows_max = max(len(frame) for frame in enc.database.tables.values()) + 1
    n_tables = len(enc.tables)
    key = (q * n_tables + t) * rows_max + r
    order = np.lexsort((prio, key))  # by key, best priority first
    key, q, t, r, prio = key[order], q[order], t[order], r[order], prio[order]
    first = np.r_[True, key[1:] != key[:-1]]
    q, t, r, prio, key = q[first], t[first], r[first], prio[first], key[first]
    order = np.lexsort((prio, q))
    q, t, r, key = q[order], t[order], r[order], key[order]
    row_local = np.arange(len(q)) - np.searchsorted(q, q, side="left")

    # Cells: each row expands into its table's present feature columns.
    cell_parts = []
    for x in enc.tables:
        sel = np.flatnonzero(t == x.table_id)
        for c_i, col in enumerate(x.columns):
            s = sel[col.present[r[sel]]]
            cell_parts.append((s, np.full(len(s), c_i), np.full(len(s), x.table_id)))
    cell_row = np.concatenate([p[0] for p in cell_parts])
    cell_col = np.concatenate([p[1] for p in cell_parts])
    order = np.lexsort((cell_col, cell_row))  # rows are already in (query, priority) order
    cell_row, cell_col = cell_row[order], cell_col[order]
    cell_q = q[cell_row]
    pos = np.arange(len(cell_q)) - np.searchsorted(cell_q, cell_q, side="left")
    keep = pos < max_cells - 1  # the last slot is the label cell's
    cell_row, cell_col, cell_q, pos = cell_row[keep], cell_col[keep], cell_q[keep], pos[keep]

    P = max([len(x.parents) for x in enc.tables] + [1])
    out = Contexts(
        kind=np.zeros((n, max_cells), np.int64), value=np.zeros((n, max_cells), np.float32),
        words=np.zeros((n, max_cells, WORDS), np.int64), column_words=np.zeros((n, max_cells, WORDS), np.int64),
        table_words=np.zeros((n, max_cells, WORDS), np.int64), column_ids=np.full((n, max_cells), -1, np.int64),
        row_ids=np.full((n, max_cells), -1, np.int64), parent_rows=np.full((n, max_cells, P), -1, np.int64),
        label_pos=np.zeros(n, np.int64),
    )
    # Parent rows of every context row, as local row numbers (-1 when the parent is not in the context).
    row_parents = np.full((len(q), P), -1, np.int64)
    by_key = np.argsort(key)
    key_sorted = key[by_key]
    for x in enc.tables:
        sel = np.flatnonzero(t == x.table_id)
        for slot, (parent_id, prow) in enumerate(x.parents):
            p = prow[r[sel]]
            want = (q[sel] * n_tables + parent_id) * rows_max + p
            hit = np.clip(np.searchsorted(key_sorted, want), 0, len(key_sorted) - 1)
            found = (key_sorted[hit] == want) & (p >= 0)
            row_parents[sel[found], slot] = row_local[by_key[hit[found]]]
    table_ids = t[cell_row]
    for x in enc.tables:
        m = table_ids == x.table_id
        if not m.any():
            continue
        for c_i, col in enumerate(x.columns):
            mm = np.flatnonzero(m & (cell_col == c_i))
            if not len(mm):
                continue
            rows, qq, pp = r[cell_row[mm]], cell_q[mm], pos[mm]
            out.kind[qq, pp] = col.kind
            out.column_ids[qq, pp] = col.column_id
            out.column_words[qq, pp] = enc.column_words[col.column_id]
            out.table_words[qq, pp] = x.name_words
            if col.kind == TIME:
                days = (cutoff[qq] - col.values[rows]) / DAY
                out.value[qq, pp] = np.sign(days) * np.log1p(np.abs(days)) / 3.0
            elif col.kind == TEXT:
                out.words[qq, pp] = col.words[rows]
            else:
                out.value[qq, pp] = col.values[rows]
    out.row_ids[cell_q, pos] = row_local[cell_row]
    out.parent_rows[cell_q, pos] = row_parents[cell_row]
    # The label cell: its own row (after the context's rows), pointing to the entity row (local row 0).
    label_pos = np.bincount(cell_q, minlength=n)
    rows_per_query = np.bincount(q, minlength=n)
    ar = np.arange(n)
    out.label_pos[:] = label_pos
    out.kind[ar, label_pos] = LABEL
    out.column_ids[ar, label_pos] = len(enc.column_words) - 1
    out.column_words[ar, label_pos] = enc.column_words[-1]
    out.table_words[ar, label_pos] = hash_words("task")
    out.row_ids[ar, label_pos] = rows_per_query
    out.parent_rows[ar, label_pos, 0] = 0
    return out
