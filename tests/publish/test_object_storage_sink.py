"""The object_storage sink: partitioned files on a local disk and on a real S3 API server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mocra_elt.audit.store import AuditStore, Watermark
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.model import Sink
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, SinkError
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.publish.config import parse_sink
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import run_pipelines
from tests.conftest import REPO_ROOT, write_pipeline
from tests.conftest_services import ModelWarehouse, PgDatabase, S3Server

ORDERS = """
create or replace table analytics.orders as
select i as id, 'c' || (i % 7) as customer, cast(i * 1.25 as decimal(10, 2)) as amount,
       timestamptz '2013-01-01 00:00:00+00' + to_hours(i) as ordered_at
from range(0, 120) as t(i)
"""
DAYS = [f"dt=2013-01-0{day}" for day in range(1, 6)]


def local_sink(**options: Any) -> dict[str, Any]:
    sink = {
        "type": "object_storage",
        "model": "orders",
        "url": "exports/orders",
        "partition_by": {"column": "ordered_at", "name": "dt"},
        "order_by": ["id"],
    }
    return sink | options


@pytest.fixture
def warehouse(model_warehouse: ModelWarehouse) -> ModelWarehouse:
    model_warehouse.sql(ORDERS)
    return model_warehouse


def snapshot(root: Path) -> dict[str, bytes]:
    """Return every file under root, by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def data_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {path: data for path, data in files.items() if not path.startswith("_")}


def read_rows(root: Path | str, filesystem: Any = None) -> list[dict[str, Any]]:
    dataset = ds.dataset(root, filesystem=filesystem, format="parquet", partitioning="hive")
    return sorted(dataset.to_table().to_pylist(), key=lambda row: row["id"])


def test_partitions_by_record_day(warehouse: ModelWarehouse) -> None:
    result = warehouse.publish(local_sink(), "run1")

    root = warehouse.root / "exports" / "orders"
    files = snapshot(root)
    assert sorted(data_files(files)) == [f"{day}/part-00000.parquet" for day in DAYS]
    assert "_mocra_manifest.json" in files
    assert not (root / "_mocra_tmp").exists()
    assert result.details == {
        "partitions_written": 5,
        "partitions_unchanged": 0,
        "partitions_deleted": 0,
    }
    first_day = pq.read_table(root / DAYS[0] / "part-00000.parquet")
    assert first_day.column("id").to_pylist() == list(range(24))
    assert first_day.column_names == ["id", "customer", "amount", "ordered_at"]
    rows = read_rows(root)
    assert len(rows) == 120
    assert rows[30]["dt"] == "2013-01-02"


def test_changes_rewrite_only_their_partitions(warehouse: ModelWarehouse) -> None:
    warehouse.publish(local_sink(), "run1")
    root = warehouse.root / "exports" / "orders"
    before = snapshot(root)
    stat_before = {day: os.stat(root / day / "part-00000.parquet") for day in DAYS}
    warehouse.sql("update analytics.orders set amount = 0 where id = 50")
    warehouse.sql(
        "insert into analytics.orders values (500, 'new', 1, timestamptz '2013-01-09 10:00:00+00')"
    )

    result = warehouse.publish(local_sink(), "run2")

    after = snapshot(root)
    assert result.details["partitions_written"] == 2
    assert result.rows_written == 25
    assert sorted(path for path in after if after[path] != before.get(path)) == [
        "_mocra_manifest.json",
        "dt=2013-01-03/part-00000.parquet",
        "dt=2013-01-09/part-00000.parquet",
    ]
    for day in (DAYS[0], DAYS[1], DAYS[3], DAYS[4]):
        stat_after = os.stat(root / day / "part-00000.parquet")
        assert stat_after.st_mtime_ns == stat_before[day].st_mtime_ns
        assert stat_after.st_ino == stat_before[day].st_ino
    third = pq.read_table(root / DAYS[2] / "part-00000.parquet").to_pylist()
    assert [row["id"] for row in third] == list(range(48, 72))
    assert [str(row["amount"]) for row in third if row["id"] == 50] == ["0.00"]


