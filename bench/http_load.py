"""HTTP API into DuckDB: a mocra-elt `http` pipeline against plain dlt `rest_api`.

    .venv/bin/python bench/http_load.py [--rows 100000] [--page-size 5000] [--repeat 3]

Starts the demo flights API on 127.0.0.1 with the first ROWS flights and loads
them, in the same process and from the same server, through:

- mocra-elt: an `http` pipeline (dlt's REST client, one Arrow table per page,
  merge on id, watermark bookkeeping and audit rows) into a fresh DuckDB file;
- baseline: dlt's `rest_api_source` with the same paginator into a fresh DuckDB
  file, records as Python dicts, merge on id.

It prints the median of REPEAT runs of each, rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    make_project,
    median_seconds,
    print_comparison,
    quiet_environment,
    run_project,
)

PIPELINE = """\
    source:
      type: http
      base_url: "{url}"
      path: /flights
      data_selector: data
      paginator:
        type: page_number
        page_param: page
        page_size_param: page_size
        page_size: {page_size}
        total_path: total_pages
    load:
      table: flights
      write_disposition: merge
      primary_key: id
    """


def plain_dlt(url: str, page_size: int, pipelines_dir: Path, warehouse: Path) -> int:
    import dlt
    from dlt.sources.rest_api import rest_api_source

    source = rest_api_source(
        {
            "client": {
                "base_url": url,
                "paginator": {
                    "type": "page_number",
                    "page_param": "page",
                    "base_page": 1,
                    "total_path": "total_pages",
                },
            },
            "resources": [
                {
                    "name": "flights",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "flights",
                        "params": {"page_size": page_size},
                        "data_selector": "data",
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_rest_api",
        pipelines_dir=str(pipelines_dir),
        destination=dlt.destinations.duckdb(credentials=str(warehouse)),
        dataset_name="raw_flights",
    )
    info = pipeline.run(source)
    info.raise_on_failed_jobs()
    return pipeline.last_trace.last_normalize_info.row_counts.get("flights", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    quiet_environment()

    from mocra_elt.demo.flights_api import start_server

    with tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        scratch_dir = Path(scratch)
        server = start_server(scratch_dir / "api", limit_rows=options.rows)
        try:
            body = PIPELINE.format(url=server.url, page_size=options.page_size)

            def mocra(attempt: int) -> int:
                return run_project(
                    make_project(scratch_dir / f"project_{attempt}", "flights", body)
                )

            def baseline(attempt: int) -> int:
                return plain_dlt(
                    server.url,
                    options.page_size,
                    scratch_dir / f"dlt_{attempt}",
                    scratch_dir / f"baseline_{attempt}.duckdb",
                )

            ours, rows = median_seconds(mocra, options.repeat)
            theirs, baseline_rows = median_seconds(baseline, options.repeat)
        finally:
            server.stop()
        if rows != baseline_rows:
            raise SystemExit(f"row counts differ: mocra {rows}, dlt rest_api {baseline_rows}")
        print_comparison(
            f"HTTP API -> DuckDB, {rows:,} rows in pages of {options.page_size}, "
            f"median of {options.repeat}",
            rows,
            ours,
            theirs,
            "dlt rest_api (dicts)",
        )


if __name__ == "__main__":
    main()
