"""The postgres sink: upserts from a real DuckDB warehouse into a real PostgreSQL database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.model import Sink
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, SinkError
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.publish.config import parse_sink
from mocra_elt.publish.postgres import INCOMPATIBLE, widened_type
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import run_pipelines
from tests.conftest import REPO_ROOT, write_pipeline
from tests.conftest_services import ModelWarehouse, PgDatabase, S3Server

CONNECTION = {
    "host": "${env:MOCRA_PG_HOST}",
    "port": "${env:MOCRA_PG_PORT}",
    "user": "${env:MOCRA_PG_USER}",
    "password": "${env:MOCRA_PG_PASSWORD}",
    "database": "${env:MOCRA_PG_DATABASE}",
}
ORDERS = """
create or replace table analytics.orders as
select i as id, 'c' || (i % 7) as customer, cast(i * 1.25 as decimal(10, 2)) as amount,
       cast(i as integer) as quantity,
       timestamptz '2013-01-01 00:00:00+00' + to_minutes(i) as ordered_at
from range(1, 101) as t(i)
"""


def sink(**options: Any) -> dict[str, Any]:
    return {"type": "postgres", "model": "orders", "table": "shop.orders", "key": "id"} | (
        CONNECTION | options
    )


@pytest.fixture
def warehouse(model_warehouse: ModelWarehouse, pg_env: PgDatabase) -> ModelWarehouse:
    model_warehouse.sql(ORDERS)
    return model_warehouse


def target(db: PgDatabase, sql: str = "select * from shop.orders order by id") -> list[Any]:
    return db.query(sql)


def run_counts(db: PgDatabase) -> dict[str, int]:
    rows = db.query("select _mocra_run_id, count(*) from shop.orders group by 1")
    return dict(rows)


def test_first_publish_creates_table(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    result = warehouse.publish(sink(), "run1")

    assert result.rows_read == 100
    assert result.rows_written == 100
    assert result.details == {"inserted": 100, "updated": 0}
    columns = pg_env.query(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'shop' and table_name = 'orders' order by ordinal_position"
    )
    assert columns == [
        ("id", "bigint"),
        ("customer", "text"),
        ("amount", "numeric"),
        ("quantity", "integer"),
        ("ordered_at", "timestamp with time zone"),
        ("_mocra_run_id", "text"),
    ]
    assert target(pg_env, "select sum(amount), count(*) from shop.orders") == [
        (Decimal("6312.50"), 100)
    ]
    primary_key = pg_env.query(
        "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
        "and a.attnum = any(i.indkey) where i.indrelid = 'shop.orders'::regclass and i.indisprimary"
    )
    assert primary_key == [("id",)]


def test_changes_touch_only_changed_rows(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(), "run1")
    warehouse.sql("update analytics.orders set amount = amount + 1 where id <= 10")
    warehouse.sql(
        "insert into analytics.orders select i, 'new', 1.00, 1, "
        "timestamptz '2013-02-01 00:00:00+00' from range(101, 111) t(i)"
    )

    result = warehouse.publish(sink(), "run2")

    assert result.details == {"inserted": 10, "updated": 10}
    assert run_counts(pg_env) == {"run1": 90, "run2": 20}
    changed = pg_env.query("select id from shop.orders where _mocra_run_id = 'run2' order by id")
    assert [row[0] for row in changed] == [*range(1, 11), *range(101, 111)]
    again = warehouse.publish(sink(), "run3")
    assert again.rows_written == 0
    assert run_counts(pg_env) == {"run1": 90, "run2": 20}


def test_null_key_fails_without_changes(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(), "run1")
    before = target(pg_env)
    warehouse.sql("alter table analytics.orders add column note varchar")
    warehouse.sql("update analytics.orders set id = null, note = 'x' where id in (3, 4)")

    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(), "run2")

    assert caught.value.error_code == "SINK_CONSTRAINT_VIOLATION"
    assert "2 model rows have NULL in key column 'id'" in str(caught.value)
    assert caught.value.context["column"] == "id"
    assert target(pg_env) == before
    assert "note" not in [
        row[0]
        for row in pg_env.query(
            "select column_name from information_schema.columns where table_name = 'orders'"
        )
    ]


def test_duplicate_keys_fail_without_changes(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(), "run1")
    before = target(pg_env)
    warehouse.sql("update analytics.orders set amount = 0")
    warehouse.sql("insert into analytics.orders select * from analytics.orders where id in (5, 7)")
    warehouse.sql("insert into analytics.orders select * from analytics.orders where id = 5")
    # Two copies of id 5 copied once more: four rows of id 5, two of id 7.

    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(batch_rows=30), "run2")

    message = str(caught.value)
    assert caught.value.error_code == "SINK_CONSTRAINT_VIOLATION"
    assert "2 keys occur more than once" in message
    assert "id=5 (4 rows); id=7 (2 rows)" in message
    assert target(pg_env) == before


def test_added_column_is_added_and_filled(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(), "run1")
    warehouse.sql("alter table analytics.orders add column channel varchar")
    warehouse.sql("update analytics.orders set channel = 'web' where id <= 30")

    result = warehouse.publish(sink(), "run2")

    assert result.details == {"inserted": 0, "updated": 30}
    channels = pg_env.query("select channel, count(*) from shop.orders group by 1 order by 1")
    assert channels == [("web", 30), (None, 70)]
    assert run_counts(pg_env) == {"run1": 70, "run2": 30}


def test_widened_types_alter_the_target(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(), "run1")
    warehouse.sql(
        "create or replace table analytics.orders as select id, customer, "
        "cast(amount + 0.0001 as decimal(14, 4)) as amount, cast(quantity as bigint) * 3000000000 "
        "as quantity, ordered_at from analytics.orders"
    )

    result = warehouse.publish(sink(), "run2")

    assert result.details == {"inserted": 0, "updated": 100}
    types = pg_env.query(
        "select column_name, format_type(atttypid, atttypmod) from information_schema.columns c "
        "join pg_attribute a on a.attrelid = 'shop.orders'::regclass and a.attname = c.column_name "
        "where c.table_schema = 'shop' and c.table_name = 'orders' "
        "and column_name in ('amount', 'quantity') order by 1"
    )
    assert types == [("amount", "numeric(14,4)"), ("quantity", "bigint")]
    assert target(pg_env, "select amount, quantity from shop.orders where id = 100") == [
        (Decimal("125.0001"), 300_000_000_000)
    ]


def test_incompatible_type_fails_without_changes(
    warehouse: ModelWarehouse, pg_env: PgDatabase
) -> None:
    warehouse.publish(sink(), "run1")
    before = target(pg_env)
    warehouse.sql(
        "create or replace table analytics.orders as select id, customer, amount, "
        "cast(quantity as varchar) as quantity, ordered_at, 'x' as added from analytics.orders"
    )

    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(), "run2")

    assert "column 'quantity' is integer in the target but text in the model" in str(caught.value)
    assert caught.value.context["column"] == "quantity"
    assert target(pg_env) == before


def test_soft_deletes_flag_missing_keys(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(deletes="soft"), "run1")
    warehouse.sql("delete from analytics.orders where id in (1, 2)")

    result = warehouse.publish(sink(deletes="soft"), "run2")

    assert result.details == {"inserted": 0, "updated": 0, "soft_deleted": 2}
    flagged = pg_env.query("select id, _mocra_run_id from shop.orders where _mocra_deleted")
    assert sorted(flagged) == [(1, "run2"), (2, "run2")]
    warehouse.sql("insert into analytics.orders values (1, 'back', 1, 1, now())")
    back = warehouse.publish(sink(deletes="soft"), "run3")
    assert back.details == {"inserted": 0, "updated": 1, "soft_deleted": 0}
    assert pg_env.query("select id from shop.orders where _mocra_deleted") == [(2,)]
    assert target(pg_env, "select count(*) from shop.orders") == [(100,)]


def test_hard_deletes_remove_missing_keys(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    warehouse.publish(sink(deletes="hard"), "run1")
    warehouse.sql("delete from analytics.orders where id > 95")

    result = warehouse.publish(sink(deletes="hard"), "run2")

    assert result.details == {"inserted": 0, "updated": 0, "hard_deleted": 5}
    assert target(pg_env, "select count(*), max(id) from shop.orders") == [(95, 95)]


def test_composite_key_and_column_list(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    options = sink(key=["customer", "id"], columns=["id", "customer", "amount"])

    warehouse.publish(options, "run1")
    warehouse.sql("update analytics.orders set amount = 0 where customer = 'c1'")
    result = warehouse.publish(options, "run2")

    assert result.details == {"inserted": 0, "updated": 15}
    columns = pg_env.query(
        "select column_name from information_schema.columns where table_name = 'orders' "
        "order by ordinal_position"
    )
    assert [row[0] for row in columns] == ["id", "customer", "amount", "_mocra_run_id"]


def test_target_without_unique_key_is_rejected(
    warehouse: ModelWarehouse, pg_env: PgDatabase
) -> None:
    pg_env.execute("create schema shop; create table shop.orders (id bigint, amount numeric)")

    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(), "run1")

    assert "no primary key or unique index on (id)" in str(caught.value)
    assert 'alter table "shop"."orders" add primary key ("id")' in str(caught.value)


def test_missing_model_is_named(warehouse: ModelWarehouse, pg_env: PgDatabase) -> None:
    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(model="mart_missing"), "run1")

    assert "'mart_missing' (analytics.mart_missing) is not in the warehouse" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field", "text"),
    [
        ({"key": []}, "sinks[0].key", "at least 1 item"),
        ({"deletes": "purge"}, "sinks[0].deletes", "'none', 'soft' or 'hard'"),
        ({"password": "secret"}, "sinks[0].password", "clear text"),
        ({"batch_rows": 0}, "sinks[0].batch_rows", "greater than or equal to 1"),
        ({"keys": ["id"]}, "sinks[0].keys", "unknown field"),
    ],
)
def test_invalid_options_name_the_field(options: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sink(Sink.model_validate(sink(**options)), "shop", 0)

    assert field in str(caught.value)
    assert text in str(caught.value)


# --- whole runs: db source, DuckDB warehouse, both sinks ------------------------------------

SOURCE = """
create table public.orders (
    id bigint primary key,
    customer text not null,
    amount numeric(10, 2) not null,
    ordered_at timestamptz not null,
    updated_at timestamptz not null
);
insert into orders
select i, 'c' || (i % 7), i * 0.5, ts, ts
from generate_series(1, 1000) as i,
     lateral (select timestamptz '2013-01-01 00:00:00+00' + (i - 1) * interval '14.4 min') t(ts);
