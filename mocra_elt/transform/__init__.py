"""Transform: dbt models built in-process on the warehouse."""
