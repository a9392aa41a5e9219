"""mocra-elt: SQL-first ELT on dlt, dbt and DuckDB, with audited, replayable runs."""

__version__ = "0.1.0"