"""
TWENTY_CHANGES = """
update orders set amount = amount + 1, updated_at = timestamptz '2013-02-01 00:00:00+00'
where id <= 10;
insert into orders
select i, 'new', 1, timestamptz '2013-01-11 12:00:00+00', timestamptz '2013-02-01 00:00:00+00'
from generate_series(1001, 1010) as i;
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
  incremental: {cursor: updated_at}
sinks:
  - type: postgres
    model: raw_orders.orders
    table: reporting.orders
    key: id
    batch_rows: 100
    host: ${env:MOCRA_PG_HOST}
    port: ${env:MOCRA_PG_PORT}
    user: ${env:MOCRA_PG_USER}
    password: ${env:MOCRA_PG_PASSWORD}
    database: ${env:MOCRA_PG_DATABASE}
"""
S3_SINK = """\
  - type: object_storage
    model: raw_orders.orders
    url: s3://{bucket}/orders
    partition_by: {{column: ordered_at, name: dt}}
    order_by: [id]
    storage_options: {{endpoint_url: "${{env:MOCRA_S3_ENDPOINT_URL}}"}}
"""
PUBLISHED = "select id, customer, amount, ordered_at, updated_at from {table} order by id"


def run_pipeline(project_dir: Path) -> str:
    project = Project.discover(project_dir)
    configure_environment(project)
    [result] = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    assert result.succeeded, result.error
    return result.run_id


def s3_objects(s3_server: S3Server, root: str) -> dict[str, tuple[str, bytes]]:
    fs = s3_server.filesystem()
    return {
        path.removeprefix(root + "/"): (info["ETag"], fs.cat_file(path))
        for path, info in fs.find(root, detail=True).items()
    }


def s3_rows(s3_server: S3Server, root: str) -> list[dict[str, Any]]:
    dataset = ds.dataset(root, filesystem=s3_server.filesystem(), partitioning="hive")
    return sorted(dataset.to_table().to_pylist(), key=lambda row: row["id"])


def test_twenty_source_changes_reach_both_sinks(
    project_dir: Path, pg_env: PgDatabase, s3_server: S3Server, s3_bucket: str
) -> None:
    pg_env.execute(SOURCE)
    write_pipeline(project_dir, "orders", PIPELINE + S3_SINK.format(bucket=s3_bucket))
    root = f"{s3_bucket}/orders"
    first = run_pipeline(project_dir)
    objects_before = s3_objects(s3_server, root)
    rows_before = s3_rows(s3_server, root)
    pg_env.execute(TWENTY_CHANGES)

    second = run_pipeline(project_dir)

    changed_ids = [*range(1, 11), *range(1001, 1011)]
    in_postgres = pg_env.query("select id, _mocra_run_id from reporting.orders order by id")
    assert [id_ for id_, run_id in in_postgres if run_id == second] == changed_ids
    assert sum(1 for _, run_id in in_postgres if run_id == first) == 990
    assert pg_env.query(PUBLISHED.format(table="reporting.orders")) == pg_env.query(
        PUBLISHED.format(table="public.orders")
    )

    objects_after = s3_objects(s3_server, root)
    rewritten = sorted(
        key for key in objects_after if objects_after[key] != objects_before.get(key)
    )
    assert rewritten == [
        "_mocra_manifest.json",
        "dt=2013-01-01/part-00000.parquet",
        "dt=2013-01-11/part-00000.parquet",
    ]
    rows_after = s3_rows(s3_server, root)
    old = {json.dumps(row, default=str, sort_keys=True) for row in rows_before}
    new = {json.dumps(row, default=str, sort_keys=True) for row in rows_after}
    assert sorted(json.loads(row)["id"] for row in new - old) == changed_ids
    assert sorted(json.loads(row)["id"] for row in old - new) == list(range(1, 11))
    assert [row["id"] for row in rows_after if row["_mocra_run_id"] == second] == changed_ids
    assert len(rows_after) == 1010


def test_killed_upsert_then_rerun(project_dir: Path, pg_env: PgDatabase) -> None:
    """SIGKILL the CLI while its upsert runs; the rerun leaves the target as a clean run would."""
    pg_env.execute(SOURCE)
    write_pipeline(project_dir, "orders", PIPELINE)
    first = run_pipeline(project_dir)
    before = pg_env.query("select * from reporting.orders order by id")
    pg_env.execute(TWENTY_CHANGES)

    # A row lock held here stops the upsert in the middle of its insert ... on conflict.
    blocker = pg_env.server.connect(pg_env.name)
    blocker.autocommit = False
    blocker.cursor().execute("select 1 from reporting.orders where id = 500 for update")
    process = subprocess.Popen(
        [sys.executable, "-m", "mocra_elt", "--project-dir", str(project_dir), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )
    try:
        wait_for(lambda: sink_backends(pg_env, "Lock") == 1, process)
    finally:
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        blocker.rollback()
        blocker.close()
    wait_for(lambda: sink_backends(pg_env) == 0)

    assert pg_env.query("select * from reporting.orders order by id") == before
    rerun = run_pipeline(project_dir)
    runs = dict(pg_env.query("select _mocra_run_id, count(*) from reporting.orders group by 1"))
    assert runs == {first: 990, rerun: 20}
    assert pg_env.query(PUBLISHED.format(table="reporting.orders")) == pg_env.query(
        PUBLISHED.format(table="public.orders")
    )


def sink_backends(db: PgDatabase, wait_event_type: str | None = None) -> int:
    """Count the server processes serving mocra-elt in `db`, optionally only those waiting."""
    condition = "and wait_event_type = %s" if wait_event_type else ""
    rows = db.query(
        "select count(*) from pg_stat_activity where datname = %s "
        f"and application_name = 'mocra-elt' {condition}",
        [db.name, wait_event_type] if wait_event_type else [db.name],
    )
    return int(rows[0][0])


def wait_for(condition: Any, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"mocra-elt exited with {process.returncode} before the kill")
        if time.monotonic() > deadline:
            raise AssertionError("timed out after 60 s")
        time.sleep(0.05)


def test_empty_model_never_deletes_everything(
    warehouse: ModelWarehouse, pg_env: PgDatabase
) -> None:
    warehouse.publish(sink(deletes="hard"), "run1")
    warehouse.sql("delete from analytics.orders")

    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink(deletes="hard"), "run2")

    assert "would remove all 100 target rows" in str(caught.value)
    assert target(pg_env, "select count(*) from shop.orders") == [(100,)]


@pytest.mark.parametrize(
    ("current", "incoming", "expected"),
    [
        ("integer", "bigint", "bigint"),
        ("bigint", "integer", None),
        ("real", "double precision", "double precision"),
        ("integer", "double precision", "double precision"),
        ("double precision", "integer", None),
        ("bigint", "double precision", INCOMPATIBLE),
        ("numeric(10,2)", "numeric(14,4)", "numeric(14,4)"),
        ("numeric(10,2)", "numeric(8,3)", "numeric(11,3)"),
        ("numeric(12,2)", "bigint", "numeric(21,2)"),
        ("integer", "numeric(12,2)", "numeric(12,2)"),
        ("numeric", "bigint", None),
        ("numeric(12,2)", "numeric", "numeric"),
        ("character varying(20)", "text", "text"),
        ("text", "character varying(5)", None),
        ("date", "timestamp with time zone", "timestamp with time zone"),
        ("timestamp without time zone", "timestamp with time zone", INCOMPATIBLE),
        ("integer", "text", INCOMPATIBLE),
        ("text", "integer", INCOMPATIBLE),
    ],
)
def test_widening_rules(current: str, incoming: str, expected: str | None) -> None:
    assert widened_type(current, incoming) == expected
