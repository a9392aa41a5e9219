"""Peak memory of an initial `db` sync: a large pgbench table against a table a tenth its size.

    .venv/bin/python bench/sync_memory.py [--small 10] [--large 100]

Fills two fresh databases with `pgbench -i -s SMALL` and `pgbench -i -s LARGE`
(100,000 rows of pgbench_accounts per unit of scale) on the server in
MOCRA_PG_*, or on a throwaway one that scripts/services.sh starts and stops.
For each, it runs `mocra-elt run` in a child process: an append pipeline of
type `db` that copies the whole table into a fresh DuckDB warehouse. The peak
resident set size (RSS high-water mark) of that child comes from `os.wait4`,
which returns the child's own resource usage.

It prints rows, seconds and peak RSS of both syncs, and the ratios of rows and
of peak RSS. Memory that stays flat as rows grow tenfold means the sync
streams: the db source reads Arrow batches of about 16 MB and dlt writes each
one to its load package before the next arrives.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import quiet_environment  # noqa: E402
from bench.pg_common import DB_PIPELINE, create_database, pgbench_init, postgres_server  # noqa: E402

# Set by the parent for its own projects; the child finds its project from --project-dir.
PARENT_VARIABLES = ("MOCRA_WAREHOUSE", "MOCRA_DATA_DIR", "DLT_DATA_DIR", "MOCRA_PROJECT_DIR")


@dataclass
class Sync:
    scale: int
    rows: int
    seconds: float
    peak_rss_bytes: int


def run_sync(info: Any, root: Path, scale: int) -> Sync:
    """Run `mocra-elt run` on a one-pipeline project in a child process; measure its peak RSS."""
    (root / "sources").mkdir(parents=True)
    (root / "dbt_project").mkdir()
    body = DB_PIPELINE.format(database=info.database)
    (root / "sources" / "accounts.yml").write_text(textwrap.dedent(body))
    environment = {k: v for k, v in os.environ.items() if k not in PARENT_VARIABLES}
    command = [sys.executable, "-m", "mocra_elt", "--project-dir", str(root), "run"]

    started = time.perf_counter()
    with open(root / "run.log", "wb") as log:
        child = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the sync at scale {scale} failed; see {root / 'run.log'}")
    # Linux reports ru_maxrss in KiB.
    return Sync(scale, _rows_loaded(root), seconds, usage.ru_maxrss * 1024)


def _rows_loaded(root: Path) -> int:
    import duckdb

    path = root / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        row = connection.execute("select count(*) from raw_accounts.accounts").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="pgbench scale of the small sync")
    parser.add_argument("--large", type=int, default=100, help="pgbench scale of the large sync")
    options = parser.parse_args()
    quiet_environment()

    syncs = []
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        for scale in (options.small, options.large):
            info = create_database(server, f"bench_sync_memory_s{scale}")
            started = time.perf_counter()
            pgbench_init(info, scale)
            print(f"pgbench -i -s {scale}: {time.perf_counter() - started:.1f} s")
            syncs.append(run_sync(info, Path(scratch) / f"scale_{scale}", scale))
            if syncs[-1].rows != scale * 100_000:
                raise SystemExit(f"scale {scale}: loaded {syncs[-1].rows} rows")
            create_database(server, f"bench_sync_memory_s{scale}")  # frees the disk space

    print_memory(syncs)


def print_memory(syncs: list[Sync]) -> None:
    mib = 1024 * 1024
    print(
        "\nPeak memory of an initial db sync (pgbench_accounts -> DuckDB), one child process each"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'pgbench scale':<14} {'rows':>12} {'seconds':>9} {'rows/s':>12} {'peak RSS MiB':>13}")
    for sync in syncs:
        print(
            f"{sync.scale:<14} {sync.rows:>12,} {sync.seconds:>9.1f} "
            f"{sync.rows / sync.seconds:>12,.0f} {sync.peak_rss_bytes / mib:>13,.0f}"
        )
    small, large = syncs
    print(
        f"ratio large/small: rows {large.rows / small.rows:.1f}, "
        f"peak RSS {large.peak_rss_bytes / small.peak_rss_bytes:.2f}"
    )


if __name__ == "__main__":
    main()
