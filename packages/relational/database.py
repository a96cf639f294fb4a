"""Reading a relational database (DuckDB, SQLite, PostgreSQL) and discovering its schema.

The user's database is opened read-only (DuckDB `read_only=True`, SQLite `mode=ro`, PostgreSQL
`default_transaction_read_only`) and copied table by table into an in-memory DuckDB, where context
sampling and the baseline's aggregates run the same way whatever the source. The task's SQL is the
user's own, so it runs on the source itself, read-only, in the source's dialect (SQLite's date functions
on SQLite, PostgreSQL's on PostgreSQL); its rows come back as the same (entity_id, timestamp, label) frame.

The schema (primary key, foreign keys, one time column per table) comes from the database's own
constraints, with a YAML override file for databases without them:

    tables:
      orders:
        primary_key: order_id
        foreign_keys: {customer_id: customers, product_id: products}
        time_column: order_time
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import yaml

from panformer.engine.errors import UserError


@dataclass
class TableSchema:
    """One table: its key columns and time column; `foreign_keys` maps a column to the parent table."""

    name: str
    primary_key: str | None = None
    foreign_keys: dict[str, str] = field(default_factory=dict)
    time_column: str | None = None

    def feature_columns(self, frame: pd.DataFrame) -> list[str]:
        """Columns that become cells: every column but the keys."""
        keys = {self.primary_key, *self.foreign_keys}
        return [c for c in frame.columns if c not in keys]


DIALECTS = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgresql": "PostgreSQL"}  # URI scheme -> dialect


@dataclass
class Database:
    """All tables of one database as DataFrames, their schema, and an in-memory DuckDB over them.

    `uri` is the source the tables were read from, where task SQL runs; None (RelBench, frames built in
    code) runs task SQL on the in-memory DuckDB."""

    name: str
    tables: dict[str, pd.DataFrame]
    schema: dict[str, TableSchema]
    connection: duckdb.DuckDBPyConnection = field(repr=False, default=None)  # type: ignore[assignment]
    uri: str | None = None

    def __post_init__(self) -> None:
        if self.connection is None:
            self.connection = duckdb.connect(":memory:")
            self.connection.execute("SET threads TO 1")
            for name, frame in self.tables.items():
                self.connection.register(name, frame)

    @property
    def dialect(self) -> str:
        """The SQL dialect task SQL is written in: the source's (DuckDB for the in-memory copy)."""
        return "DuckDB" if self.uri is None else DIALECTS[_scheme(self.uri)]

    def sql(self, query: str, *, what: str) -> pd.DataFrame:
        """Run DuckDB SQL over the in-memory copy (the baseline's aggregates); a failure names `what`."""
        try:
            return self.connection.execute(query).df()
        except duckdb.Error as err:
            raise UserError(f"{what}: the SQL failed in DuckDB ({_first_line(err)}); fix the query") from None

    def task_sql(self, query: str, *, what: str) -> pd.DataFrame:
        """Run the task's SQL on the source, read-only, in its own dialect; a failure is one line naming
        `what`, the dialect and the source."""
        try:
            if self.uri is None:
                return _run_in_memory(self.connection, query)
            if self.dialect == "DuckDB":
                return _run_duckdb(self.uri, query)
            return _run_sqlalchemy(self.uri, query)
        except _QueryFailed as err:
            where = _shown_uri(self.uri) if self.uri else f"the in-memory DuckDB copy of {self.name}"
            raise UserError(f"{what}: task SQL failed in {self.dialect}: {err}; write the task in "
                            f"{self.dialect}'s SQL (the dialect of {where})") from None

    def describe(self) -> str:
        """The discovered schema, one table per block (for the `schema` command)."""
        lines = [f"database {self.name}: {len(self.tables)} tables"]
        for name, table in self.schema.items():
            frame = self.tables[name]
            lines.append(f"  {name} ({len(frame)} rows)  primary key: {table.primary_key or '-'}  "
                         f"time: {table.time_column or '-'}")
            for column, parent in table.foreign_keys.items():
                lines.append(f"    {column} -> {parent}")
            kinds = ", ".join(f"{c}:{cell_kind(frame[c])}" for c in table.feature_columns(frame))
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


# --- reading ---------------------------------------------------------------------------------------


def read_database(uri: str, *, schema_file: str | Path | None = None) -> Database:
    """Open `uri` read-only and load every table: `duckdb:///file.duckdb`, `sqlite:///file.db`,
    `postgresql://user@host:port/db`, or a bare path to a .duckdb / .sqlite file."""
    if "://" not in uri:
        suffix = Path(uri).suffix.lower()
        uri = f"sqlite:///{uri}" if suffix in {".sqlite", ".sqlite3", ".db"} else f"duckdb:///{uri}"
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "duckdb":
        tables, schema = _read_duckdb(uri)
    elif scheme.startswith(("sqlite", "postgresql", "postgres")):
        tables, schema = _read_sqlalchemy(uri)
    else:
        raise UserError(f"--data {uri}: unknown database URI; use duckdb:///FILE, sqlite:///FILE or postgresql://...")
    if not tables:
        raise UserError(f"--data {uri}: the database has no tables")
    if schema_file is not None:
        schema = apply_override(schema, tables, Path(schema_file))
    _infer_time_columns(schema, tables)
    validate_schema(schema, tables, source=str(schema_file or uri))
    return Database(_display_name(uri), tables, schema, uri=uri)


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


