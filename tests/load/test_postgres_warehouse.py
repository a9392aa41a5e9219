"""PostgreSQL as the warehouse: audit tables, dlt loads, dbt models and sinks on a real server."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from mocra_elt.audit.store import AuditStore, Watermark
from mocra_elt.cli.main import cli
from mocra_elt.config.model import Pipeline
from mocra_elt.errors import LoadError
from mocra_elt.load.dlt_load import remove_uncommitted_rows
from mocra_elt.load.postgres import qmark_to_format
from mocra_elt.load.warehouse import PostgresWarehouse
from tests.conftest import write_pipeline
from tests.conftest_services import PgDatabase


def test_qmark_becomes_format_outside_literals() -> None:
    sql = "select '?', \"a?\", $$?$$, x % 2 from t -- ?\nwhere a = ? and b like '%x' /* ? */"

    assert qmark_to_format(sql) == (
        "select '?', \"a?\", $$?$$, x %% 2 from t -- ?\nwhere a = %s and b like '%%x' /* ? */"
    )


def test_audit_store_round_trip(pg_env: PgDatabase) -> None:
    audit = AuditStore(PostgresWarehouse.from_env())
    audit.ensure_schema()
    audit.ensure_schema()

    audit.start_run("r1", "shop", "manual", "pg")
    audit.record_stage("r1", "load", status="running", details={"note": "50% done?"})
    audit.record_stage("r1", "load", status="succeeded", rows_out=7, duration_s=1.5)
    audit.end_run("r1", "succeeded")

    run = audit.get_run("r1")
    assert run is not None
    assert run["status"] == "succeeded"
    assert isinstance(run["ended_at"], datetime)
    [stage] = audit.stage_runs("r1")
    assert (stage["status"], stage["rows_out"], stage["duration_s"]) == ("succeeded", 7, 1.5)
    assert stage["details"] == '{"note": "50% done?"}'
    assert [row["run_id"] for row in audit.find_runs("r")] == ["r1"]


def test_commit_load_is_one_transaction(pg_env: PgDatabase) -> None:
    audit = AuditStore(PostgresWarehouse.from_env())
    audit.ensure_schema()
    mark = Watermark("updated_at", datetime(2013, 1, 1, 5), "timestamp", ["k1"])
    audit.commit_load(
        run_id="r1",
        pipeline="shop",
        dataset="raw_shop",
        table="orders",
        load_id="load-1",
        rows_loaded=3,
        watermarks=[mark],
    )

    # The load row inserts, then the watermark row repeats a primary key: both roll back.
    with pytest.raises(Exception, match="duplicate key"):
        audit.commit_load(
            run_id="r1",
            pipeline="shop",
            dataset="raw_shop",
            table="orders",
            load_id="load-2",
            rows_loaded=5,
            watermarks=[Watermark("updated_at", datetime(2014, 1, 1), "timestamp", [])],
        )

    assert audit.committed_load_ids("shop") == {"load-1"}
    assert audit.current_watermarks("shop")["updated_at"].value == datetime(2013, 1, 1, 5)


def test_wrong_password_names_server(pg_env: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCRA_PG_PASSWORD", "wrong")
    warehouse = PostgresWarehouse.from_env()

    with pytest.raises(LoadError) as caught:
        with warehouse.connect():
            pass

    assert "rejected the credentials" in str(caught.value)
    assert f"127.0.0.1:{pg_env.server.port}/{pg_env.name}" in str(caught.value)


SOURCE_TABLE = """
create table public.orders (
    id bigint primary key,
    customer text not null,
    amount numeric(10, 2) not null,
    updated_at timestamptz not null
);
insert into orders
select i, 'c' || (i % 3), i * 2.5, timestamptz '2013-01-01 00:00:00+00' + i * interval '1 hour'
from generate_series(1, 48) as i;
"""

PIPELINE = """\
source:
  type: db
  host: ${env:MOCRA_PG_HOST}
  port: ${env:MOCRA_PG_PORT}
  user: ${env:MOCRA_PG_USER}
  password: ${env:MOCRA_PG_PASSWORD}
  database: ${env:MOCRA_PG_DATABASE}
  table: orders
load:
  table: orders
  write_disposition: merge
  primary_key: id
  incremental:
    cursor: updated_at
transform:
  select: [customer_revenue]
