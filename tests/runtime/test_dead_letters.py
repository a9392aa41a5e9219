"""The dead-letter queue: bad records and failed batches are kept, shown and replayed once."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner, Result

from mocra_elt.cli.main import cli
from tests.conftest import write_pipeline

CSV_PIPELINE = """\
    source:
      type: files
      url: data
      glob: "*.csv"
    load:
      table: events
      columns: {id: bigint, amount: double}
    """


def mocra(project_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project-dir", str(project_dir), *args])


def query(project_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def letters(project_dir: Path, status: str = "all") -> list[dict[str, Any]]:
    result = mocra(project_dir, "dlq", "list", "--status", status, "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def write_events_with_bad_lines(project_dir: Path) -> list[str]:
    """Write 1,000 CSV records, 3 of them with an extra field; return the 3 bad lines."""
    lines = ["id,kind,amount"]
    bad = []
    for number in range(1, 1001):
        line = f"{number},kind{number % 7},{number * 1.5}"
        if number in (10, 500, 999):
            line = f"{number},kind,with,comma,{number * 1.5}"
            bad.append(line)
        lines.append(line)
    (project_dir / "data").mkdir(exist_ok=True)
    (project_dir / "data" / "events.csv").write_text("\n".join(lines) + "\n")
    return bad


def test_malformed_lines_dead_lettered_and_replayed_once(project_dir: Path) -> None:
    bad_lines = write_events_with_bad_lines(project_dir)
    write_pipeline(project_dir, "events", CSV_PIPELINE)

    first = mocra(project_dir, "run")

    assert first.exit_code == 0, first.output
    assert query(project_dir, "select count(*) from raw_events.events") == [(997,)]
    open_letters = letters(project_dir, "open")
    assert len(open_letters) == 3
    assert {letter["stage"] for letter in open_letters} == {"extract"}
    assert {letter["error_code"] for letter in open_letters} == {"RECORD_PARSE_ERROR"}
    assert sorted(letter["source_ref"] for letter in open_letters) == [
        "events.csv line 1000",
        "events.csv line 11",
        "events.csv line 501",
    ]

    shown = mocra(project_dir, "dlq", "show", open_letters[0]["id"][:8])
    assert shown.exit_code == 0, shown.output
    assert "expected 3 fields, found 5" in shown.output
    assert any(line in shown.output for line in bad_lines)

    # Fix the cause: the operator corrects the saved records, then replays them.
    payload = project_dir / ".mocra" / open_letters[0]["payload_ref"].partition("#")[0]
    fixed = payload.read_text().replace("kind,with,comma", "kind with comma")
    payload.write_text(fixed)
    replayed = mocra(project_dir, "dlq", "replay", "--pipeline", "events")

    assert replayed.exit_code == 0, replayed.output
    assert "3 of 3 letters replayed" in replayed.output
    assert query(project_dir, "select count(*), count(distinct id) from raw_events.events") == [
        (1000, 1000)
    ]
    assert (
        query(project_dir, "select kind from raw_events.events where id in (10, 500, 999)")
        == [("kind with comma",)] * 3
    )
    assert letters(project_dir, "open") == []
    assert {letter["status"] for letter in letters(project_dir)} == {"replayed"}

    again = mocra(project_dir, "dlq", "replay", "--pipeline", "events")
    assert "No open dead letters to replay" in again.output
    assert query(project_dir, "select count(*) from raw_events.events") == [(1000,)]


def test_rerun_does_not_duplicate_letters(project_dir: Path) -> None:
    write_events_with_bad_lines(project_dir)
    write_pipeline(project_dir, "events", CSV_PIPELINE)
    mocra(project_dir, "run")
    (project_dir / "data" / "events.csv").touch()

    second = mocra(project_dir, "run")

    assert second.exit_code == 0, second.output
    assert len(letters(project_dir)) == 3


def test_unconvertible_values_replay_after_fix(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text(
        "id,kind,amount\n1,a,1.5\n2,b,n/a\n3,c,2.5\n4,d,n/a\n"
    )
    write_pipeline(project_dir, "events", CSV_PIPELINE)

    first = mocra(project_dir, "run")

    assert first.exit_code == 0, first.output
    assert query(project_dir, "select id from raw_events.events order by id") == [(1,), (3,)]
    open_letters = letters(project_dir, "open")
    assert sorted(letter["record_key"] or "" for letter in open_letters) == ["", ""]
    assert all("'n/a' is not a valid double" in letter["error"] for letter in open_letters)

    stuck = mocra(project_dir, "dlq", "replay", "--pipeline", "events")
    assert "0 of 2 letters replayed" in stuck.output
    assert stuck.exit_code == 1
    assert "2 letters failed again and stay open" in stuck.output
    assert {letter["attempts"] for letter in letters(project_dir, "open")} == {2}

    # Fix the cause: the saved records hold the values as read; n/a means no amount.
    payload = project_dir / ".mocra" / open_letters[0]["payload_ref"].partition("#")[0]
    payload.write_text(payload.read_text().replace('"n/a"', "null"))
    fixed = mocra(project_dir, "dlq", "replay", "--pipeline", "events")

    assert fixed.exit_code == 0, fixed.output
    assert query(project_dir, "select id, amount from raw_events.events order by id") == [
        (1, 1.5),
        (2, None),
        (3, 2.5),
        (4, None),
    ]
    assert letters(project_dir, "open") == []


def test_malformed_json_lines_dead_lettered(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    good = [json.dumps({"id": number, "kind": "ok"}) for number in range(1, 6)]
    (project_dir / "data" / "events.jsonl").write_text(
        "\n".join([good[0], '{"id": 6, "kind": ', good[1], "[1, 2]", *good[2:]]) + "\n"
    )
    write_pipeline(
        project_dir,
        "events",
        'source: {type: files, url: data, glob: "*.jsonl"}\nload: {table: events}\n',
    )

    result = mocra(project_dir, "run")

    assert result.exit_code == 0, result.output
    assert query(project_dir, "select count(*) from raw_events.events") == [(5,)]
    refs = sorted(letter["source_ref"] for letter in letters(project_dir))
    assert refs == ["events.jsonl line 2", "events.jsonl line 4"]


def test_failed_batch_dead_lettered_and_replayed(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text("id,kind,amount\n1,a,1.0\n")
    (project_dir / "data" / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    write_pipeline(
        project_dir,
        "events",
        textwrap.dedent(CSV_PIPELINE).replace('"*.csv"', '"*.{csv,parquet}"'),
    )

    failed = mocra(project_dir, "run")

    assert failed.exit_code == 1
    [letter] = letters(project_dir, "open")
    assert letter["stage"] == "extract"
    assert letter["error_code"] == "SOURCE_FILE_UNREADABLE"
    assert letter["payload_ref"].endswith("extract-batch.json")
    shown = mocra(project_dir, "dlq", "show", letter["id"])
    assert '"watermarks_before"' in shown.output
    assert "broken.parquet" in shown.output

    (project_dir / "data" / "broken.parquet").unlink()
    replayed = mocra(project_dir, "dlq", "replay", letter["id"])

    assert replayed.exit_code == 0, replayed.output
    assert query(project_dir, "select count(*) from raw_events.events") == [(1,)]
    [after] = letters(project_dir)
    assert after["status"] == "replayed"
    replay_run = after["replay_run_id"]
    parent = query(
        project_dir,
        f"select parent_run_id, trigger from mocra_audit.runs where run_id = '{replay_run}'",
    )
    assert parent == [(letter["run_id"], "replay")]


def test_transform_failure_replays_from_transform(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text("id,kind,amount\n1,a,1.0\n2,b,2.0\n")
    model = project_dir / "dbt_project" / "models" / "event_totals.sql"
    model.write_text("select kind, sum(amount) as total from raw_events.evnts group by kind\n")
    write_pipeline(project_dir, "events", CSV_PIPELINE + "transform: {select: [event_totals]}\n")

    failed = mocra(project_dir, "run")

    assert failed.exit_code == 1
    [letter] = letters(project_dir, "open")
    assert letter["stage"] == "transform"

    model.write_text("select kind, sum(amount) as total from raw_events.events group by kind\n")
    replayed = mocra(project_dir, "dlq", "replay", letter["id"])

    assert replayed.exit_code == 0, replayed.output
    stages = query(
        project_dir,
        "select stage, status from mocra_audit.stage_runs "
        f"where run_id = '{letters(project_dir)[0]['replay_run_id']}' order by stage",
    )
    assert dict(stages) == {
        "extract": "skipped",
        "load": "skipped",
        "transform": "succeeded",
        "quality": "skipped",
        "publish": "skipped",
    }
    assert query(project_dir, "select count(*) from raw_events.events") == [(2,)]
    assert query(project_dir, "select sum(total) from analytics.event_totals") == [(3.0,)]


def test_discard_keeps_payload(project_dir: Path) -> None:
    write_events_with_bad_lines(project_dir)
    write_pipeline(project_dir, "events", CSV_PIPELINE)
    mocra(project_dir, "run")
    letter = letters(project_dir, "open")[0]

    discarded = mocra(project_dir, "dlq", "discard", letter["id"])

    assert discarded.exit_code == 0, discarded.output
    assert len(letters(project_dir, "open")) == 2
    assert len(letters(project_dir, "discarded")) == 1
    payload = project_dir / ".mocra" / letter["payload_ref"].partition("#")[0]
    assert payload.is_file()
    twice = mocra(project_dir, "dlq", "discard", letter["id"])
    assert twice.exit_code == 2
    assert "only open letters can be discarded" in twice.output


def test_unknown_letter_exit_2(project_dir: Path) -> None:
    write_pipeline(project_dir, "events", CSV_PIPELINE)
    result = mocra(project_dir, "dlq", "show", "feedface")

    assert result.exit_code == 2
    assert "dead letter 'feedface' not found" in result.output


CURSOR_PIPELINE = """\
    source:
      type: files
      url: data
      glob: "*.csv"
    load:
      table: events
      incremental: {cursor: happened_at}
      columns: {id: bigint, happened_at: timestamp}
    """


def test_mixed_zone_timestamps_load(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text(
        "id,happened_at\n1,2024-03-01T01:00:00+02:00\n"
        "2,2024-03-01 00:10:00\n3,2024-03-02T00:00:00Z\n"
    )
    write_pipeline(project_dir, "events", CURSOR_PIPELINE)

    result = mocra(project_dir, "run")

    assert result.exit_code == 0, result.output
    rows = query(
        project_dir,
        "select id, strftime(happened_at at time zone 'UTC', '%Y-%m-%d %H:%M') "
        "from raw_events.events order by id",
    )
    assert rows == [(1, "2024-02-29 23:00"), (2, "2024-03-01 00:10"), (3, "2024-03-02 00:00")]


def test_null_cursor_dead_lettered(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text(
        "id,happened_at\n1,2024-03-01T00:00:00Z\n2,\n3,2024-03-02T00:00:00Z\n"
    )
    write_pipeline(project_dir, "events", CURSOR_PIPELINE)

    result = mocra(project_dir, "run")

    assert result.exit_code == 0, result.output
    assert query(project_dir, "select id from raw_events.events order by id") == [(1,), (3,)]
    [letter] = letters(project_dir, "open")
    assert "the incremental cursor column 'happened_at' is NULL" in letter["error"]
    shown = mocra(project_dir, "dlq", "show", letter["id"])
    assert '"id": 2' in shown.output


def test_load_failure_names_root_cause(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "a.csv").write_text("id,amount\n1,1.5\n")
    write_pipeline(
        project_dir,
        "events",
        'source: {type: files, url: data, glob: "*.csv"}\nload: {table: events}\n',
    )
    assert mocra(project_dir, "run").exit_code == 0
    (project_dir / "data" / "b.csv").write_text("id,amount\n2,x1\n")

    result = mocra(project_dir, "run")

    assert result.exit_code == 1
    assert "x1" in result.output
    assert "load.columns" in result.output


def test_replay_unknown_pipeline_or_run_exit_2(project_dir: Path) -> None:
    write_pipeline(project_dir, "events", CSV_PIPELINE)

    unknown_pipeline = mocra(project_dir, "dlq", "replay", "--pipeline", "nope")
    unknown_run = mocra(project_dir, "dlq", "replay", "--run", "nope")

    assert unknown_pipeline.exit_code == 2
    assert "unknown pipeline 'nope'" in unknown_pipeline.output
    assert unknown_run.exit_code == 2
    assert "run 'nope' has no dead letters" in unknown_run.output
