"""Reading a relational database (DuckDB, SQLite, PostgreSQL) and discovering its schema, out of core.

Nothing is copied into pandas. A DuckDB file is ATTACHed read-only to an in-memory DuckDB (DuckDB reads
it from disk as queries need it). DuckDB's SQLite and PostgreSQL scanners are extensions that are not
available offline, so a SQLite file or a PostgreSQL database is streamed once, in chunks of rows, into a
DuckDB copy beside the run's data (`cache_dir`; a SQLite copy is reused while the file is unchanged, a
PostgreSQL copy lives for the process) and that copy is attached read-only the same way. The user's
database is only ever opened read-only (DuckDB `READ_ONLY`, SQLite `mode=ro`, PostgreSQL
`default_transaction_read_only`). Context sampling and the baseline's aggregates are DuckDB SQL over the
attached tables, whatever the source. The task's SQL is the user's own, so it runs on the source itself,
read-only, in the source's dialect (SQLite's date functions on SQLite, PostgreSQL's on PostgreSQL); its
rows come back as the same (entity_id, timestamp, label) frame.

The schema (primary key, foreign keys, one time column per table) comes from the database's own
constraints, with a YAML override file for databases without them:

    tables:
      orders:
        primary_key: order_id
        foreign_keys: {customer_id: customers, product_id: products}
        time_column: order_time
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import yaml

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.runlog import progress_bar

COPY_CHUNK_ROWS = 200_000  # rows per chunk when streaming a SQLite/PostgreSQL table into DuckDB
SOURCE = "src"  # the attached database's catalog name
# DuckDB's own working memory (cached blocks of the file, sorts, joins, windows); beyond it DuckDB spills
# to a temporary folder, so memory stays bounded whatever the size of the database and of the task.
DUCKDB_MEMORY = "512MB"
_spill_root: Path | None = None


@dataclass
class TableSchema:
    """One table: its key columns and time column; `foreign_keys` maps a column to the parent table."""

    name: str
    primary_key: str | None = None
    foreign_keys: dict[str, str] = field(default_factory=dict)
    time_column: str | None = None

    def feature_columns(self, columns: Iterable[str]) -> list[str]:
        """Columns that become cells: every column but the keys (`columns`: names, or a DataFrame)."""
        keys = {self.primary_key, *self.foreign_keys}
        return [c for c in columns if c not in keys]


DIALECTS = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgresql": "PostgreSQL"}  # URI scheme -> dialect


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Database:
    """A database's schema, the cell kind of every column, and a DuckDB connection whose default
    catalog holds its tables (`catalog`: the attached source, or `memory` for frames built in code).

    `uri` is the source, where task SQL runs; None (RelBench, frames built in code) runs task SQL on the
    in-memory DuckDB."""

    name: str
    schema: dict[str, TableSchema]
    columns: dict[str, dict[str, str]]  # table -> column -> cell kind (number, bool, time, text), in order
    connection: duckdb.DuckDBPyConnection = field(repr=False)
    catalog: str = "memory"
    uri: str | None = None

    @classmethod
    def from_frames(cls, name: str, tables: dict[str, pd.DataFrame], schema: dict[str, TableSchema]) -> Database:
        """Tables already in memory (RelBench, tests): copied into an in-memory DuckDB."""
        con = _connection()
        for table, frame in tables.items():
            frame = _naive_times(frame)
            con.register("_frame", frame)
            con.execute(f"CREATE TABLE {quote(table)} AS SELECT * FROM _frame")
            con.unregister("_frame")
        columns = _column_kinds(con, "memory")
        _infer_time_columns(schema, columns)
        validate_schema(schema, columns, source=name)
        return cls(name, schema, columns, con)

    @property
    def dialect(self) -> str:
        """The SQL dialect task SQL is written in: the source's (DuckDB for the in-memory copy)."""
        return "DuckDB" if self.uri is None else DIALECTS[_scheme(self.uri)]

    def table_ref(self, name: str) -> str:
        """The table's fully qualified name (for queries on cursors, which do not share `USE`)."""
        return f"{quote(self.catalog)}.main.{quote(name)}"

    def file_stamp(self) -> str | None:
        """The source file's path, size and modification time (with its write-ahead log's, if any): they
        change whenever its content does. None for a source that is not a file (PostgreSQL, frames)."""
        if self.uri is None or _scheme(self.uri) not in ("duckdb", "sqlite"):
            return None
        path = _file_path(self.uri).resolve()
        stamps = []
        for file in (path, path.with_name(f"{path.name}.wal"), path.with_name(f"{path.name}-wal")):
            if file.exists():
                stat = file.stat()
                stamps.append(f"{file}\x00{stat.st_size}\x00{stat.st_mtime_ns}")
        return "\n".join(stamps)

    def row_count(self, name: str) -> int:
        return int(self.connection.execute(f"SELECT count(*) FROM {self.table_ref(name)}").fetchall()[0][0])

    def read_table(self, name: str) -> pd.DataFrame:
        """One whole table as a DataFrame (times as naive UTC): for small tables and tests only."""
        return self.connection.execute(f"SELECT {self.select_list(name)} FROM {self.table_ref(name)}").df()

    def select_list(self, name: str, *, alias: str | None = None) -> str:
        """The table's columns for SELECT, times cast to naive UTC TIMESTAMPs (DATE and WITH TIME ZONE
        columns included), so every reader sees the same types."""
        prefix = f"{alias}." if alias else ""
        return ", ".join(f"CAST({prefix}{quote(c)} AS TIMESTAMP) AS {quote(c)}" if kind == "time"
                         else f"{prefix}{quote(c)}" for c, kind in self.columns[name].items())

    def sql(self, query: str, *, what: str) -> pd.DataFrame:
        """Run DuckDB SQL over the tables (the baseline's aggregates); a failure names `what`."""
        try:
            return self.connection.execute(query).df()
        except duckdb.Error as err:
            raise UserError(f"{what}: the SQL failed in DuckDB ({_first_line(err)}); fix the query") from None

    def task_sql(self, query: str, *, what: str) -> pd.DataFrame:
        """Run the task's SQL on the source, read-only, in its own dialect; a failure is one line naming
        `what`, the dialect and the source."""
        try:
            if self.uri is None or self.dialect == "DuckDB":  # the attached file is the source itself
                return _run_in_memory(self.connection, query)
            return _run_sqlalchemy(self.uri, query)
        except _QueryFailed as err:
            where = _shown_uri(self.uri) if self.uri else f"the in-memory DuckDB copy of {self.name}"
            raise UserError(f"{what}: task SQL failed in {self.dialect}: {err}; write the task in "
                            f"{self.dialect}'s SQL (the dialect of {where})") from None

    def describe(self) -> str:
        """The discovered schema, one table per block (for the `schema` command)."""
        lines = [f"database {self.name}: {len(self.schema)} tables"]
        for name, table in self.schema.items():
            lines.append(f"  {name} ({self.row_count(name)} rows)  primary key: {table.primary_key or '-'}  "
                         f"time: {table.time_column or '-'}")
            for column, parent in table.foreign_keys.items():
                lines.append(f"    {column} -> {parent}")
            kinds = ", ".join(f"{c}:{self.columns[name][c]}" for c in table.feature_columns(self.columns[name]))
            lines.append(f"    cells: {kinds or '-'}")
        return "\n".join(lines)


