"""Read dbt's manifest.json, running `dbt parse` or `dbt compile` in-process when it is missing.

dbt writes the manifest to `<data_dir>/dbt_target/manifest.json` after every command. Only
`dbt compile` (and `run`/`build` for the nodes they ran) stores each node's compiled SQL, which
column lineage needs, so `load_manifest(compiled=True)` compiles when a node lacks it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, TransformError

log = logging.getLogger(__name__)

# Resource types with columns: they hold rows in the warehouse, or SQL for ephemeral models.
# Tests, analyses and operations are left out of the lineage graph.
RELATION_TYPES = ("model", "seed", "snapshot")
SQL_TYPES = ("model", "snapshot")
# Folders inside a dbt project that dbt writes to or that hold installed packages.
SKIPPED_FOLDERS = {"target", "logs", "dbt_packages", "dbt_modules", ".mocra"}
PATH_KEYS = (
    "model-paths",
    "seed-paths",
    "snapshot-paths",
    "macro-paths",
    "analysis-paths",
    "test-paths",
)
EPHEMERAL_PREFIX = "__dbt__cte__"


@dataclass
class DbtNode:
    """A source, seed, model, snapshot or exposure of the manifest, as lineage reads it."""

    unique_id: str
    resource_type: str
    name: str
    package: str
    database: str | None
    schema: str | None
    identifier: str | None
    materialized: str | None
    compiled_code: str | None
    depends_on: list[str]
    documented_columns: dict[str, str | None]
    descriptions: dict[str, str]
    description: str
    original_file_path: str
    root_path: str | None
    config: dict[str, Any] = field(default_factory=dict)
    source_name: str | None = None
    extra_ctes: list[str] = field(default_factory=list)

    @property
    def is_ephemeral(self) -> bool:
        return self.materialized == "ephemeral"

    @property
    def relation_parts(self) -> tuple[str, str] | None:
        """Return (schema, table) in the warehouse, or None for ephemeral models and exposures."""
        if self.is_ephemeral or self.schema is None or self.identifier is None:
            return None
        return self.schema, self.identifier


@dataclass
class Manifest:
    """The parts of manifest.json that lineage uses, indexed by unique_id."""

    path: Path
    adapter_type: str
    project_name: str
    nodes: dict[str, DbtNode]

    def of_type(self, *resource_types: str) -> Iterator[DbtNode]:
        return (node for node in self.nodes.values() if node.resource_type in resource_types)

    def missing_compiled(self, unique_ids: Iterable[str] | None = None) -> list[str]:
        """Return the models and snapshots in `unique_ids` (default: all) that lack compiled SQL."""
        wanted = set(unique_ids) if unique_ids is not None else None
        return [
            node.unique_id
            for node in self.of_type(*SQL_TYPES)
            if (wanted is None or node.unique_id in wanted) and not node.compiled_code
        ]


def manifest_path(project: Project) -> Path:
    return project.data_dir / "dbt_target" / "manifest.json"


def load_manifest(
    project: Project,
    *,
    compiled: bool | Iterable[str] = False,
    refresh: bool = False,
) -> Manifest:
    """Read the manifest, after running dbt when it is missing, older than the project or lacks SQL.

    `compiled=True` needs compiled SQL for every model and snapshot; an iterable of unique_ids
    needs it for those nodes only. `refresh=True` always runs dbt first.
    """
    path = manifest_path(project)
    needs_sql = compiled is not False
    if refresh or not path.exists() or _is_stale(project, path):
        _run_dbt(project, "compile" if needs_sql else "parse")
        return read_manifest(path)

    manifest = read_manifest(path)
    wanted = None if compiled is True or compiled is False else list(compiled)
    if needs_sql and manifest.missing_compiled(wanted):
        missing = manifest.missing_compiled(wanted)
        log.info("the manifest lacks compiled SQL for %d nodes; running dbt compile", len(missing))
        _run_dbt(project, "compile")
        manifest = read_manifest(path)
    return manifest


def read_manifest(path: Path) -> Manifest:
    """Parse manifest.json into `DbtNode`s; raises ConfigError when the file is unreadable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot read the dbt manifest: {error}. Run 'mocra-elt lineage --refresh' to "
            "rebuild it.",
            path=path,
        ) from error

    metadata = document.get("metadata", {})
    nodes: dict[str, DbtNode] = {}
    for entry in document.get("nodes", {}).values():
        if entry.get("resource_type") in RELATION_TYPES:
            nodes[entry["unique_id"]] = _relation_node(entry)
    for entry in document.get("sources", {}).values():
        nodes[entry["unique_id"]] = _source_node(entry)
    for entry in document.get("exposures", {}).values():
        nodes[entry["unique_id"]] = _exposure_node(entry)
    return Manifest(
        path=path,
        adapter_type=str(metadata.get("adapter_type") or "duckdb"),
        project_name=str(metadata.get("project_name") or ""),
        nodes=nodes,
    )


