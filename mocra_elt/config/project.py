"""Project layout: the folders of a mocra-elt project and the warehouse it writes to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mocra_elt.errors import ConfigError

TARGETS = ("duckdb", "pg")


@dataclass(frozen=True)
class Project:
    """A project folder: `sources/`, `dbt_project/`, `expectations/` and `profiles.yml`.

    Run state (the DuckDB warehouse, dlt working folders, saved payloads) lives
    in `data_dir`, `.mocra/` under the root unless `MOCRA_DATA_DIR` is set.
    """

    root: Path
    data_dir: Path
    warehouse_path: Path
    target: str = "duckdb"

    @classmethod
    def discover(cls, start: Path | None = None, target: str | None = None) -> Project:
        """Find the root: `start`, `MOCRA_PROJECT_DIR`, or the nearest parent with `sources/`."""
        root = _find_root(start)
        data_dir = Path(os.environ.get("MOCRA_DATA_DIR") or root / ".mocra").resolve()
        target = target or os.environ.get("MOCRA_TARGET") or "duckdb"
        if target not in TARGETS:
            raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}.")
        warehouse = Path(os.environ.get("MOCRA_WAREHOUSE") or data_dir / "warehouse.duckdb")
        return cls(root=root, data_dir=data_dir, warehouse_path=warehouse.resolve(), target=target)

    @property
    def sources_dir(self) -> Path:
        return self.root / "sources"

    @property
    def dbt_project_dir(self) -> Path:
        return self.root / "dbt_project"

    @property
    def expectations_dir(self) -> Path:
        return self.root / "expectations"

    @property
    def profiles_dir(self) -> Path:
        return self.root

    def run_dir(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id

    def ensure_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.warehouse_path.parent.mkdir(parents=True, exist_ok=True)


def _find_root(start: Path | None) -> Path:
    if start is not None:
        root = Path(start).resolve()
        if not (root / "sources").is_dir():
            raise ConfigError(
                f"{root} is not a mocra-elt project: it has no sources/ folder. "
                "Create one with 'mocra-elt init DIR'."
            )
        return root
    if env_root := os.environ.get("MOCRA_PROJECT_DIR"):
        return _find_root(Path(env_root))
    current = Path.cwd().resolve()
    for candidate in (current, *current.parents):
        if (candidate / "sources").is_dir() and (candidate / "dbt_project").is_dir():
            return candidate
    raise ConfigError(
        f"No mocra-elt project found in {current} or its parents (a folder with sources/ and "
        "dbt_project/). Pass --project-dir, or create one with 'mocra-elt init DIR'."
    )
