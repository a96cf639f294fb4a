"""Context sampling: for each (entity, time) a bounded set of cells reached over foreign keys.

A context holds the entity's row, the rows it points to, the latest `children_per_table` rows of each
table pointing to it (at or before the time), and the rows those point to; never a row whose time is
after the prediction time. Every non-key value of those rows is a cell token; a last "label cell"
(its row points to the entity's row) carries the task's question.

Out of core: the tables stay in DuckDB. For all queries at once, one SQL query per relation (the entity
rows, their parents, each child table's latest rows by a window over the join, the children's parents)
streams its rows in query order; queries are then assembled `CHUNK_QUERIES` at a time from just the
rows they reached, vectorised with NumPy (sorted keys and `searchsorted`, no Python loop per query).
Memory is bounded by the chunk, whatever the size of the tables; DuckDB joins and sorts out of core.

Legend: N contexts, L cells per context, W hashed words per text cell, P parents per row.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from panformer.engine.errors import UserError
from panformer.relational.database import Database, quote, seconds

HASH_BUCKETS = 4096
WORDS = 4  # hashed words kept per text cell and per name
# Cell kinds (0 is padding).
PAD, NUMBER, BOOL, TIME, TEXT, LABEL = range(6)
KIND_CODES = {"number": NUMBER, "bool": BOOL, "time": TIME, "text": TEXT}
DAY = 86_400.0
CHUNK_QUERIES = 4096  # queries assembled at once (bounds memory)
_query_tables = itertools.count()


def hash_words(text: str) -> list[int]:
    """Up to WORDS stable word hashes in 1..HASH_BUCKETS-1 (0 pads); database-agnostic by design."""
    words = [w for w in re.split(r"[^0-9a-z]+", str(text).lower()) if w][:WORDS]
    ids = [1 + zlib.crc32(w.encode()) % (HASH_BUCKETS - 1) for w in words]
    return ids + [0] * (WORDS - len(ids))


@dataclass
class ColumnCodec:
    """How one feature column becomes cells; numbers are z-scored with `mean` and `std`."""

    name: str
    kind: int
    column_id: int
    mean: float = 0.0
    std: float = 1.0


@dataclass
class TableCodec:
    """One table's cells and keys: `foreign_keys` lists (column, parent table id)."""

    name: str
    table_id: int
    primary_key: str | None
    time_column: str | None
    columns: list[ColumnCodec]
    foreign_keys: list[tuple[str, int]]
    name_words: list[int] = field(default_factory=list)


@dataclass
class EncodedDatabase:
    """How a database's cells are encoded (no rows: those stay in DuckDB); `column_words[column_id]`
    names each column."""

    database: Database
    tables: list[TableCodec]
    index: dict[str, int]
    column_words: np.ndarray  # (C + 1, W); the last row names the label column
    children: dict[int, list[tuple[int, int]]]  # parent table id -> [(child table id, parent slot)]

    def table(self, name: str) -> TableCodec:
        return self.tables[self.index[name]]


def encode_database(db: Database, *, stats_before: float | None = None, label_name: str = "label") -> EncodedDatabase:
    """Each column's cell kind and id, and number statistics in one SQL pass per table. Numbers are
    z-scored per column over the rows dated before `stats_before` (seconds) when given, so statistics
    never come from the test period."""
    names = list(db.schema)
    index = {name: i for i, name in enumerate(names)}
    tables, column_words = [], []
    for name in names:
        schema, kinds = db.schema[name], db.columns[name]
        columns = []
        for column in schema.feature_columns(kinds):
            columns.append(ColumnCodec(column, KIND_CODES[kinds[column]], len(column_words)))
            column_words.append(hash_words(column))
        _number_statistics(db, name, [c for c in columns if c.kind == NUMBER], stats_before)
        foreign_keys = [(column, index[parent]) for column, parent in schema.foreign_keys.items()]
        tables.append(TableCodec(name, index[name], schema.primary_key, schema.time_column, columns, foreign_keys,
                                 hash_words(name)))
    children: dict[int, list[tuple[int, int]]] = {}
    for table in tables:
        for slot, (_, parent_id) in enumerate(table.foreign_keys):
            children.setdefault(parent_id, []).append((table.table_id, slot))
    column_words.append(hash_words(label_name))
    return EncodedDatabase(db, tables, index, np.array(column_words, dtype=np.int64), children)