def _duckdb_path(uri: str) -> Path:
    rest = uri.split("://", 1)[1]
    return Path(rest[1:] if rest.startswith("/") else rest)  # duckdb:///relative, duckdb:////absolute


def _read_duckdb(uri: str) -> tuple[dict[str, pd.DataFrame], dict[str, TableSchema]]:
    path = _duckdb_path(uri)
    if not path.is_file():
        raise UserError(f"--data {uri}: no such DuckDB file; give an existing duckdb:///path.duckdb")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as err:
        raise UserError(f"--data {uri}: not a readable DuckDB database ({str(err).splitlines()[0]})") from None
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY table_name").fetchall()]
        tables = {name: con.execute(f'SELECT * FROM "{name}"').df() for name in names}
        schema = {name: TableSchema(name) for name in names}
        for table, kind, columns, parent in con.execute(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table "
            "FROM duckdb_constraints() WHERE schema_name = 'main'"
        ).fetchall():
            if kind == "PRIMARY KEY" and len(columns) == 1:
                schema[table].primary_key = columns[0]
            elif kind == "FOREIGN KEY" and len(columns) == 1:
                schema[table].foreign_keys[columns[0]] = parent
    finally:
        con.close()
    return tables, schema


def _sqlalchemy_url(uri: str) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy's URL and driver arguments for a read-only connection to a SQLite file or PostgreSQL."""
    scheme, rest = uri.split("://", 1)
    connect_args: dict[str, Any] = {}
    if scheme.startswith("sqlite"):
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy reads them
        path = Path(rest[1:] if rest.startswith("/") else rest)
        if not path.is_file():
            raise UserError(f"--data {uri}: no such SQLite file; give an existing sqlite:///path.db")
        url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    else:
        url = uri.replace("postgres://", "postgresql://", 1)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        connect_args = {"options": "-c default_transaction_read_only=on", "connect_timeout": 5}
    return url, connect_args


def _read_sqlalchemy(uri: str) -> tuple[dict[str, pd.DataFrame], dict[str, TableSchema]]:
    import sqlalchemy

    url, connect_args = _sqlalchemy_url(uri)
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        with engine.connect() as con:
            inspector = sqlalchemy.inspect(con)
            names = sorted(inspector.get_table_names())
            schema = {}
            for name in names:
                pk = inspector.get_pk_constraint(name).get("constrained_columns") or []
                fks = {fk["constrained_columns"][0]: fk["referred_table"] for fk in inspector.get_foreign_keys(name)
                       if len(fk["constrained_columns"]) == 1}
                schema[name] = TableSchema(name, pk[0] if len(pk) == 1 else None, fks)
            tables = {name: pd.read_sql_table(name, con) for name in names}
        engine.dispose()
    except ModuleNotFoundError as err:
        raise UserError(f"--data {uri}: the driver {err.name} is missing; pip install 'psycopg[binary]'") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise UserError(f"--data {_shown_uri(uri)}: cannot read the database ({_first_line(err)}); check the URI "
                        f"and the server") from None
    return tables, schema


# --- task SQL on the source ------------------------------------------------------------------------


class _QueryFailed(Exception):
    """The database refused the task's SQL; the message is the database's first line."""


def _run_in_memory(con: duckdb.DuckDBPyConnection, query: str) -> pd.DataFrame:
    try:
        return con.execute(query).df()
    except duckdb.Error as err:
        raise _QueryFailed(_first_line(err)) from None


def _run_duckdb(uri: str, query: str) -> pd.DataFrame:
    try:
        con = duckdb.connect(str(_duckdb_path(uri)), read_only=True)
        try:
            con.execute("SET threads TO 1")
            return con.execute(query).df()
        finally:
            con.close()
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
    schema: dict[str, TableSchema], tables: dict[str, pd.DataFrame], path: Path
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
        if name not in tables:
            raise UserError(f"schema file {path}: table '{name}' is not in the database; known: {', '.join(tables)}")
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


def _infer_time_columns(schema: dict[str, TableSchema], tables: dict[str, pd.DataFrame]) -> None:
    """A table without a declared time column takes its first timestamp column (dates included)."""
    for name, table in schema.items():
        frame = tables[name]
        for column in frame.columns:
            first = frame[column].dropna().iloc[:1].tolist()
            if frame[column].dtype == object and first and isinstance(first[0], _DATES):
                frame[column] = pd.to_datetime(frame[column])  # SQLite and some drivers return Python dates
        if table.time_column is None:
            times = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
            table.time_column = times[0] if times else None
        # Timestamps compare as naive UTC everywhere (DuckDB, NumPy).
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
                frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)




def validate_schema(schema: dict[str, TableSchema], tables: dict[str, pd.DataFrame], *, source: str) -> None:
    """Keys must name existing columns and tables; a foreign key must reach a table with a primary key."""
    for name, table in schema.items():
        columns = set(tables[name].columns)
        if table.primary_key is not None and table.primary_key not in columns:
            raise UserError(f"{source}: table {name} has no primary-key column '{table.primary_key}'")
        if table.time_column is not None and table.time_column not in columns:
            raise UserError(f"{source}: table {name} has no time column '{table.time_column}'")
        for column, parent in table.foreign_keys.items():
            if column not in columns:
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