def test_rerun_without_changes_writes_nothing(warehouse: ModelWarehouse) -> None:
    warehouse.publish(local_sink(), "run1")
    before = snapshot(warehouse.root / "exports" / "orders")

    result = warehouse.publish(local_sink(), "run2")

    assert result.rows_written == 0
    assert result.details["partitions_unchanged"] == 5
    assert snapshot(warehouse.root / "exports" / "orders") == before


def test_stale_temporary_files_are_removed(warehouse: ModelWarehouse) -> None:
    root = warehouse.root / "exports" / "orders"
    stale = root / "_mocra_tmp" / "killed-run" / "dt=2013-01-01" / "part-00000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")

    warehouse.publish(local_sink(), "run1")

    assert not (root / "_mocra_tmp").exists()
    assert len(read_rows(root)) == 120


def test_missing_partitions_deleted_when_asked(warehouse: ModelWarehouse) -> None:
    warehouse.publish(local_sink(), "run1")
    warehouse.sql(
        "delete from analytics.orders where ordered_at < timestamptz '2013-01-02 00:00:00+00'"
    )
    root = warehouse.root / "exports" / "orders"

    kept = warehouse.publish(local_sink(), "run2")
    assert (root / DAYS[0]).exists()
    assert kept.details["partitions_deleted"] == 0
    deleted = warehouse.publish(local_sink(delete_missing_partitions=True), "run3")

    assert deleted.details["partitions_deleted"] == 1
    assert not (root / DAYS[0]).exists()
    assert sorted(data_files(snapshot(root))) == [f"{day}/part-00000.parquet" for day in DAYS[1:]]


def test_empty_model_never_deletes_everything(warehouse: ModelWarehouse) -> None:
    warehouse.publish(local_sink(), "run1")
    warehouse.sql("delete from analytics.orders")

    with pytest.raises(SinkError) as caught:
        warehouse.publish(local_sink(delete_missing_partitions=True), "run2")

    assert "would delete all 5 partitions" in str(caught.value)
    root = warehouse.root / "exports" / "orders"
    assert sorted(data_files(snapshot(root))) == [f"{day}/part-00000.parquet" for day in DAYS]


def test_format_change_rewrites_every_partition(warehouse: ModelWarehouse) -> None:
    warehouse.publish(local_sink(), "run1")

    result = warehouse.publish(local_sink(format="csv"), "run2")

    root = warehouse.root / "exports" / "orders"
    assert result.details["partitions_written"] == 5
    assert sorted(data_files(snapshot(root))) == [f"{day}/part-00000.csv" for day in DAYS]
    first_day = pcsv.read_csv(root / DAYS[0] / "part-00000.csv")
    assert first_day.column("id").to_pylist() == list(range(24))


def test_jsonl_and_value_partitions(warehouse: ModelWarehouse) -> None:
    warehouse.sql("update analytics.orders set customer = 'a/b' where id = 1")
    warehouse.sql("update analytics.orders set customer = null where id = 2")

    warehouse.publish(
        local_sink(format="jsonl", partition_by={"column": "customer"}, order_by=["id"]), "run1"
    )

    root = warehouse.root / "exports" / "orders"
    folders = sorted(path.split("/")[0] for path in data_files(snapshot(root)))
    assert folders == [
        "customer=__HIVE_DEFAULT_PARTITION__",
        "customer=a%2Fb",
        *(f"customer=c{n}" for n in range(7)),
    ]
    lines = (root / "customer=a%2Fb" / "part-00000.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 1, "amount": "1.25", "ordered_at": "2013-01-01T01:00:00+00:00"}
    ]
    null_rows = (root / "customer=__HIVE_DEFAULT_PARTITION__" / "part-00000.jsonl").read_text()
    assert [json.loads(line)["id"] for line in null_rows.splitlines()] == [2]


