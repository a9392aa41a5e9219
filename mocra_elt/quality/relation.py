"""Find the table or view a suite checks, and read its rows as pandas frames."""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.load.warehouse import quote
from mocra_elt.quality.suites import Suite

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Name of the pandas index that carries DuckDB's rowid, so failing rows can be found again.
ROWID = "__mocra_rowid"
# frame.attrs key: numpy float columns whose NaN values stand for NULL in the warehouse.
NAN_IS_NULL = "mocra_nan_is_null"
DBT_DEFAULT_SCHEMA = "analytics"
SAMPLE_ROWS = 2048


@dataclass(frozen=True)
class Relation:
    """A table or view in the warehouse, with its columns and their DuckDB types."""

    schema: str
    name: str
    is_table: bool
    columns: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    def column_type(self, column: str) -> str:
        return self.columns[column].upper()


def resolve_relation(connection: Any, project: Project | None, suite: Suite) -> Relation:
    """Find the relation of a suite; raises ConfigError naming what is missing."""
    if suite.table is not None:
        schema, name = suite.table.split(".", 1)
        relation = describe_relation(connection, schema, name)
        if relation is None:
            raise ConfigError(
                f"suite {suite.name!r}: table {suite.table} does not exist in the warehouse. "
                "Check the name, or run the pipeline that loads it first.",
                field="table",
                error_code="CONFIG_NOT_FOUND",
            )
        return relation

    model = str(suite.model)
    for schema in _candidate_schemas(connection, project, suite):
        relation = describe_relation(connection, schema, _manifest_alias(project, model) or model)
        if relation is not None:
            return relation
    raise ConfigError(
        f"suite {suite.name!r}: dbt model {model!r} was not found in the warehouse. Check that "
        "the pipeline's transform.select builds it and that the transform succeeded, or set "
        "'schema:' in the suite when the model lives outside the analytics schema.",
        field="model",
        error_code="CONFIG_NOT_FOUND",
    )


def _candidate_schemas(connection: Any, project: Project | None, suite: Suite) -> list[str]:
    """Return the schemas to look for a model in, most likely first."""
    if suite.schema_name is not None:
        return [suite.schema_name]
    model = str(suite.model)
    candidates: list[str] = []
    manifest_schema = _manifest_node(project, model).get("schema")
    if manifest_schema:
        candidates.append(manifest_schema)
    candidates.append(DBT_DEFAULT_SCHEMA)
    rows = connection.execute(
        "select distinct table_schema from information_schema.tables where table_name = ? "
        "order by table_schema",
        [model],
    ).fetchall()
    found = [row[0] for row in rows]
    if len(found) > 1 and not manifest_schema and DBT_DEFAULT_SCHEMA not in found:
        raise ConfigError(
            f"suite {suite.name!r}: model {model!r} exists in several schemas "
            f"({', '.join(found)}); set 'schema:' in the suite to choose one.",
            field="schema",
        )
    return list(dict.fromkeys([*candidates, *found]))


def _manifest_node(project: Project | None, model: str) -> dict[str, Any]:
    """Return the dbt manifest entry of a model, or {} when there is no manifest."""
    if project is None:
        return {}
    path = Path(project.data_dir) / "dbt_target" / "manifest.json"
    if not path.is_file():
        return {}
    try:
        nodes = json.loads(path.read_text(encoding="utf-8")).get("nodes", {})
    except (OSError, ValueError) as error:
        log.warning("cannot read the dbt manifest %s: %s", path, error)
        return {}
    for node in nodes.values():
        if node.get("resource_type") == "model" and node.get("name") == model:
            return dict(node)
    return {}


def _manifest_alias(project: Project | None, model: str) -> str | None:
    alias = _manifest_node(project, model).get("alias")
    return str(alias) if alias else None


def describe_relation(connection: Any, schema: str, name: str) -> Relation | None:
    row = connection.execute(
        "select table_type from information_schema.tables where table_schema = ? and "
        "table_name = ?",
        [schema, name],
    ).fetchone()
    if row is None:
        return None
    columns = connection.execute(
        "select column_name, data_type from information_schema.columns where table_schema = ? "
        "and table_name = ? order by ordinal_position",
        [schema, name],
    ).fetchall()
    return Relation(schema, name, row[0] == "BASE TABLE", {c: t for c, t in columns})


def check_columns(relation: Relation, suite: Suite, rule_name: str, columns: list[str]) -> None:
    """Raise ConfigError when a rule names a column the relation does not have."""
    for column in columns:
        if column in relation.columns:
            continue
        close = difflib.get_close_matches(column, list(relation.columns), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"suite {suite.name!r}, rule {rule_name!r}: column {column!r} does not exist in "
            f"{relation.label}.{hint} Its columns are: {', '.join(relation.columns)}.",
            field="rules",
        )