def cell_kind(column: pd.Series) -> str:
    """How a column's cells are encoded: number, bool, time or text."""
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(column):
        return "time"
    if pd.api.types.is_numeric_dtype(column):
        return "number"
    return "text"


def duckdb_kind(data_type: str) -> str:
    """The cell kind of a DuckDB column type."""
    t = data_type.upper()
    if t == "BOOLEAN":
        return "bool"
    if t.startswith(("TIMESTAMP", "DATE")):
        return "time"
    if t.startswith(("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                     "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")):
        return "number"
    return "text"


# --- reading ---------------------------------------------------------------------------------------


def read_database(uri: str, *, schema_file: str | Path | None = None, cache_dir: str | Path | None = None) -> Database:
    """Open `uri` read-only: `duckdb:///file.duckdb`, `sqlite:///file.db`, `postgresql://user@host:port/db`,
    or a bare path to a .duckdb / .sqlite file. SQLite and PostgreSQL are streamed into a DuckDB copy
    under `cache_dir` (default: the system's temporary folder)."""
    if "://" not in uri:
        suffix = Path(uri).suffix.lower()
        uri = f"sqlite:///{uri}" if suffix in {".sqlite", ".sqlite3", ".db"} else f"duckdb:///{uri}"
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "duckdb":
        path = _file_path(uri)
        if not path.is_file():
            raise UserError(f"--data {uri}: no such DuckDB file; give an existing duckdb:///path.duckdb")
        con = _attach(path, uri)
        schema = _duckdb_constraints(con)
    elif scheme.startswith(("sqlite", "postgresql", "postgres")):
        path, schema = _duckdb_copy(uri, Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()))
        con = _attach(path, uri)
    else:
        raise UserError(f"--data {uri}: unknown database URI; use duckdb:///FILE, sqlite:///FILE or postgresql://...")
    columns = _column_kinds(con, SOURCE)
    if not columns:
        raise UserError(f"--data {uri}: the database has no tables")
    schema = {name: schema.get(name, TableSchema(name)) for name in columns}
    if schema_file is not None:
        schema = apply_override(schema, columns, Path(schema_file))
    _infer_time_columns(schema, columns)
    validate_schema(schema, columns, source=str(schema_file or uri))
    return Database(_display_name(uri), schema, columns, con, catalog=SOURCE, uri=uri)


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET threads TO 1")
    con.execute("SET TimeZone = 'UTC'")  # times compare as naive UTC everywhere (DuckDB, NumPy)
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    con.execute(f"SET temp_directory = '{str(_spill_folder()).replace(chr(39), chr(39) * 2)}'")
    return con


def _spill_folder() -> Path:
    """Where DuckDB spills beyond DUCKDB_MEMORY: private to the process (DuckDB's default would be `.tmp` in
    the working directory). DuckDB creates it on the first spill only; it is removed at exit."""
    global _spill_root
    if _spill_root is None:
        _spill_root = Path(tempfile.gettempdir()) / f"panformer-duckdb-{os.getpid()}"
        atexit.register(shutil.rmtree, _spill_root, ignore_errors=True)
    return _spill_root


def _attach(path: Path, uri: str) -> duckdb.DuckDBPyConnection:
    con = _connection()
    try:
        con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS {SOURCE} (TYPE duckdb, READ_ONLY)")
        con.execute(f"USE {SOURCE}")
    except duckdb.Error as err:
        con.close()
        raise UserError(f"--data {uri}: not a readable DuckDB database ({_first_line(err)})") from None
    return con


def _column_kinds(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, dict[str, str]]:
    columns: dict[str, dict[str, str]] = {}
    for table, column, data_type in con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND "
        "schema_name = 'main' ORDER BY table_name, column_index", [catalog]
    ).fetchall():
        columns.setdefault(table, {})[column] = duckdb_kind(data_type)
    return columns


