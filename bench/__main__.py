"""Run every benchmark in turn: `python -m bench [NAME ...]`.

Each benchmark is a script in this folder that prints its own comparison. This runs
them as separate processes with their default options, so that one's memory and caches
do not colour the next. The PostgreSQL and Kafka benchmarks start their own servers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
ORDER = (
    "parquet_load",
    "http_load",
    "quality_gate",
    "db_source",
    "pg_sink",
    "sync_memory",
    "kafka_source",
)


def main(names: list[str]) -> int:
    unknown = [name for name in names if not (FOLDER / f"{name}.py").is_file()]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    failures = 0
    for name in names or [name for name in ORDER if (FOLDER / f"{name}.py").is_file()]:
        print(f"\n=== {name}", flush=True)
        failures += subprocess.run([sys.executable, str(FOLDER / f"{name}.py")]).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