def test_month_granularity(warehouse: ModelWarehouse) -> None:
    warehouse.publish(
        local_sink(partition_by={"column": "ordered_at", "granularity": "month", "name": "m"}),
        "run1",
    )

    root = warehouse.root / "exports" / "orders"
    assert sorted(data_files(snapshot(root))) == ["m=2013-01/part-00000.parquet"]


def test_day_granularity_needs_a_date(warehouse: ModelWarehouse) -> None:
    with pytest.raises(SinkError) as caught:
        warehouse.publish(
            local_sink(partition_by={"column": "customer", "granularity": "day"}), "run1"
        )

    assert "needs a date or timestamp column" in str(caught.value)


def test_partition_name_must_not_shadow_a_column(warehouse: ModelWarehouse) -> None:
    with pytest.raises(SinkError) as caught:
        warehouse.publish(local_sink(partition_by={"column": "ordered_at", "name": "id"}), "run1")

    assert "partition_by.name 'id' is also a column" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field", "text"),
    [
        ({"url": "ftp://host/x"}, "sinks[0].url", "must be s3://"),
        ({"format": "xlsx"}, "sinks[0].format", "'parquet', 'csv' or 'jsonl'"),
        ({"partition_by": None}, "sinks[0].partition_by", "valid dictionary"),
        ({"storage_options": {"secret": "abc"}}, "sinks[0].storage_options", "clear text"),
    ],
)
def test_invalid_options_name_the_field(options: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sink(Sink.model_validate(local_sink(**options)), "shop", 0)

    assert field in str(caught.value)
    assert text in str(caught.value)


# --- S3 -------------------------------------------------------------------------------------


def s3_sink(bucket: str, **options: Any) -> dict[str, Any]:
    return local_sink(
        url=f"s3://{bucket}/exports/orders",
        storage_options={"endpoint_url": "${env:MOCRA_S3_ENDPOINT_URL}"},
        **options,
    )


def s3_snapshot(s3_server: S3Server, root: str) -> dict[str, tuple[str, bytes]]:
    """Return every object under root with its ETag and bytes."""
    fs = s3_server.filesystem()
    objects = {}
    for path, info in fs.find(root, detail=True).items():
        objects[path.removeprefix(root + "/")] = (info["ETag"], fs.cat_file(path))
    return objects


def test_s3_changes_rewrite_only_their_partitions(
    warehouse: ModelWarehouse, s3_server: S3Server, s3_bucket: str
) -> None:
    root = f"{s3_bucket}/exports/orders"
    warehouse.publish(s3_sink(s3_bucket), "run1")
    before = s3_snapshot(s3_server, root)
    warehouse.sql("update analytics.orders set customer = 'changed' where id in (0, 100)")

    result = warehouse.publish(s3_sink(s3_bucket), "run2")

    after = s3_snapshot(s3_server, root)
    assert sorted(after) == ["_mocra_manifest.json", *(f"{d}/part-00000.parquet" for d in DAYS)]
    changed = sorted(path for path in after if after[path] != before[path])
    assert changed == [
        "_mocra_manifest.json",
        "dt=2013-01-01/part-00000.parquet",
        "dt=2013-01-05/part-00000.parquet",
    ]
    assert result.rows_written == 48
    rows = read_rows(root, s3_server.filesystem())
    assert [row["id"] for row in rows if row["customer"] == "changed"] == [0, 100]
    assert len(rows) == 120


# --- a killed publish -----------------------------------------------------------------------


# 60 days of one row per minute: enough work after the first partition that the kill
# lands while the sink still writes.
KILLED_MODEL = """
create or replace table analytics.orders as
select i as id, repeat('x', 200) as padding,
       timestamptz '2013-01-01 00:00:00+00' + to_minutes(i) as ordered_at
from range(0, 60 * 24 * 60) as t(i)
"""


def test_killed_publish_leaves_whole_partitions(
    warehouse: ModelWarehouse, project_dir: Path
) -> None:
    """SIGKILL while the sink writes, then a rerun: the result equals a clean publish."""
    warehouse.sql(KILLED_MODEL)
    warehouse.publish(local_sink(), "run1")
    root = warehouse.root / "exports" / "orders"
    before = data_files(snapshot(root))
    warehouse.sql("update analytics.orders set padding = 'changed'")

    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUBLISH, str(warehouse.root), json.dumps(local_sink())],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "wrote dt=" in line:
            process.send_signal(signal.SIGKILL)
            break
    assert process.wait(timeout=60) == -signal.SIGKILL

    # Every partition is still the old file: nothing was committed.
    assert data_files(snapshot(root)) == before
    assert (root / "_mocra_tmp").exists()
    warehouse.publish(local_sink(), "run3")
    clean = warehouse.root / "clean"
    warehouse.publish(local_sink(url=str(clean)), "run3")
    assert data_files(snapshot(root)) == data_files(snapshot(clean))
    assert not (root / "_mocra_tmp").exists()


