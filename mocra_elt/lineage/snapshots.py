"""The columns dbt adds to a snapshot, and what each is derived from.

A snapshot table has the columns of its query plus `dbt_scd_id`, `dbt_updated_at`,
`dbt_valid_from` and `dbt_valid_to` (names configurable with `snapshot_meta_column_names`),
and `dbt_is_deleted` when `hard_deletes: new_record`. With the timestamp strategy the time
columns copy the `updated_at` column. With the check strategy they hold the time of the
snapshot run, so they have no upstream column.
"""

from __future__ import annotations

from dataclasses import replace

from mocra_elt.lineage.graph import ColumnLineage, Upstream
from mocra_elt.lineage.manifest import DbtNode

META_COLUMNS = ("dbt_scd_id", "dbt_updated_at", "dbt_valid_from", "dbt_valid_to")


def snapshot_columns(
    node: DbtNode, output: list[str], lineage: dict[str, ColumnLineage]
) -> tuple[list[str], dict[str, ColumnLineage]]:
    """Append the snapshot's meta columns to the query's output columns and their lineage."""
    config = node.config
    names = {**{name: name for name in META_COLUMNS}, "dbt_is_deleted": "dbt_is_deleted"}
    names.update({k: v for k, v in (config.get("snapshot_meta_column_names") or {}).items() if v})
    strategy = str(config.get("strategy") or "timestamp")
    key_columns = _columns_named(config.get("unique_key"), output)
    updated_at = _columns_named(config.get("updated_at"), output) if strategy == "timestamp" else []

    lineage = dict(lineage)
    key_upstream = _upstream_of(key_columns, lineage)
    time_upstream = _upstream_of(updated_at, lineage)
    time_reason = (
        f"written by dbt snapshot from {updated_at[0]} (timestamp strategy)"
        if updated_at
        else "written by dbt snapshot with the time of the snapshot run (check strategy)"
    )
    generated = {
        names["dbt_scd_id"]: (
            _transformed(key_upstream + time_upstream),
            "written by dbt snapshot: a hash of the unique key and the version's time",
        ),
        names["dbt_updated_at"]: (time_upstream, time_reason),
        names["dbt_valid_from"]: (time_upstream, time_reason),
        names["dbt_valid_to"]: (
            _transformed(time_upstream),
            "written by dbt snapshot: the valid_from of the next version of the row",
        ),
    }
    if config.get("hard_deletes") == "new_record":
        generated[names["dbt_is_deleted"]] = (
            [],
            "written by dbt snapshot: whether the row was deleted from the source",
        )
    for name, (upstream, reason) in generated.items():
        if name not in output:
            output = [*output, name]
        lineage[name] = ColumnLineage(name, "generated", upstream, reason=reason)
    return output, lineage


def _columns_named(setting: object, output: list[str]) -> list[str]:
    """Return the output columns a unique_key or updated_at setting names; [] for expressions."""
    if isinstance(setting, list):
        values = setting
    else:
        values = [setting] if setting else []
    by_lower = {name.lower(): name for name in output}
    return [by_lower[str(value).lower()] for value in values if str(value).lower() in by_lower]


def _upstream_of(columns: list[str], lineage: dict[str, ColumnLineage]) -> list[Upstream]:
    found: list[Upstream] = []
    for column in columns:
        entry = lineage.get(column)
        if entry is not None:
            found += [item for item in entry.upstream if item not in found]
    return found


def _transformed(upstream: list[Upstream]) -> list[Upstream]:
    return [replace(item, transformation="TRANSFORMATION") for item in upstream]