def _number_statistics(db: Database, table: str, columns: list[ColumnCodec], stats_before: float | None) -> None:
    """Mean and population std of each number column over the rows before `stats_before` (rows of unknown
    time included), or over all rows when none are before it."""
    if not columns:
        return
    time_column = db.schema[table].time_column
    fit = "TRUE"
    if stats_before is not None and time_column is not None:
        cutoff = pd.Timestamp(round(stats_before * 1e6), unit="us")
        fit = f"NOT coalesce(CAST({quote(time_column)} AS TIMESTAMP) >= TIMESTAMP '{cutoff}', FALSE)"
    parts = []
    for c in columns:
        x = f"CAST({quote(c.name)} AS DOUBLE)"
        parts += [f"count({x}) FILTER (WHERE {fit})", f"avg({x}) FILTER (WHERE {fit})",
                  f"stddev_pop({x}) FILTER (WHERE {fit})", f"avg({x})", f"stddev_pop({x})"]
    stats = db.connection.execute(f"SELECT {', '.join(parts)} FROM {db.table_ref(table)}").fetchall()[0]
    for i, c in enumerate(columns):
        fitted, mean, std, all_mean, all_std = stats[5 * i:5 * i + 5]
        if not fitted:
            mean, std = all_mean, all_std
        c.mean = float(mean) if mean is not None else 0.0
        c.std = float(std) if std else 1.0


# --- rows reached by the queries, streamed from DuckDB ---------------------------------------------


@dataclass
class EncodedColumn:
    """One feature column of the fetched rows: `values` float (rows,) or `words` int (rows, W)."""

    kind: int
    column_id: int
    values: np.ndarray  # number: z-score; bool: 0/1; time: seconds; text: unused (zeros)
    words: np.ndarray | None  # text only
    present: np.ndarray  # bool (rows,): not null


@dataclass
class EncodedTable:
    """The rows of one table that a chunk of queries reached, in the table's row order."""

    table_id: int
    size: int  # rows fetched
    keys: pd.Index  # primary-key values of the rows (empty without a primary key)
    times: np.ndarray | None  # seconds (rows,), NaN = unknown
    columns: list[EncodedColumn]
    parents: list[tuple[int, np.ndarray]]  # (parent table id, parent row index (rows,), -1 = none)
    name_words: list[int]


class _Stream:
    """One relation's rows for all queries, in query order (column `qid`), read from DuckDB in pieces."""

    def __init__(self, db: Database, table_id: int, query: str) -> None:
        self.table_id = table_id
        self.cursor = db.connection.cursor()
        self.cursor.execute(query)
        self.pending: pd.DataFrame | None = None
        self.done = False

    def take(self, stop: int) -> pd.DataFrame:
        """The rows of queries before `stop` (every earlier query's rows were taken before)."""
        parts = [] if self.pending is None else [self.pending]
        while not self.done and (not parts or parts[-1]["qid"].iloc[-1] < stop):
            piece = self.cursor.fetch_df_chunk(8)
            if piece.empty:
                self.done = True
                self.cursor.close()
            else:
                parts.append(piece)
        if not parts:
            return pd.DataFrame()
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        cut = int(np.searchsorted(frame["qid"].to_numpy(), stop, side="left"))
        self.pending = frame.iloc[cut:] if cut < len(frame) else None
        return frame.iloc[:cut]

    def close(self) -> None:
        if not self.done:
            self.cursor.close()


