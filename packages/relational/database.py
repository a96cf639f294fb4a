"""Reading a relational database (DuckDB, SQLite, PostgreSQL) and discovering its schema.

The user's database is opened read-only (DuckDB `read_only=True`, SQLite `mode=ro`, PostgreSQL
`default_transaction_read_only`) and copied table by table into an in-memory DuckDB, where task SQL,
context sampling and the baseline's aggregates run the same way whatever the source.

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


@dataclass
class Database:
    """All tables of one database as DataFrames, their schema, and an in-memory DuckDB over them."""

    name: str
    tables: dict[str, pd.DataFrame]
    schema: dict[str, TableSchema]
    connection: duckdb.DuckDBPyConnection = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.connection is None:
            self.connection = duckdb.connect(":memory:")
            self.connection.execute("SET threads TO 1")
            for name, frame in self.tables.items():
                self.connection.register(name, frame)

    def sql(self, query: str, *, what: str) -> pd.DataFrame:
        """Run read-only SQL over the tables; a failing query is a UserError naming `what`."""
        try:
            return self.connection.execute(query).df()
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            raise UserError(f"{what}: the SQL failed ({first}); fix the query") from None

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
    return Database(_display_name(uri), tables, schema)


def _display_name(uri: str) -> str:
    return Path(uri.split("://", 1)[1].split("?")[0]).stem or uri


def _read_duckdb(uri: str) -> tuple[dict[str, pd.DataFrame], dict[str, TableSchema]]:
    rest = uri.split("://", 1)[1]
    path = Path(rest[1:] if rest.startswith("/") else rest)  # duckdb:///relative, duckdb:////absolute
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


def _read_sqlalchemy(uri: str) -> tuple[dict[str, pd.DataFrame], dict[str, TableSchema]]:
    import sqlalchemy

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
        first = str(getattr(err, "orig", err) or err).strip().splitlines()[0]
        raise UserError(f"--data {uri}: cannot read the database ({first}); check the URI and the server") from None
    return tables, schema


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
