"""The `db` source: a real PostgreSQL table pulled incrementally into the DuckDB warehouse."""

from __future__ import annotations

import json
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mocra_elt.audit.store import AuditStore
from mocra_elt.config.loader import load_pipeline_file, load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines
from tests.conftest import write_pipeline
from tests.conftest_services import PgDatabase

CONNECTION = """\
source:
  type: db
  host: ${env:MOCRA_PG_HOST}
  port: ${env:MOCRA_PG_PORT}
  user: ${env:MOCRA_PG_USER}
  password: ${env:MOCRA_PG_PASSWORD}
  database: ${env:MOCRA_PG_DATABASE}
"""

ORDERS_TABLE = """
create table public.orders (
    id bigint primary key,
    customer text,
    amount numeric(12, 2),
    status text not null,
    ref uuid default gen_random_uuid(),
    attributes jsonb,
    updated_at timestamptz not null
);
insert into orders (id, customer, amount, status, attributes, updated_at)
select i, 'c' || (i % 7), i * 1.25, case when i % 10 = 0 then 'test' else 'open' end,
       jsonb_build_object('n', i), timestamptz '2013-01-01 00:00:00+00' + i * interval '1 minute'
from generate_series(1, 100) as i;
"""


def write_orders_pipeline(project: Path, body: str) -> None:
    write_pipeline(project, "orders", CONNECTION + textwrap.dedent(body))