def _relation_queries(enc: EncodedDatabase, entity: TableCodec, queries: str, k: int) -> list[tuple[int, str]]:
    """(table id, SQL) for each relation a context reaches; every row comes with its query (`qid`) and
    its row number in the table (`_rowid`), ordered by query."""
    db = enc.database

    def rows_of(table: TableCodec, alias: str) -> str:
        return f"{alias}.rowid AS _rowid, {db.select_list(table.name, alias=alias)}"

    def time_of(table: TableCodec, alias: str) -> str:
        return f"CAST({alias}.{quote(table.time_column)} AS TIMESTAMP)"

    entity_join = (f"{queries} q JOIN {db.table_ref(entity.name)} e "
                   f"ON e.{quote(entity.primary_key)} = q.entity_id")
    out = [(entity.table_id, f"SELECT q.qid, {rows_of(entity, 'e')} FROM {entity_join} ORDER BY q.qid")]
    for column, parent_id in entity.foreign_keys:
        parent = enc.tables[parent_id]
        out.append((parent_id, f"SELECT q.qid, {rows_of(parent, 'p')} FROM {entity_join} "
                               f"JOIN {db.table_ref(parent.name)} p ON p.{quote(parent.primary_key)} = "
                               f"e.{quote(column)} ORDER BY q.qid"))
    for child_id, slot in enc.children.get(entity.table_id, []):
        child = enc.tables[child_id]
        fk = child.foreign_keys[slot][0]
        # The latest k rows at or before the time (unknown times count as earliest, as in NumPy's sort);
        # ties go to the later row, as the stable sort by row order does.
        visible, order = "", "c.rowid DESC"
        if child.time_column is not None:
            visible = f" AND ({time_of(child, 'c')} <= q.ts OR c.{quote(child.time_column)} IS NULL)"
            order = f"{time_of(child, 'c')} DESC NULLS LAST, c.rowid DESC"
        picked = (f"SELECT q.qid, {rows_of(child, 'c')} FROM {queries} q JOIN {db.table_ref(child.name)} c "
                  f"ON c.{quote(fk)} = q.entity_id{visible} "
                  f"QUALIFY row_number() OVER (PARTITION BY q.qid ORDER BY {order}) <= {k}")
        out.append((child_id, f"{picked} ORDER BY qid"))
        for column, parent_id in child.foreign_keys:
            if parent_id == entity.table_id:
                continue
            parent = enc.tables[parent_id]
            out.append((parent_id, f"WITH picked AS ({picked}) SELECT c.qid, {rows_of(parent, 'p')} FROM picked c "
                                   f"JOIN {db.table_ref(parent.name)} p ON p.{quote(parent.primary_key)} = "
                                   f"c.{quote(column)} ORDER BY c.qid"))
    return out


def _encode_rows(enc: EncodedDatabase, frames: dict[int, pd.DataFrame]) -> list[EncodedTable]:
    """The fetched rows of every table (one row per table row, in table order) as cell arrays."""
    tables: list[EncodedTable] = []
    for codec in enc.tables:
        frame = frames.get(codec.table_id)
        if frame is None:
            frame = pd.DataFrame({"_rowid": np.zeros(0, np.int64)} | {c: [] for c in enc.database.columns[codec.name]})
        keys = pd.Index(frame[codec.primary_key]) if codec.primary_key else pd.Index([])
        times = seconds(frame[codec.time_column]) if codec.time_column else None
        columns = []
        for c in codec.columns:
            series = frame[c.name]
            present = series.notna().to_numpy().copy()
            words = None
            if c.kind == NUMBER:
                values = np.nan_to_num((series.to_numpy(dtype=np.float64, na_value=np.nan) - c.mean) / c.std)
            elif c.kind == BOOL:
                values = series.astype("boolean").fillna(False).to_numpy(dtype=np.float64)
            elif c.kind == TIME:
                values = seconds(series)
                present &= ~np.isnan(values)
            else:
                codes, uniques = pd.factorize(series.astype("string"), use_na_sentinel=True)
                table_words = np.array([hash_words(u) for u in uniques] + [[0] * WORDS], dtype=np.int64)
                words = table_words[codes]  # -1 (null) picks the zero row
                values = np.zeros(len(frame))
            columns.append(EncodedColumn(c.kind, c.column_id, values, words, present))
        tables.append(EncodedTable(codec.table_id, len(frame), keys, times, columns, [], codec.name_words))
    for codec, table in zip(enc.tables, tables, strict=True):
        frame = frames.get(codec.table_id)
        for column, parent_id in codec.foreign_keys:
            rows = (tables[parent_id].keys.get_indexer(frame[column]) if frame is not None and len(frame)
                    else np.zeros(0, np.int64))
            table.parents.append((parent_id, rows.astype(np.int64)))
    return tables


def _chunks(enc: EncodedDatabase, entity: TableCodec, entity_ids: np.ndarray, cutoff: np.ndarray, k: int,
            source: str) -> Iterator[tuple[int, list[EncodedTable]]]:
    """(first query, rows reached by queries first..first+CHUNK_QUERIES) for all queries in order."""
    db = enc.database
    name = f"_queries_{next(_query_tables)}"
    queries = f"memory.main.{name}"
    frame = pd.DataFrame({"qid": np.arange(len(entity_ids), dtype=np.int64), "entity_id": entity_ids,
                          "ts": pd.to_datetime(np.round(cutoff * 1e6).astype("int64"), unit="us")})
    con = db.connection
    con.register("_query_frame", frame)
    con.execute(f"CREATE TABLE {queries} AS SELECT * FROM _query_frame")
    con.unregister("_query_frame")
    streams: list[_Stream] = []
    try:
        missing = con.execute(f"SELECT q.entity_id FROM {queries} q ANTI JOIN {db.table_ref(entity.name)} e "
                              f"ON e.{quote(entity.primary_key)} = q.entity_id LIMIT 1").fetchall()
        if missing:
            raise UserError(f"{source}: entity id {missing[0][0]!r} is not in {entity.name}.{entity.primary_key}; "
                            f"give ids that exist")
        streams = [_Stream(db, table_id, sql) for table_id, sql in _relation_queries(enc, entity, queries, k)]
        for first in range(0, len(entity_ids), CHUNK_QUERIES):
            stop = first + CHUNK_QUERIES
            parts: dict[int, list[pd.DataFrame]] = {}
            for stream in streams:
                parts.setdefault(stream.table_id, []).append(stream.take(stop))
            frames = {}
            for table_id, pieces in parts.items():
                rows = pd.concat([p for p in pieces if len(p)] or pieces[:1], ignore_index=True)
                if len(rows):
                    rows = rows.drop(columns="qid").drop_duplicates("_rowid").sort_values("_rowid", kind="stable")
                    frames[table_id] = rows.reset_index(drop=True)
            yield first, _encode_rows(enc, frames)
    finally:
        for stream in streams:
            stream.close()
        con.execute(f"DROP TABLE IF EXISTS {queries}")


