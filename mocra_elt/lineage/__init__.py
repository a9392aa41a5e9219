"""Table and column lineage from source systems through dbt models to sinks, and run audit.

- `build.build_lineage(project)` joins the pipeline definitions, dbt's manifest and the sinks
  into a `graph.LineageGraph`; `graph` documents the node ids.
- `columns` computes column lineage from compiled SQL with sqlglot.
- `runs.record_run_lineage` stores a run's lineage in `mocra_audit.run_lineage`.
- `openlineage.emit_run_event` sends OpenLineage START, COMPLETE and FAIL events.
- `render` prints a graph as text, JSON, Mermaid or DOT; `impact` follows one column down.
"""