# Runs the publish in a child process so that the test can kill it.
KILLED_PUBLISH = """
import json, logging, sys
from pathlib import Path
from tests.conftest_services import ModelWarehouse

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
ModelWarehouse(Path(sys.argv[1])).publish(json.loads(sys.argv[2]), "run2")
"""


# --- a replay through the whole pipeline ----------------------------------------------------

REPLAY_SOURCE = """
create table public.orders (
    id bigint primary key,
    amount numeric(10, 2) not null,
    ordered_at timestamptz not null,
    updated_at timestamptz not null
);
insert into orders
select i, i * 0.5, ts, ts
from generate_series(0, 999) as i,
     lateral (select timestamptz '2013-01-01 00:00:00+00' + i * interval '14.4 min') t(ts);
"""
REPLAY_PIPELINE = """\
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
  - type: object_storage
    model: raw_orders.orders
    url: exports/orders
    partition_by: {column: ordered_at, name: dt}
    order_by: [id]
"""


def run_pipeline(project_dir: Path) -> str:
    project = Project.discover(project_dir)
    configure_environment(project)
    [result] = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    assert result.succeeded, result.error
    return result.run_id


def test_replay_rewrites_only_the_window(project_dir: Path, pg_env: PgDatabase) -> None:
    pg_env.execute(REPLAY_SOURCE)
    write_pipeline(project_dir, "orders", REPLAY_PIPELINE)
    run_pipeline(project_dir)
    root = project_dir / "exports" / "orders"
    before = snapshot(root)
    # A correction that kept its updated_at: only a replay of its window picks it up.
    pg_env.execute("update orders set amount = 0 where id = 850")

    # Replay from 2013-01-08: move the watermark back, as a replay does, and run.
    project = Project.discover(project_dir)
    AuditStore(open_warehouse(project)).commit_load(
        run_id="replay",
        pipeline="orders",
        dataset="raw_orders",
        table="orders",
        load_id=None,
        rows_loaded=0,
        watermarks=[Watermark("updated_at", datetime(2013, 1, 8), "timestamp", [])],
    )
    replay = run_pipeline(project_dir)

    after = snapshot(root)
    window = ["dt=2013-01-08", "dt=2013-01-09", "dt=2013-01-10"]
    rewritten = sorted(path for path in after if after[path] != before[path])
    assert rewritten == ["_mocra_manifest.json", *(f"{day}/part-00000.parquet" for day in window)]
    for index, day in enumerate(window):
        rows = pq.read_table(root / day / "part-00000.parquet").to_pylist()
        first = (7 + index) * 100
        assert [row["id"] for row in rows] == list(range(first, first + 100))
        assert {row["_mocra_run_id"] for row in rows} == {replay}
        expected = {
            id_: amount
            for id_, amount in pg_env.query(
                "select id, amount from orders where id between %s and %s", [first, first + 99]
            )
        }
        assert {row["id"]: row["amount"] for row in rows} == expected
    assert [row["amount"] for row in read_rows(root) if row["id"] == 850] == [Decimal("0.00")]