@dataclass
class Contexts:
    """Padded contexts: every array has N rows; see the module legend. Compact dtypes (word hashes are
    below HASH_BUCKETS, rows within a context below max_cells); widened to int64 when batched."""

    kind: np.ndarray  # int8 (N, L)
    value: np.ndarray  # float32 (N, L): number/bool value, or the relative-time feature
    words: np.ndarray  # int16 (N, L, W): hashed words of text cells
    column_words: np.ndarray  # int16 (N, L, W): hashed words of the column name
    table_words: np.ndarray  # int16 (N, L, W): hashed words of the table name
    column_ids: np.ndarray  # int32 (N, L): same id = same column of the same table
    row_ids: np.ndarray  # int16 (N, L): row within the context
    parent_rows: np.ndarray  # int16 (N, L, P): parent rows of each cell's row, -1 none
    label_pos: np.ndarray  # int16 (N,): where the label cell sits

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def empty(cls, n: int, max_cells: int, parents: int) -> Contexts:
        return cls(
            kind=np.zeros((n, max_cells), np.int8), value=np.zeros((n, max_cells), np.float32),
            words=np.zeros((n, max_cells, WORDS), np.int16), column_words=np.zeros((n, max_cells, WORDS), np.int16),
            table_words=np.zeros((n, max_cells, WORDS), np.int16), column_ids=np.full((n, max_cells), -1, np.int32),
            row_ids=np.full((n, max_cells), -1, np.int16), parent_rows=np.full((n, max_cells, parents), -1, np.int16),
            label_pos=np.zeros(n, np.int16),
        )

    def assign(self, first: int, part: Contexts) -> None:
        """Write `part` into rows first..first+len(part)."""
        for name in self.__dataclass_fields__:
            getattr(self, name)[first:first + len(part)] = getattr(part, name)


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


def parent_slots(enc: EncodedDatabase) -> int:
    """P: the most foreign keys of any table (at least one: the label cell's parent)."""
    return max([len(x.foreign_keys) for x in enc.tables] + [1])


def sample_contexts(
    enc: EncodedDatabase,
    entity_table: str,
    entity_ids: np.ndarray,
    timestamps: np.ndarray,
    *,
    max_cells: int = 96,
    children_per_table: int = 8,
    source: str = "task",
    progress: object | None = None,
) -> Contexts:
    """Contexts for N (entity id, timestamp) queries, all in memory (see `iter_contexts`; training writes
    them to disk instead, `panformer.relational.context_cache`)."""
    out = Contexts.empty(len(entity_ids), max_cells, parent_slots(enc))
    for first, part in iter_contexts(enc, entity_table, entity_ids, timestamps, max_cells=max_cells,
                                     children_per_table=children_per_table, source=source, progress=progress):
        out.assign(first, part)
    return out


