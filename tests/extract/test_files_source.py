"""The files source, run through the real runner into a real DuckDB warehouse.

Local folders are written in tmp_path; the s3:// tests talk to a moto S3 server
on 127.0.0.1 that this module starts and stops.
"""

from __future__ import annotations

import doctest
import gzip
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mocra_elt.audit.store import AuditStore, Watermark
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.extract import files
from mocra_elt.extract.files import expand_braces
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines
from tests.conftest import write_pipeline

MOTO_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "moto_server"
BASE_TIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC, a fixed modification time


# --- helpers ----------------------------------------------------------------------------------


def run_once(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    pipelines = load_pipelines(project.sources_dir)
    results = run_pipelines(project, pipelines, open_warehouse(project))
    assert len(results) == 1
    return results[0]


def loaded_rows(result: RunResult) -> int | None:
    assert result.succeeded, result.error
    return next(stage.rows_out for stage in result.stages if stage.stage == "load")


def query(project_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with open_warehouse(Project.discover(project_dir)).connect() as connection:
        return list(connection.execute(sql).fetchall())


def count_rows(project_dir: Path, table: str = "raw_items.items") -> int:
    return int(query(project_dir, f"select count(*) from {table}")[0][0])


def watermarks(project_dir: Path, pipeline: str = "items") -> dict[str, Watermark]:
    return AuditStore(open_warehouse(Project.discover(project_dir))).current_watermarks(pipeline)


def write_file(path: Path, content: str | bytes, modified: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if modified is not None:
        os.utime(path, (modified, modified))
    return path


def write_parquet(path: Path, table: pa.Table, modified: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    if modified is not None:
        os.utime(path, (modified, modified))
    return path


def items_pipeline(
    project_dir: Path, url: str, load: dict[str, Any] | None = None, **source: Any
) -> None:
    """Write sources/items.yml: a files source loading into raw_items.items."""
    definition = {
        "name": "items",
        "source": {"type": "files", "url": url, **source},
        "load": {"table": "items", **(load or {})},
    }
    write_pipeline(project_dir, "items", yaml.safe_dump(definition, sort_keys=False))


# --- formats, globs and URLs ------------------------------------------------------------------


def test_docstring_examples() -> None:
    assert doctest.testmod(files).failed == 0


def test_brace_expansion() -> None:
    assert expand_braces("*.{parquet,csv}") == ["*.parquet", "*.csv"]
    assert expand_braces("{a,b}/*.{x,y}") == ["a/*.x", "a/*.y", "b/*.x", "b/*.y"]
    assert expand_braces("{a,{b,c}}.csv") == ["a.csv", "b.csv", "c.csv"]
    assert expand_braces("plain/*.csv") == ["plain/*.csv"]
    assert expand_braces("open{brace") == ["open{brace"]


def test_reads_csv_jsonl_parquet_with_braces(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "a.csv", "id,name\n1,one\n2,two\n")
    write_file(data / "b.jsonl", '{"id": 3, "name": "three"}\n{"id": 4, "name": "four"}\n')
    write_parquet(data / "c.parquet", pa.table({"id": [5, 6], "name": ["five", "six"]}))
    write_file(data / "notes.txt", "not data\n")
    write_file(data / "nested" / "d.csv", "id,name\n7,seven\n")
    write_file(data / ".hidden.csv", "id,name\n8,eight\n")
    items_pipeline(project_dir, "data", glob="*.{csv,jsonl,parquet}")

    result = run_once(project_dir)

    assert loaded_rows(result) == 6
    rows = query(project_dir, "select id, name, _source_file from raw_items.items order by id")
    assert rows == [
        (1, "one", "a.csv"),
        (2, "two", "a.csv"),
        (3, "three", "b.jsonl"),
        (4, "four", "b.jsonl"),
        (5, "five", "c.parquet"),
        (6, "six", "c.parquet"),
    ]


def test_double_star_glob_reads_nested_files(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "top.csv", "id\n1\n")
    write_file(data / "2013" / "07" / "deep.csv", "id\n2\n")
    items_pipeline(project_dir, "data", glob="**/*.csv")

    assert loaded_rows(run_once(project_dir)) == 2
    files = query(project_dir, "select _source_file from raw_items.items order by id")
    assert files == [("top.csv",), ("2013/07/deep.csv",)]


def test_file_url_and_csv_options(project_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    write_file(data / "a.csv.gz", gzip.compress(b"id;label\n1;-\n2;x\n"))
    items_pipeline(project_dir, f"file://{data}", csv={"delimiter": ";", "null_values": ["-"]})

    assert loaded_rows(run_once(project_dir)) == 2
    rows = query(project_dir, "select id, label, _source_file from raw_items.items order by id")
    assert rows == [(1, None, "a.csv.gz"), (2, "x", "a.csv.gz")]


def test_empty_folder_loads_nothing(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    items_pipeline(project_dir, "data")

    result = run_once(project_dir)

    assert loaded_rows(result) == 0
    assert "_file_modified" not in watermarks(project_dir)


def test_missing_folder_fails(project_dir: Path) -> None:
    items_pipeline(project_dir, "no_such_folder")

    result = run_once(project_dir)

    assert not result.succeeded
    assert result.error_code == "CONFIG_NOT_FOUND"
    assert f"the folder {project_dir / 'no_such_folder'}, which does not" in (result.error or "")


def test_unknown_extension_asks_for_format(project_dir: Path) -> None:
    write_file(project_dir / "data" / "export.dat", "id\n1\n")
    items_pipeline(project_dir, "data")

    result = run_once(project_dir)

    assert result.error_code == "SOURCE_FILE_UNREADABLE"
    assert "'export.dat'" in (result.error or "")
    assert "source.format" in (result.error or "")


def test_json_array_file_is_rejected(project_dir: Path) -> None:
    write_file(project_dir / "data" / "export.json", '[{"id": 1}, {"id": 2}]')
    items_pipeline(project_dir, "data")

    result = run_once(project_dir)

    assert result.error_code == "SOURCE_FILE_UNREADABLE"
    assert "file 'export.json' could not be read as JSON lines" in (result.error or "")
    assert "write one JSON object per line" in (result.error or "")


def test_url_naming_a_file_fails(project_dir: Path) -> None:
    write_file(project_dir / "data" / "a.csv", "id\n1\n")
    items_pipeline(project_dir, "data/a.csv")

    result = run_once(project_dir)

    assert result.error_code == "CONFIG_NOT_FOUND"
    assert "names the file" in (result.error or "")


def test_format_option_overrides_extension(project_dir: Path) -> None:
    write_file(project_dir / "data" / "export.dat", "id\n1\n2\n")
    items_pipeline(project_dir, "data", format="csv")

    assert loaded_rows(run_once(project_dir)) == 2


# --- incremental by modification time ---------------------------------------------------------


def test_rerun_and_new_or_touched_files(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "a.csv", "id\n1\n2\n", BASE_TIME)
    write_file(data / "b.csv", "id\n3\n", BASE_TIME + 10)
    items_pipeline(project_dir, "data")
    assert loaded_rows(run_once(project_dir)) == 3

    second = run_once(project_dir)
    assert loaded_rows(second) == 0
    assert count_rows(project_dir) == 3

    write_file(data / "c.csv", "id\n4\n5\n6\n", BASE_TIME + 20)
    assert loaded_rows(run_once(project_dir)) == 3
    assert query(project_dir, "select count(*) from raw_items.items where _source_file = 'c.csv'")[
        0
    ] == (3,)

    os.utime(data / "a.csv", (BASE_TIME + 30, BASE_TIME + 30))
    assert loaded_rows(run_once(project_dir)) == 2
    assert count_rows(project_dir) == 8  # an append table keeps both copies of a.csv


def test_boundary_files_with_watermark_time(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "a.csv", "id\n1\n", BASE_TIME)
    write_file(data / "b.csv", "id\n2\n", BASE_TIME)
    items_pipeline(project_dir, "data")
    assert loaded_rows(run_once(project_dir)) == 2
    mark = watermarks(project_dir)["_file_modified"]
    assert mark.value == datetime.fromtimestamp(BASE_TIME, UTC).replace(tzinfo=None)
    assert mark.value_type == "timestamp"
    assert mark.boundary_keys == ["a.csv", "b.csv"]

    # Same time as the watermark, but not loaded yet: read. a.csv and b.csv are not.
    write_file(data / "c.csv", "id\n3\n4\n", BASE_TIME)
    assert loaded_rows(run_once(project_dir)) == 2
    assert query(project_dir, "select id from raw_items.items order by id") == [
        (1,),
        (2,),
        (3,),
        (4,),
    ]
    assert watermarks(project_dir)["_file_modified"].boundary_keys == ["a.csv", "b.csv", "c.csv"]
    assert loaded_rows(run_once(project_dir)) == 0

    # A file that arrives with an older modification time is skipped for good.
    write_file(data / "old.csv", "id\n5\n", BASE_TIME - 60)
    assert loaded_rows(run_once(project_dir)) == 0


def test_incremental_by_modified_off_reads_all(project_dir: Path) -> None:
    write_file(project_dir / "data" / "a.csv", "id\n1\n2\n", BASE_TIME)
    items_pipeline(project_dir, "data", incremental_by_modified=False)

    assert loaded_rows(run_once(project_dir)) == 2
    assert loaded_rows(run_once(project_dir)) == 2
    assert "_file_modified" not in watermarks(project_dir)


def test_record_cursor_filters_rows(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "a.csv", "id,updated_at\n1,10\n2,20\n3,30\n", BASE_TIME)
    items_pipeline(
        project_dir,
        "data",
        load={
            "write_disposition": "merge",
            "primary_key": "id",
            "incremental": {"cursor": "updated_at"},
        },
    )
    assert loaded_rows(run_once(project_dir)) == 3

    # A new export repeats rows 1-3 and adds row 4: only row 4 is past the record cursor.
    write_file(data / "b.csv", "id,updated_at\n1,10\n2,20\n3,30\n4,40\n", BASE_TIME + 10)
    assert loaded_rows(run_once(project_dir)) == 1

    marks = watermarks(project_dir)
    assert marks["updated_at"].value == 40
    assert marks["_file_modified"].boundary_keys == ["b.csv"]
    assert query(project_dir, "select id, _source_file from raw_items.items order by id") == [
        (1, "a.csv"),
        (2, "a.csv"),
        (3, "a.csv"),
        (4, "b.csv"),
    ]


# --- failures ---------------------------------------------------------------------------------


def test_corrupt_parquet_leaves_table_and_watermarks(project_dir: Path) -> None:
    data = project_dir / "data"
    write_parquet(data / "good.parquet", pa.table({"id": [1, 2]}), BASE_TIME)
    items_pipeline(project_dir, "data")
    assert loaded_rows(run_once(project_dir)) == 2
    before = watermarks(project_dir)

    write_parquet(data / "next.parquet", pa.table({"id": [3]}), BASE_TIME + 10)
    write_file(data / "broken.parquet", b"PAR1 this is not a parquet file", BASE_TIME + 20)
    result = run_once(project_dir)

    assert not result.succeeded
    assert result.error_code == "SOURCE_FILE_UNREADABLE"
    assert "file 'broken.parquet' could not be read as Parquet" in (result.error or "")
    assert "magic bytes" in (result.error or "")
    assert query(project_dir, "select id from raw_items.items order by id") == [(1,), (2,)]
    assert watermarks(project_dir) == before


def test_type_conflict_across_files_is_explained(project_dir: Path) -> None:
    data = project_dir / "data"
    write_file(data / "a.csv", "id,reading\n1,2\n", BASE_TIME)
    write_file(data / "b.csv", "id,reading\n2,2.5\n", BASE_TIME + 10)
    items_pipeline(project_dir, "data")

    result = run_once(project_dir)

    assert result.error_code == "RECORD_PARSE_ERROR"
    message = result.error or ""
    assert "column 'reading' is int64 in file 'a.csv' but double in file 'b.csv'" in message
    assert "load.columns, e.g. 'reading: double'" in message

    items_pipeline(project_dir, "data", load={"columns": {"reading": "double"}})
    assert loaded_rows(run_once(project_dir)) == 2
    assert query(project_dir, "select reading from raw_items.items order by id") == [
        (2.0,),
        (2.5,),
    ]


def test_late_type_change_in_csv_names_column(project_dir: Path) -> None:
    # More than one 16 MiB block: the reader infers int64 from the first block.
    body = "id,reading\n" + "1,2\n" * 4_500_000 + "2,2.5\n"
    write_file(project_dir / "data" / "big.csv", body)
    items_pipeline(project_dir, "data")

    result = run_once(project_dir)

    assert result.error_code == "SOURCE_FILE_UNREADABLE"
    message = result.error or ""
    assert "file 'big.csv' could not be read as CSV: column 'reading'" in message
    assert "Declare or correct the column's type under load.columns" in message


# --- S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on an ephemeral port of 127.0.0.1."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", "0"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_for_port(server, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(server: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if match:
            port = int(match.group(1))
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port
        if server.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not start: {log_path.read_text()}")


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TEST_S3_ENDPOINT", s3_endpoint)
    return s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)


def s3_pipeline(project_dir: Path, url: str, **options: Any) -> None:
    storage_options = {
        "endpoint_url": "${env:TEST_S3_ENDPOINT}",
        "key": "${env:AWS_ACCESS_KEY_ID}",
        "secret": "${env:AWS_SECRET_ACCESS_KEY}",
        **options,
    }
    items_pipeline(project_dir, url, glob="*.{csv,parquet}", storage_options=storage_options)


def test_s3_prefix_loads_new_objects_only(project_dir: Path, s3: Any) -> None:
    s3.mkdir("landing")
    s3.pipe("landing/items/a.csv", b"id\n1\n2\n")
    table = pa.table({"id": pa.array([3], pa.int64())})
    with s3.open("landing/items/b.parquet", "wb") as handle:
        pq.write_table(table, handle)
    s3.pipe("landing/other/c.csv", b"id\n99\n")
    s3_pipeline(project_dir, "s3://landing/items")

    assert loaded_rows(run_once(project_dir)) == 3
    assert loaded_rows(run_once(project_dir)) == 0

    s3.pipe("landing/items/d.csv", b"id\n4\n")
    assert loaded_rows(run_once(project_dir)) == 1
    assert query(project_dir, "select id, _source_file from raw_items.items order by id") == [
        (1, "a.csv"),
        (2, "a.csv"),
        (3, "b.parquet"),
        (4, "d.csv"),
    ]


def test_s3_missing_bucket_fails(project_dir: Path, s3: Any) -> None:
    s3_pipeline(project_dir, "s3://no-such-bucket/items")

    result = run_once(project_dir)

    assert result.error_code == "CONFIG_NOT_FOUND"
    assert "the bucket 'no-such-bucket', which does not exist" in (result.error or "")


def test_s3_unreachable_is_transient(project_dir: Path, s3: Any, monkeypatch: Any) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("TEST_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    s3_pipeline(
        project_dir,
        "s3://landing/items",
        config_kwargs={"retries": {"max_attempts": 1}},
    )

    result = run_once(project_dir)

    assert result.error_code == "SOURCE_UNAVAILABLE"
    assert f"127.0.0.1:{port}" in (result.error or "")
