"""Per-pipeline and per-stage metrics computed from the audit tables.

- success rate: succeeded runs divided by finished runs;
- latency: p50 and p95 of run or stage duration;
- throughput: rows/s and bytes/s over the time of succeeded stages;
- retries: attempts beyond the first, plus HTTP request retries of the extract stage;
- dead letters, and watermark lag: now minus the newest timestamp watermark.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from mocra_elt.audit.store import SCHEMA, utcnow
from mocra_elt.load.warehouse import Warehouse, fetch_dicts, table_exists


@dataclass
class Metrics:
    """Metrics of one pipeline (stage None) or of one stage of a pipeline."""

    pipeline: str
    stage: str | None
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    rows: int = 0
    bytes: int = 0
    rows_per_second: float | None = None
    bytes_per_second: float | None = None
    retries: int = 0
    dead_letters: int = 0
    watermark_lag_seconds: float | None = None
    durations: list[float] = field(default_factory=list, repr=False)
    busy_seconds: float = field(default=0.0, repr=False)

    @property
    def success_rate(self) -> float | None:
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("durations")
        document.pop("busy_seconds")
        document["success_rate"] = self.success_rate
        return document


def percentile(values: list[float], fraction: float) -> float | None:
    """Return the percentile by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compute_metrics(
    warehouse: Warehouse, since: datetime | None = None, pipeline: str | None = None
) -> list[Metrics]:
    """Return pipeline-level rows (stage None) followed by stage-level rows, sorted by name."""
    with warehouse.connect() as connection:
        if not table_exists(connection, SCHEMA, "runs"):
            return []
        runs = fetch_dicts(connection, f"select * from {SCHEMA}.runs")
        stages = fetch_dicts(connection, f"select * from {SCHEMA}.stage_runs")
        marks = fetch_dicts(connection, f"select * from {SCHEMA}.watermarks")
        letters = _dead_letters(connection)

    runs = [r for r in runs if _selected(r, since, pipeline)]
    run_pipeline = {run["run_id"]: run["pipeline"] for run in runs}
    by_pipeline = _pipeline_metrics(runs, letters)
    by_stage = _stage_metrics(stages, run_pipeline, letters)
    _add_watermark_lag(by_pipeline, marks)
    _finish(by_stage)
    _add_throughput(by_pipeline, by_stage)
    return sorted(by_pipeline.values(), key=_key) + sorted(by_stage.values(), key=_key)


def _pipeline_metrics(
    runs: list[dict[str, Any]], letters: dict[tuple[str, str], int]
) -> dict[str, Metrics]:
    metrics: dict[str, Metrics] = {}
    for run in runs:
        entry = metrics.setdefault(run["pipeline"], Metrics(run["pipeline"], None))
        entry.runs += 1
        entry.succeeded += run["status"] == "succeeded"
        entry.failed += run["status"] in ("failed", "abandoned")
        if run["ended_at"] is not None:
            entry.durations.append((run["ended_at"] - run["started_at"]).total_seconds())
    for entry in metrics.values():
        entry.p50_seconds = percentile(entry.durations, 0.5)
        entry.p95_seconds = percentile(entry.durations, 0.95)
        entry.dead_letters = sum(n for (p, _), n in letters.items() if p == entry.pipeline)
    return metrics


def _stage_metrics(
    stages: list[dict[str, Any]],
    run_pipeline: dict[str, str],
    letters: dict[tuple[str, str], int],
) -> dict[tuple[str, str], Metrics]:
    metrics: dict[tuple[str, str], Metrics] = {}
    for row in stages:
        pipeline = run_pipeline.get(row["run_id"])
        if pipeline is None or row["status"] in ("skipped", "running"):
            continue
        entry = metrics.setdefault((pipeline, row["stage"]), Metrics(pipeline, row["stage"]))
        entry.runs += 1
        entry.succeeded += row["status"] == "succeeded"
        entry.failed += row["status"] == "failed"
        entry.retries += max((row["attempts"] or 1) - 1, 0) + _request_retries(row)
        if row["duration_s"] is not None:
            entry.durations.append(row["duration_s"])
        if row["status"] == "succeeded":
            entry.rows += row["rows_out"] or 0
            entry.bytes += row["bytes"] or 0
            entry.busy_seconds += row["duration_s"] or 0.0
    for key, entry in metrics.items():
        entry.dead_letters = letters.get(key, 0)
    return metrics