def iter_contexts(
    enc: EncodedDatabase,
    entity_table: str,
    entity_ids: np.ndarray,
    timestamps: np.ndarray,
    *,
    max_cells: int = 96,
    children_per_table: int = 8,
    source: str = "task",
    progress: object | None = None,
) -> Iterator[tuple[int, Contexts]]:
    """(first query, contexts of queries first..first+CHUNK_QUERIES) for N (entity id, timestamp) queries,
    in order; timestamps are float seconds. Only one chunk is in memory at a time. `progress` (a rich
    progress bar and task id) advances per chunk."""
    if entity_table not in enc.index:
        raise UserError(f"{source}: entity table '{entity_table}' is not in the database; known: {', '.join(enc.index)}")
    entity = enc.table(entity_table)
    if entity.primary_key is None:
        raise UserError(f"{source}: entity table '{entity_table}' has no primary key; declare one in a schema file")
    if max_cells > np.iinfo(np.int16).max:
        raise UserError(f"{source}: max_cells {max_cells} is over {np.iinfo(np.int16).max}; use fewer cells")
    entity_ids = np.asarray(entity_ids)
    cutoff = np.asarray(timestamps, dtype=np.float64)
    parents = parent_slots(enc)
    for first, tables in _chunks(enc, entity, entity_ids, cutoff, children_per_table, source):
        stop = min(first + CHUNK_QUERIES, len(entity_ids))
        entity_rows = tables[entity.table_id].keys.get_indexer(pd.Series(entity_ids[first:stop]))
        part = _assemble(tables, enc.children, enc.column_words, entity.table_id, entity_rows, cutoff[first:stop],
                         max_cells=max_cells, children_per_table=children_per_table, parents=parents)
        if progress is not None:
            bar, task = progress
            bar.advance(task, stop - first)
        yield first, part


def _assemble(tables: list[EncodedTable], children: dict[int, list[tuple[int, int]]], column_words: np.ndarray,
              entity_id: int, entity_rows: np.ndarray, cutoff: np.ndarray, *, max_cells: int,
              children_per_table: int, parents: int) -> Contexts:
    """Contexts for one chunk of queries from the rows they reached (`tables`), vectorised."""
    table = tables[entity_id]
    n = len(entity_rows)

    def visible(t: EncodedTable, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if t.times is None:
            return np.ones(len(rows), bool)
        return ~(t.times[rows] > cutoff[queries])  # unknown times are kept

    # Candidate rows as (query, table, row, priority); lower priority survives truncation first.
    parts = [(np.arange(n), np.full(n, table.table_id), entity_rows, np.zeros(n))]
    for parent_id, rows in table.parents:
        p = rows[entity_rows]
        ok = (p >= 0) & visible(tables[parent_id], np.maximum(p, 0), np.arange(n))
        parts.append((np.arange(n)[ok], np.full(ok.sum(), parent_id), p[ok], np.ones(ok.sum())))
    for child_id, slot in children.get(table.table_id, []):
        child = tables[child_id]
        times = child.times if child.times is not None else np.zeros(len(child.parents[slot][1]))
        query, rows = _latest_children(child.parents[slot][1], times, entity_rows, cutoff, children_per_table)
        rank = np.arange(len(query)) - np.repeat(np.r_[0, np.cumsum(np.bincount(query, minlength=n))[:-1]],
                                                 np.bincount(query, minlength=n))
        parts.append((query, np.full(len(query), child_id), rows, 2 + rank))
        for parent_id, prow in child.parents:  # the children's other parents (an order's product)
            if parent_id == table.table_id:
                continue
            p = prow[rows]
            ok = (p >= 0) & visible(tables[parent_id], np.maximum(p, 0), query)
            parts.append((query[ok], np.full(ok.sum(), parent_id), p[ok], 2.5 + rank[ok]))
    q, t, r, prio = (np.concatenate(x) for x in zip(*parts, strict=True))
    rows_max = max(x.size for x in tables) + 1
    n_tables = len(tables)
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
    for x in tables:
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

    out = Contexts.empty(n, max_cells, parents)
    # Parent rows of every context row, as local row numbers (-1 when the parent is not in the context).
    row_parents = np.full((len(q), parents), -1, np.int64)
    by_key = np.argsort(key)
    key_sorted = key[by_key]
    for x in tables:
        sel = np.flatnonzero(t == x.table_id)
        for slot, (parent_id, prow) in enumerate(x.parents):
            p = prow[r[sel]]
            want = (q[sel] * n_tables + parent_id) * rows_max + p
            hit = np.clip(np.searchsorted(key_sorted, want), 0, len(key_sorted) - 1)
            found = (key_sorted[hit] == want) & (p >= 0)
            row_parents[sel[found], slot] = row_local[by_key[hit[found]]]
    table_ids = t[cell_row]
    for x in tables:
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
            out.column_words[qq, pp] = column_words[col.column_id]
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
    out.column_ids[ar, label_pos] = len(column_words) - 1
    out.column_words[ar, label_pos] = column_words[-1]
    out.table_words[ar, label_pos] = hash_words("task")
    out.row_ids[ar, label_pos] = rows_per_query
    out.parent_rows[ar, label_pos, 0] = 0
    return out
