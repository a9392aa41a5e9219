"""Tables checked in several batches give the verdicts of one whole-table check."""

from __future__ import annotations

import logging
from pathlib import Path

from quality_helpers import by_rule, execute, gate, make_project, query, scalar

from mocra_elt.config.project import Project
from mocra_elt.quality.engine import Budget

# 1,000 rows: id 500 appears again as row 999, so its two copies sit in different batches
# of 100 rows when read in table order.
EVENTS = """\
create table analytics.events as
select
    case when i = 999 then 500 else i end as id,
    case when i % 250 = 7 then null else ['a', 'b', 'c'][1 + i % 3] end as kind,
    case when i % 333 = 1 then 'x' else 'k' end as code,
    i % 10 as bucket,
    i // 10 as slot
from range(1000) as r(i)
"""
SUITE = """\
model: events
policy: {policy}
rules:
  - unique: id
  - unique: [bucket, slot]
  - not_null: kind
  - in_set: code
    values: [k]
  - row_count:
    min: 1000
"""


def events_project(tmp_path: Path, policy: str) -> Project:
    project = make_project(tmp_path, {"events": SUITE.format(policy=policy)})
    execute(project, "create schema analytics", EVENTS)
    return project


def test_unique_found_across_batches(tmp_path: Path) -> None:
    project = events_project(tmp_path, "warn")

    record = by_rule(gate(project, ["events"], batch_rows=100))["unique(id)"]

    assert record.status == "warned"
    assert record.result.unexpected_count == 2
    assert record.result.sample == [500, 500]


def test_batched_counts_equal_single_frame(tmp_path: Path) -> None:
    project = events_project(tmp_path, "warn")

    batched = gate(project, ["events"], batch_rows=100)
    whole = gate(project, ["events"])

    def counts(report: object) -> dict[str, tuple[object, ...]]:
        return {
            rule: (r.status, r.result.element_count, r.result.unexpected_count)
            for rule, r in by_rule(report).items()  # type: ignore[arg-type]
        }

    assert counts(batched) == counts(whole)
    assert counts(whole)["not_null(kind)"] == ("warned", 1000, 4)
    assert counts(whole)["in_set(code)"] == ("warned", 1000, 3)
    assert counts(whole)["unique(bucket,slot)"] == ("passed", 1000, 0)


def test_batched_quarantine_moves_both_duplicates(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, {"events": "model: events\npolicy: quarantine\nrules:\n  - unique: id\n"}
    )
    execute(project, "create schema analytics", EVENTS)

    gate(project, ["events"], batch_rows=100)

    moved = query(project, "select id from analytics.events__quarantine")
    assert moved == [(500,), (500,)]
    assert scalar(project, "select count(*) from analytics.events") == 998


def test_unique_null_keys_ignored_in_partitions(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, {"keys": "model: keys\nrules:\n  - unique: k\n  - unique: [k, j]\n"}
    )
    execute(
        project,
        "create schema analytics",
        "create table analytics.keys as select case when i < 50 then null else i end as k, "
        "case when i < 60 then null else 1 end as j from range(300) r(i)",
    )

    records = by_rule(gate(project, ["keys"], batch_rows=40))

    assert records["unique(k)"].status == "passed"
    assert records["unique(k)"].result.element_count == 300
    assert records["unique(k)"].result.missing_count == 50
    assert records["unique(k,j)"].result.missing_count == 50


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_batch_rows_reads_in_batches(tmp_path: Path) -> None:
    project = events_project(tmp_path, "warn")
    engine_log = logging.getLogger("mocra_elt.quality.engine")
    collect = Collect()
    engine_log.addHandler(collect)
    level = engine_log.level
    engine_log.setLevel(logging.INFO)
    try:
        gate(project, ["events"], batch_rows=100)
    finally:
        engine_log.removeHandler(collect)
        engine_log.setLevel(level)

    assert "analytics.events has 1000 rows; checking in batches of 100" in collect.messages
    assert "checking unique(id) on 10 hash partitions of its key" in collect.messages


def test_budget_sets_rows_per_batch() -> None:
    assert Budget(memory_bytes=64 * 4 * 5_000).rows_for(64.0) == 5_000
    assert Budget(memory_bytes=1024).rows_for(64.0) == 1_000
    assert Budget(memory_bytes=1024, batch_rows=7).rows_for(64.0) == 7