def _finish(by_stage: dict[tuple[str, str], Metrics]) -> None:
    for entry in by_stage.values():
        entry.p50_seconds = percentile(entry.durations, 0.5)
        entry.p95_seconds = percentile(entry.durations, 0.95)
        if entry.busy_seconds > 0:
            entry.rows_per_second = entry.rows / entry.busy_seconds
            entry.bytes_per_second = entry.bytes / entry.busy_seconds


def _add_throughput(
    by_pipeline: dict[str, Metrics], by_stage: dict[tuple[str, str], Metrics]
) -> None:
    """Give each pipeline the retries of its stages and the throughput of its load stage."""
    for (pipeline, stage), entry in by_stage.items():
        if pipeline not in by_pipeline:
            continue
        by_pipeline[pipeline].retries += entry.retries
        if stage == "load":
            target = by_pipeline[pipeline]
            target.rows, target.bytes = entry.rows, entry.bytes
            target.rows_per_second = entry.rows_per_second
            target.bytes_per_second = entry.bytes_per_second


def _add_watermark_lag(by_pipeline: dict[str, Metrics], marks: list[dict[str, Any]]) -> None:
    newest: dict[str, datetime] = {}
    for mark in marks:
        if mark["value_type"] != "timestamp":
            continue
        value = datetime.fromisoformat(mark["value"])
        if mark["pipeline"] not in newest or value > newest[mark["pipeline"]]:
            newest[mark["pipeline"]] = value
    now = utcnow()
    for name, value in newest.items():
        if name in by_pipeline:
            by_pipeline[name].watermark_lag_seconds = (now - value).total_seconds()


def _request_retries(row: dict[str, Any]) -> int:
    if row["stage"] != "extract" or not row.get("details"):
        return 0
    try:
        details = json.loads(row["details"])
    except (TypeError, ValueError):
        return 0
    return int(details.get("http_retries") or 0) if isinstance(details, dict) else 0


def _dead_letters(connection: Any) -> dict[tuple[str, str], int]:
    if not table_exists(connection, SCHEMA, "dead_letters"):
        return {}
    rows = connection.execute(
        f"select pipeline_id, stage, count(*) from {SCHEMA}.dead_letters group by 1, 2"
    ).fetchall()
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for pipeline, stage, count in rows:
        counts[(pipeline, stage)] += int(count)
    return counts


def _selected(run: dict[str, Any], since: datetime | None, pipeline: str | None) -> bool:
    if pipeline is not None and run["pipeline"] != pipeline:
        return False
    return since is None or run["started_at"] >= since


def _key(entry: Metrics) -> tuple[str, int]:
    order = {"extract": 0, "load": 1, "transform": 2, "quality": 3, "publish": 4}
    return entry.pipeline, -1 if entry.stage is None else order.get(entry.stage, 9)


def to_prometheus(metrics: list[Metrics]) -> bytes:
    """Render the metrics in the Prometheus text exposition format."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauges = {
        name: Gauge(f"mocra_{name}", help_text, ["pipeline", "stage"], registry=registry)
        for name, help_text in PROMETHEUS_GAUGES.items()
    }
    for entry in metrics:
        labels = {"pipeline": entry.pipeline, "stage": entry.stage or "all"}
        values = entry.to_dict()
        for name in gauges:
            value = values[name]
            if value is not None:
                gauges[name].labels(**labels).set(value)
    return generate_latest(registry)


PROMETHEUS_GAUGES = {
    "runs": "Finished and running runs in the window.",
    "succeeded": "Succeeded runs in the window.",
    "failed": "Failed runs in the window.",
    "success_rate": "Succeeded runs divided by finished runs.",
    "p50_seconds": "Median duration in seconds.",
    "p95_seconds": "95th percentile duration in seconds.",
    "rows_per_second": "Rows written per second of succeeded stage time.",
    "bytes_per_second": "Bytes written per second of succeeded stage time.",
    "retries": "Attempts beyond the first, plus HTTP request retries.",
    "dead_letters": "Dead-lettered records and batches.",
    "watermark_lag_seconds": "Seconds between now and the newest timestamp watermark.",
}