def run(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    pipelines = load_pipelines(project.sources_dir)
    [result] = run_pipelines(project, pipelines, open_warehouse(project))
    assert result.succeeded, result.error
    return result


def stage_row(project_dir: Path, result: RunResult, stage: str) -> dict[str, Any]:
    project = Project.discover(project_dir)
    rows = AuditStore(open_warehouse(project)).stage_runs(result.run_id)
    return next(row for row in rows if row["stage"] == stage)


def warehouse_rows(project_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def orders_db(pg_env: PgDatabase) -> PgDatabase:
    pg_env.execute(ORDERS_TABLE)
    return pg_env


MERGE_ON_UPDATED_AT = """\
  table: public.orders
load:
  table: orders
  write_disposition: merge
  primary_key: id
  incremental:
    cursor: updated_at
"""


def test_first_run_loads_every_row_with_types(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(project_dir, MERGE_ON_UPDATED_AT)
    run(project_dir)

    rows = warehouse_rows(
        project_dir,
        "select count(*), sum(amount), min(typeof(amount)), min(typeof(updated_at)), "
        "min(typeof(ref)), min(attributes) filter (where id = 1) from raw_orders.orders",
    )
    count, total, amount_type, updated_type, ref_type, attributes = rows[0]
    assert count == 100
    assert total == Decimal("6312.50")
    assert amount_type == "DECIMAL(12,2)"
    assert updated_type == "TIMESTAMP WITH TIME ZONE"
    assert ref_type == "VARCHAR"
    assert attributes == '{"n": 1}'


def test_next_run_reads_only_changed_rows(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(project_dir, MERGE_ON_UPDATED_AT)
    run(project_dir)
    orders_db.execute(
        "update orders set status = 'shipped', updated_at = timestamptz '2013-02-01 00:00:00+00' "
        "where id between 1 and 10"
    )
    orders_db.execute(
        "insert into orders (id, status, updated_at) "
        "select i, 'new', timestamptz '2013-02-01 00:00:00+00' from generate_series(101, 110) i"
    )

    second = run(project_dir)

    # The 20 changed rows, and row 100, which sits on the watermark and is filtered out.
    extract = stage_row(project_dir, second, "extract")
    assert extract["rows_in"] == 21
    assert extract["rows_out"] == 20
    assert ">= '2013-01-01T01:40:00'::timestamp with time zone" in extract["details"]
    statuses = warehouse_rows(
        project_dir, "select status, count(*) from raw_orders.orders group by 1 order by 1"
    )
    assert statuses == [("new", 10), ("open", 81), ("shipped", 10), ("test", 9)]


def test_rows_on_watermark_load_once(project_dir: Path, orders_db: PgDatabase) -> None:
    # Append shows duplicates: rows sharing the watermark value must not load twice.
    orders_db.execute(
        "update orders set updated_at = timestamptz '2013-03-01 00:00:00+00' where id > 97"
    )
    write_orders_pipeline(
        project_dir,
        """\
          table: orders
        load:
          table: orders
          primary_key: id
          incremental:
            cursor: updated_at
        """,
    )
    run(project_dir)
    orders_db.execute(
        "insert into orders (id, status, updated_at) "
        "values (200, 'late', timestamptz '2013-03-01 00:00:00+00')"
    )

    second = run(project_dir)

    assert stage_row(project_dir, second, "extract")["rows_in"] == 4
    assert stage_row(project_dir, second, "load")["rows_out"] == 1
    ids = warehouse_rows(
        project_dir,
        "select id, count(*) from raw_orders.orders where id > 97 group by 1 order by 1",
    )
    assert ids == [(98, 1), (99, 1), (100, 1), (200, 1)]


def test_lookback_reloads_late_rows(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(
        project_dir,
        """\
          table: orders
        load:
          table: orders
          write_disposition: merge
          primary_key: id
          incremental:
            cursor: updated_at
            lookback: 30m
        """,
    )
    run(project_dir)
    # The watermark is 01:40; a row committed late at 01:20 is inside the lookback,
    # one at 00:50 is outside it.
    orders_db.execute(
        "insert into orders (id, status, updated_at) values "
        "(300, 'late', timestamptz '2013-01-01 01:20:00+00'), "
        "(301, 'too late', timestamptz '2013-01-01 00:50:00+00')"
    )

    second = run(project_dir)

    # Rows 70-100 (from 01:10 on) and the late row 300.
    assert stage_row(project_dir, second, "extract")["rows_in"] == 32
    late = warehouse_rows(project_dir, "select id from raw_orders.orders where id >= 300")
    assert late == [(300,)]
    assert warehouse_rows(project_dir, "select count(*) from raw_orders.orders") == [(101,)]


def test_integer_cursor_with_columns_and_where(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(
        project_dir,
        """\
          table: orders
          columns: [id, status, amount]
          where: "status <> 'test' and amount > 10"
        load:
          table: orders
          primary_key: id
          incremental:
            cursor: id
        """,
    )
    run(project_dir)
    orders_db.execute(
        "insert into orders (id, amount, status, updated_at) values "
        "(101, 5, 'open', now()), (102, 50, 'open', now()), (103, 50, 'test', now())"
    )

    second = run(project_dir)

    columns = warehouse_rows(
        project_dir,
        "select column_name from information_schema.columns where table_schema = 'raw_orders' "
        "and table_name = 'orders' and column_name not like '\\_%' escape '\\' order by 1",
    )
    assert columns == [("amount",), ("id",), ("status",)]
    # Row 99 (on the watermark) and row 102.
    assert stage_row(project_dir, second, "extract")["rows_in"] == 2
    count = warehouse_rows(project_dir, "select count(*), max(id) from raw_orders.orders")
    assert count == [(83, 102)]


def test_connection_url_reference(
    project_dir: Path, orders_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_DB_URL", orders_db.url())
    write_pipeline(
        project_dir,
        "orders",
        """\
        source:
          type: db
          url: ${env:ORDERS_DB_URL}
          table: orders
        load:
          table: orders
        """,
    )
    run(project_dir)

    assert warehouse_rows(project_dir, "select count(*) from raw_orders.orders") == [(100,)]


def failed_run(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    [result] = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    assert not result.succeeded
    return result


def test_missing_table_is_named(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(project_dir, "  table: shop.orders\nload:\n  table: orders\n")

    result = failed_run(project_dir)

    assert result.error_code == "CONFIG_NOT_FOUND"
    assert "'shop.orders' not found" in str(result.error)


def test_cursor_outside_columns_is_named(project_dir: Path, orders_db: PgDatabase) -> None:
    write_orders_pipeline(
        project_dir,
        """\
          table: orders
          columns: [id, status]
        load:
          table: orders
          incremental: {cursor: updated_at}
        """,
    )
    result = failed_run(project_dir)

    assert result.error_code == "CONFIG_NOT_FOUND"
    assert "'updated_at'" in str(result.error)


def test_wrong_password_is_auth_error(
    project_dir: Path, orders_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCRA_PG_PASSWORD", "wrong")
    write_orders_pipeline(project_dir, "  table: orders\nload:\n  table: orders\n")

    result = failed_run(project_dir)

    assert result.error_code == "SOURCE_AUTH"
    assert "rejected the credentials" in str(result.error)
    assert "wrong" not in str(result.error)


def test_closed_port_is_transient(
    project_dir: Path, orders_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("MOCRA_PG_PORT", str(closed_port))
    write_orders_pipeline(project_dir, "  table: orders\nload:\n  table: orders\n")

    result = failed_run(project_dir)

    assert result.error_code == "SOURCE_UNAVAILABLE"
    assert f"127.0.0.1:{closed_port}" in str(result.error)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("status = 'open'; drop table orders", "without ';'"),
        ("status = 'open' -- and more", "comments"),
        ("true union select 1", "single boolean expression"),
        ("true group by status", "single boolean expression"),
        ("status = 'open')", "not a valid SQL expression"),
    ],
)
def test_where_must_be_one_expression(project_dir: Path, where: str, reason: str) -> None:
    body = CONNECTION + f"  table: orders\n  where: {json.dumps(where)}\nload:\n  table: orders\n"
    path = write_pipeline(project_dir, "orders", body)

    with pytest.raises(ConfigError) as caught:
        load_pipeline_file(path)

    assert "source.where" in str(caught.value)
    assert reason in str(caught.value)


def test_clear_text_password_is_rejected(project_dir: Path) -> None:
    path = write_pipeline(
        project_dir,
        "orders",
        """\
        source:
          type: db
          host: 127.0.0.1
          user: postgres
          password: hunter2
          database: shop
          table: orders
        load:
          table: orders
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline_file(path)

    assert "source.password" in str(caught.value)
    assert "hunter2" not in str(caught.value)