def _duckdb_constraints(con: duckdb.DuckDBPyConnection) -> dict[str, TableSchema]:
    schema: dict[str, TableSchema] = {}
    for table, kind, columns, parent in con.execute(
        "SELECT table_name, constraint_type, constraint_column_names, referenced_table "
        "FROM duckdb_constraints() WHERE database_name = ? AND schema_name = 'main'", [SOURCE]
    ).fetchall():
        entry = schema.setdefault(table, TableSchema(table))
        if kind == "PRIMARY KEY" and len(columns) == 1:
            entry.primary_key = columns[0]
        elif kind == "FOREIGN KEY" and len(columns) == 1:
            entry.foreign_keys[columns[0]] = parent
    return schema


def _naive_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Python dates (SQLite, some drivers) as datetimes and zoned times as naive UTC."""
    out = frame.copy(deep=False)
    for column in out.columns:
        values = out[column]
        if values.dtype == object:
            first = values.dropna().iloc[:1].tolist()
            if first and isinstance(first[0], _DATES):
                out[column] = values = pd.to_datetime(values, utc=True)
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            out[column] = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return out


def _display_name(uri: str) -> str:
    return Path(uri.split("://", 1)[1].split("?")[0]).stem or uri


def _scheme(uri: str) -> str:
    """duckdb, sqlite or postgresql (driver suffixes and the postgres:// alias folded)."""
    scheme = uri.split("://", 1)[0].lower().split("+")[0]
    return "postgresql" if scheme == "postgres" else scheme


def _shown_uri(uri: str) -> str:
    """The URI with any password hidden, for messages."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", uri)


def _first_line(err: BaseException) -> str:
    return (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]


def _file_path(uri: str) -> Path:
    """The file of a DuckDB or SQLite URI: duckdb:///relative.duckdb, sqlite:////absolute.db (as SQLAlchemy)."""
    rest = uri.split("://", 1)[1]
    return Path(rest[1:] if rest.startswith("/") else rest)


def _sqlalchemy_url(uri: str) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy's URL and driver arguments for a read-only connection to a SQLite file or PostgreSQL."""
    scheme = uri.split("://", 1)[0]
    connect_args: dict[str, Any] = {}
    if scheme.startswith("sqlite"):
        path = _file_path(uri)
        if not path.is_file():
            raise UserError(f"--data {uri}: no such SQLite file; give an existing sqlite:///path.db")
        url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    else:
        url = uri.replace("postgres://", "postgresql://", 1)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        connect_args = {"options": "-c default_transaction_read_only=on", "connect_timeout": 5}
    return url, connect_args


def _duckdb_copy(uri: str, cache_dir: Path) -> tuple[Path, dict[str, TableSchema]]:
    """Stream every table of a SQLite/PostgreSQL database into a DuckDB file (bounded memory: one chunk
    of rows at a time) and return it with the schema discovered from the source's constraints. A SQLite
    copy is keyed by the file's path, size and modification time and reused; a PostgreSQL copy (whose
    content cannot be fingerprinted cheaply) is private to this process and removed at exit."""
    import sqlalchemy

    url, connect_args = _sqlalchemy_url(uri)
    if _scheme(uri) == "sqlite":
        stat = Path(url.split("file:", 1)[1].split("?")[0]).stat()
        key = hashlib.sha256(f"{url}\x00{stat.st_size}\x00{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir / "copies" / f"{_display_name(uri)}-{key}.duckdb"
    else:
        folder = Path(tempfile.mkdtemp(prefix="panformer-pg-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        target = folder / "copy.duckdb"
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as con:
            inspector = sqlalchemy.inspect(con)
            schema = {}
            for name in sorted(inspector.get_table_names()):
                pk = inspector.get_pk_constraint(name).get("constrained_columns") or []
                fks = {fk["constrained_columns"][0]: fk["referred_table"] for fk in inspector.get_foreign_keys(name)
                       if len(fk["constrained_columns"]) == 1}
                schema[name] = TableSchema(name, pk[0] if len(pk) == 1 else None, fks)
            if not target.is_file():
                with atomic_path(target) as tmp:
                    _stream_tables(con, inspector, list(schema), tmp, postgres=_scheme(uri) == "postgresql")
        engine.dispose()
    except ModuleNotFoundError as err:
        raise UserError(f"--data {uri}: the driver {err.name} is missing; pip install 'psycopg[binary]'") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise UserError(f"--data {_shown_uri(uri)}: cannot read the database ({_first_line(err)}); check the URI "
                        f"and the server") from None
    return target, schema


def _duckdb_type(column_type: Any) -> str | None:
    """The DuckDB type a SQLAlchemy column type is stored as (None: infer it from the values)."""
    import sqlalchemy

    if isinstance(column_type, sqlalchemy.Boolean):
        return "BOOLEAN"
    if isinstance(column_type, sqlalchemy.DateTime):
        return "TIMESTAMPTZ" if column_type.timezone else "TIMESTAMP"
    if isinstance(column_type, sqlalchemy.Date):
        return "TIMESTAMP"
    if isinstance(column_type, sqlalchemy.Integer):
        return "BIGINT"
    if isinstance(column_type, sqlalchemy.Float | sqlalchemy.Numeric):
        return "DOUBLE"
    if isinstance(column_type, sqlalchemy.types.NullType):
        return None
    return "VARCHAR"


def _stream_tables(con: Any, inspector: Any, names: list[str], target: Path, *, postgres: bool) -> None:
    """Each table in chunks of COPY_CHUNK_ROWS rows through the driver's cursor (server-side on
    PostgreSQL, so the client never holds a whole table) into `target`."""
    out = duckdb.connect(str(target))
    out.execute("SET threads TO 1")
    try:
        with progress_bar(enabled=True) as bar:
            task = bar.add_task(f"copying {len(names)} tables into DuckDB", total=len(names), status="")
            for name in names:
                types = {c["name"]: _duckdb_type(c["type"]) for c in inspector.get_columns(name)}
                dbapi = con.connection.dbapi_connection
                cursor = dbapi.cursor(name="panformer_copy") if postgres else dbapi.cursor()
                try:
                    cursor.execute(f"SELECT {', '.join(quote(c) for c in types)} FROM {quote(name)}")
                    created, copied = False, 0
                    while batch := cursor.fetchmany(COPY_CHUNK_ROWS):
                        frame = _naive_times(pd.DataFrame.from_records(batch, columns=list(types), coerce_float=True))
                        out.register("_chunk", frame)
                        if not created:  # declared types; undeclared ones (SQLite) from the first chunk
                            declared = ", ".join(
                                f"{quote(c)} {t or ('DOUBLE' if pd.api.types.is_numeric_dtype(frame[c]) else 'VARCHAR')}"
                                for c, t in types.items())
                            out.execute(f"CREATE TABLE {quote(name)} ({declared})")
                            created = True
                        out.execute(f"INSERT INTO {quote(name)} SELECT * FROM _chunk")
                        out.unregister("_chunk")
                        copied += len(batch)
                        bar.update(task, status=f"{name}: {copied:,} rows")
                    if not created:
                        declared = ", ".join(f"{quote(c)} {t or 'VARCHAR'}" for c, t in types.items())
                        out.execute(f"CREATE TABLE {quote(name)} ({declared})")
                finally:
                    cursor.close()
                bar.advance(task)
    finally:
        out.close()


# --- task SQL on the source ------------------------------------------------------------------------


class _QueryFailed(Exception):
    """The database refused the task's SQL; the message is the database's first line."""


def _run_in_memory(con: duckdb.DuckDBPyConnection, query: str) -> pd.DataFrame:
    try:
        return con.execute(query).df()
    except duckdb.Error as err:
        raise _QueryFailed(_first_line(err)) from None


def _run_sqlalchemy(uri: str, query: str) -> pd.DataFrame:
    """The query exactly as written, on the driver's own cursor without parameters (so `%` and `:name`
    reach the database untouched), in a read-only connection that is rolled back and closed."""
    import sqlalchemy

    url, connect_args = _sqlalchemy_url(uri)
    engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as con:
            cursor = con.connection.dbapi_connection.cursor()
            try:
                cursor.execute(query)
                columns = [d[0] for d in cursor.description or []]
                records = cursor.fetchall() if columns else []
            except engine.dialect.loaded_dbapi.Error as err:
                raise _QueryFailed(_first_line(err)) from None
            finally:
                cursor.close()
    except sqlalchemy.exc.SQLAlchemyError as err:  # the connection itself
        raise _QueryFailed(_first_line(err)) from None
    finally:
        engine.dispose()
    # coerce_float: PostgreSQL's NUMERIC (e.g. avg()) arrives as Decimal
    return pd.DataFrame.from_records(records, columns=columns, coerce_float=True)


def task_timestamps(values: pd.Series, *, what: str) -> pd.Series:
    """The task's timestamp column as naive UTC times, as the tables hold them: DuckDB and PostgreSQL
    times (with or without a zone) and SQLite's ISO text ('2024-03-01', '2024-03-01 10:00:00')."""
    if pd.api.types.is_numeric_dtype(values) and not values.empty:
        raise UserError(f"{what}: the timestamp column holds numbers, not dates; return a date or time "
                        f"(in SQLite e.g. datetime(x, 'unixepoch') or date(x))")
    try:
        return pd.to_datetime(values, utc=True, format="ISO8601").dt.tz_localize(None)
    except (ValueError, TypeError) as err:
        raise UserError(f"{what}: the timestamp column holds something that is not a date ({_first_line(err)}); "
                        f"return ISO dates or times") from None


# --- schema override and checks --------------------------------------------------------------------


def apply_override(
    schema: dict[str, TableSchema], columns: dict[str, dict[str, str]], path: Path
) -> dict[str, TableSchema]:
    """Merge a YAML schema file (see the module docstring) over the discovered schema."""
    if not path.is_file():
        raise UserError(f"schema file {path} does not exist; give a YAML file with a `tables:` mapping")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"schema file {path}: not valid YAML; fix the syntax") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
        raise UserError(f"schema file {path}: expected a `tables:` mapping of table name -> keys")
    allowed = {"primary_key", "foreign_keys", "time_column"}
    for name, spec in raw["tables"].items():
        if name not in columns:
            raise UserError(f"schema file {path}: table '{name}' is not in the database; known: {', '.join(columns)}")
        spec = spec or {}
        unknown = set(spec) - allowed
        if unknown:
            raise UserError(f"schema file {path}: tables.{name}: unknown keys {sorted(unknown)}; use {sorted(allowed)}")
        table = schema.setdefault(name, TableSchema(name))
        if "primary_key" in spec:
            table.primary_key = spec["primary_key"]
        if "time_column" in spec:
            table.time_column = spec["time_column"]
        table.foreign_keys.update(spec.get("foreign_keys") or {})
    return schema


_DATES = (datetime.date, datetime.datetime)


def _infer_time_columns(schema: dict[str, TableSchema], columns: dict[str, dict[str, str]]) -> None:
    """A table without a declared time column takes its first timestamp column (dates included)."""
    for name, table in schema.items():
        if table.time_column is None:
            times = [c for c, kind in columns[name].items() if kind == "time"]
            table.time_column = times[0] if times else None


def validate_schema(schema: dict[str, TableSchema], columns: dict[str, dict[str, str]], *, source: str) -> None:
    """Keys must name existing columns and tables; a foreign key must reach a table with a primary key."""
    for name, table in schema.items():
        present = set(columns[name])
        if table.primary_key is not None and table.primary_key not in present:
            raise UserError(f"{source}: table {name} has no primary-key column '{table.primary_key}'")
        if table.time_column is not None and table.time_column not in present:
            raise UserError(f"{source}: table {name} has no time column '{table.time_column}'")
        for column, parent in table.foreign_keys.items():
            if column not in present:
                raise UserError(f"{source}: table {name} has no foreign-key column '{column}'")
            if parent not in schema:
                raise UserError(f"{source}: foreign key {name}.{column} points to a missing table '{parent}'; "
                                f"fix the schema file or the database")
            if schema[parent].primary_key is None:
                raise UserError(f"{source}: foreign key {name}.{column} -> {parent}, but {parent} has no primary "
                                f"key; declare one in a schema file")


def seconds(values: pd.Series | np.ndarray) -> np.ndarray:
    """Timestamps as float seconds since the epoch (NaN for missing)."""
    stamps = pd.to_datetime(pd.Series(values)).astype("datetime64[ns]")
    out = stamps.to_numpy().astype("int64").astype(np.float64) / 1e9
    out[stamps.isna().to_numpy()] = np.nan
    return out