def _columns(entry: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, str]]:
    columns = entry.get("columns") or {}
    types = {name: (column.get("data_type") or None) for name, column in columns.items()}
    descriptions = {
        name: column.get("description") or ""
        for name, column in columns.items()
        if column.get("description")
    }
    return types, descriptions


def _relation_node(entry: dict[str, Any]) -> DbtNode:
    config = entry.get("config") or {}
    types, descriptions = _columns(entry)
    if entry["resource_type"] == "seed":
        for name, data_type in (config.get("column_types") or {}).items():
            types.setdefault(name, data_type)
    return DbtNode(
        unique_id=entry["unique_id"],
        resource_type=entry["resource_type"],
        name=entry["name"],
        package=entry.get("package_name", ""),
        database=entry.get("database"),
        schema=entry.get("schema"),
        identifier=entry.get("alias") or entry["name"],
        materialized=config.get("materialized"),
        compiled_code=entry.get("compiled_code"),
        depends_on=list((entry.get("depends_on") or {}).get("nodes") or []),
        documented_columns=types,
        descriptions=descriptions,
        description=entry.get("description") or "",
        original_file_path=entry.get("original_file_path", ""),
        root_path=entry.get("root_path"),
        config=config,
        extra_ctes=[cte["id"] for cte in entry.get("extra_ctes") or []],
    )


def _source_node(entry: dict[str, Any]) -> DbtNode:
    types, descriptions = _columns(entry)
    return DbtNode(
        unique_id=entry["unique_id"],
        resource_type="source",
        name=entry["name"],
        package=entry.get("package_name", ""),
        database=entry.get("database"),
        schema=entry.get("schema"),
        identifier=entry.get("identifier") or entry["name"],
        materialized=None,
        compiled_code=None,
        depends_on=[],
        documented_columns=types,
        descriptions=descriptions,
        description=entry.get("description") or "",
        original_file_path=entry.get("original_file_path", ""),
        root_path=None,
        source_name=entry.get("source_name"),
    )


def _exposure_node(entry: dict[str, Any]) -> DbtNode:
    return DbtNode(
        unique_id=entry["unique_id"],
        resource_type="exposure",
        name=entry["name"],
        package=entry.get("package_name", ""),
        database=None,
        schema=None,
        identifier=None,
        materialized=None,
        compiled_code=None,
        depends_on=list((entry.get("depends_on") or {}).get("nodes") or []),
        documented_columns={},
        descriptions={},
        description=entry.get("description") or "",
        original_file_path=entry.get("original_file_path", ""),
        root_path=None,
        config={"type": entry.get("type"), "url": entry.get("url"), "owner": entry.get("owner")},
    )


# --- keeping the manifest current ------------------------------------------------------------


def _is_stale(project: Project, path: Path) -> bool:
    """Tell whether a file of the dbt project (or its macro folders) changed after the manifest."""
    written = path.stat().st_mtime
    newest = max((p.stat().st_mtime for p in project_files(project)), default=0.0)
    if newest > written:
        log.info("the dbt manifest %s is older than the dbt project; refreshing it", path)
        return True
    return False


def project_files(project: Project) -> Iterator[Path]:
    """Yield the files dbt reads: the project folder and any configured folder outside it."""
    import yaml

    root = project.dbt_project_dir
    folders = [root]
    config_file = root / "dbt_project.yml"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    for key in PATH_KEYS:
        for folder in config.get(key) or []:
            candidate = (root / str(folder)).resolve()
            if not candidate.is_relative_to(root.resolve()):
                folders.append(candidate)
    profiles = project.profiles_dir / "profiles.yml"
    if profiles.exists():
        yield profiles
    for folder in folders:
        yield from _walk(folder)


def _walk(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]
        for name in files:
            if name.endswith((".sql", ".yml", ".yaml", ".csv", ".py", ".md")):
                yield Path(directory) / name


def _run_dbt(project: Project, command: str) -> None:
    from mocra_elt.transform.dbt import dbt_args, invoke

    log.info("running dbt %s for lineage", command)
    outcome = invoke(project, dbt_args(project, command))
    if outcome.exception is not None or not outcome.success:
        detail = f": {outcome.exception}" if outcome.exception is not None else ""
        raise TransformError(
            f"dbt {command} failed for the lineage graph{detail}. Run 'dbt {command} "
            f"--project-dir {project.dbt_project_dir}' to see the error; the dbt log is in "
            f"{project.data_dir / 'dbt_logs'}.",
            stage="transform",
        )