sinks:
  - type: postgres
    model: customer_revenue
    table: reporting.customer_revenue
    key: customer
    host: ${env:MOCRA_PG_HOST}
    port: ${env:MOCRA_PG_PORT}
    user: ${env:MOCRA_PG_USER}
    password: ${env:MOCRA_PG_PASSWORD}
    database: ${env:MOCRA_PG_DATABASE}
  - type: object_storage
    model: raw_orders.orders
    url: exports/orders
    partition_by: {column: updated_at, name: dt}
"""

MODEL = """\
select customer, count(*) as orders, sum(amount) as revenue
from {{ source('raw_orders', 'orders') }}
group by customer
"""

SOURCES = """\
version: 2
sources:
  - name: raw_orders
    schema: raw_orders
    tables:
      - name: orders
"""


def write_project(project_dir: Path) -> None:
    write_pipeline(project_dir, "orders", PIPELINE)
    models = project_dir / "dbt_project" / "models"
    (models / "customer_revenue.sql").write_text(MODEL)
    (models / "sources.yml").write_text(textwrap.dedent(SOURCES))


def test_run_on_postgres_target(project_dir: Path, pg_env: PgDatabase) -> None:
    pg_env.execute(SOURCE_TABLE)
    write_project(project_dir)
    runner = CliRunner()

    first = runner.invoke(cli, ["--project-dir", str(project_dir), "--target", "pg", "run"])
    assert first.exit_code == 0, first.output
    pg_env.execute("update orders set amount = 0, updated_at = now() where id = 3")
    second = runner.invoke(cli, ["--project-dir", str(project_dir), "--target", "pg", "run"])
    assert second.exit_code == 0, second.output

    totals = pg_env.query("select count(*), sum(amount)::float from raw_orders.orders")
    assert totals == [(48, 2932.5)]
    runs = pg_env.query("select status, target from mocra_audit.runs order by run_id")
    assert runs == [("succeeded", "pg"), ("succeeded", "pg")]
    stages = pg_env.query(
        "select stage, s.status, rows_out from mocra_audit.stage_runs s join mocra_audit.runs r "
        "using (run_id) order by r.run_id desc, s.started_at limit 5"
    )
    assert [(stage, status) for stage, status, _ in stages] == [
        ("extract", "succeeded"),
        ("load", "succeeded"),
        ("transform", "succeeded"),
        ("publish", "succeeded"),
        ("quality", "skipped"),
    ]
    # One customer row upserted; 22 rows of 2013-01-01 and the moved row rewritten.
    assert [rows for stage, _, rows in stages if stage != "transform"] == [1, 1, 1 + 23, None]
    revenue = pg_env.query("select customer, revenue::float from reporting.customer_revenue")
    assert sorted(revenue) == [("c0", 1012.5), ("c1", 940.0), ("c2", 980.0)]
    assert len(list((project_dir / "exports" / "orders").glob("dt=*/part-00000.parquet"))) == 4


def test_empty_password_works_with_trust(
    pg_env: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dlt
    import pyarrow as pa

    monkeypatch.setenv("MOCRA_PG_USER", "mocra_trusted")
    monkeypatch.setenv("MOCRA_PG_PASSWORD", "")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    warehouse = PostgresWarehouse.from_env()

    pipeline = dlt.pipeline(
        pipeline_name="trust",
        pipelines_dir=str(tmp_path / "dlt"),
        destination=warehouse.dlt_destination(),
        dataset_name="raw_trust",
    )
    pipeline.run(pa.table({"id": [1, 2, 3]}), table_name="numbers")

    with warehouse.connect() as connection:
        assert connection.execute("select sum(id) from raw_trust.numbers").fetchone() == (6,)


def test_uncommitted_append_rows_are_removed(pg_env: PgDatabase) -> None:
    pg_env.execute(
        "create schema raw_events; create table raw_events.events (id int, _dlt_load_id text); "
        "insert into raw_events.events values (1, 'a'), (2, 'a'), (3, 'b'), (4, 'c')"
    )
    pipeline = Pipeline.model_validate(
        {"name": "events", "source": {"type": "files", "url": "x"}, "load": {"table": "events"}}
    )

    removed = remove_uncommitted_rows(PostgresWarehouse.from_env(), pipeline, {"a", "c"})

    assert removed == 1
    assert pg_env.query("select id from raw_events.events order by id") == [(1,), (2,), (4,)]