def count_rows(connection: Any, relation: Relation) -> int:
    row = connection.execute(f"select count(*) from {relation.sql}").fetchone()
    return int(row[0]) if row else 0


def bytes_per_row(connection: Any, relation: Relation, columns: list[str]) -> float:
    """Estimate the Arrow size of one row of the given columns from the first rows."""
    if not columns:
        return 8.0  # the rowid alone
    table = connection.execute(
        f"select {_select_list(relation, columns)} from {relation.sql} limit {SAMPLE_ROWS}"
    ).fetch_arrow_table()
    if table.num_rows == 0:
        return 0.0
    return float(table.nbytes) / table.num_rows


def read_frames(
    connection: Any,
    relation: Relation,
    columns: list[str],
    batch_rows: int | None,
    where: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the rows as pandas frames of at most `batch_rows` rows (all rows when None).

    Frames use Arrow-backed dtypes, so NULL (pd.NA) and NaN stay distinct. The
    index is DuckDB's rowid for tables and the row position for views. Numeric
    columns may be numpy arrays instead, see `_plain_numeric_columns`.
    """
    import pyarrow as pa

    rowid = "rowid" if relation.is_table else "0"
    query = f"select {rowid} as {quote(ROWID)}"
    if columns:
        query += ", " + _select_list(relation, columns)
    query += f" from {relation.sql}"
    if where:
        query += f" where {where}"
    reader = connection.execute(query).to_arrow_reader(batch_rows or 1_000_000)
    if batch_rows is None:
        yield _to_frame(reader.read_all(), relation, 0)
        return

    offset = 0
    yielded = False
    for batch in reader:
        yield _to_frame(pa.Table.from_batches([batch]), relation, offset)
        offset += batch.num_rows
        yielded = True
    if not yielded:
        yield _to_frame(reader.schema.empty_table(), relation, 0)


def _to_frame(table: Any, relation: Relation, offset: int) -> pd.DataFrame:
    import pandas as pd

    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    nan_is_null = []
    for name in _plain_numeric_columns(table):
        column = table.column(name)
        frame[name] = column.to_numpy()
        if column.null_count:
            nan_is_null.append(name)
    rowids = frame.pop(ROWID)
    # An unnamed index makes Great Expectations list failing rows as bare index labels.
    if relation.is_table:
        frame.index = pd.Index(rowids.to_numpy(dtype="int64"))
    else:
        frame.index = pd.RangeIndex(offset, offset + len(frame))
    frame.attrs[NAN_IS_NULL] = nan_is_null
    return frame


def _plain_numeric_columns(table: Any) -> list[str]:
    """Return the columns that can be numpy arrays in this batch without changing a verdict.

    Great Expectations compares numpy columns vectorized but Arrow-backed ones
    value by value. pandas reads NaN in a numpy float column as missing, so a
    float column qualifies only without NaN (NULL becomes NaN and stays missing),
    and an integer column only without NULL.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = []
    for field in table.schema:
        column = table.column(field.name)
        if field.name == ROWID:
            continue
        if pa.types.is_integer(field.type) and column.null_count == 0:
            names.append(field.name)
        elif pa.types.is_floating(field.type) and not pc.any(pc.is_nan(column)).as_py():
            names.append(field.name)
    return names


def _select_list(relation: Relation, columns: list[str]) -> str:
    """Quote the columns; DECIMAL and HUGEINT are read as DOUBLE so pandas can compare them."""
    parts = []
    for column in columns:
        kind = relation.column_type(column)
        if kind.startswith("DECIMAL") or kind in ("HUGEINT", "UHUGEINT"):
            parts.append(f"cast({quote(column)} as double) as {quote(column)}")
        else:
            parts.append(quote(column))
    return ", ".join(parts)


def hash_partition(columns: list[str], partitions: int, index: int) -> str:
    """Return a filter for one hash partition of the rows that have a key.

    Rows whose key columns are all NULL are left out, because uniqueness checks
    ignore them. NOTE: an `expectation:` uniqueness rule with ignore_row_if
    'never' would count such rows, but only when the table fits in one batch.
    """
    key = ", ".join(quote(column) for column in columns)
    present = " or ".join(f"{quote(column)} is not null" for column in columns)
    return f"({present}) and hash({key}) % {partitions} = {index}"


def partitions_needed(rows: int, row_bytes: float, budget_bytes: int) -> int:
    return max(1, math.ceil(rows * row_bytes / max(budget_bytes, 1)))
