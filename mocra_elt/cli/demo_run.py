"""`mocra-elt demo run`: the reference jobs that `make run` and `make run-pg` start."""

from __future__ import annotations

from contextlib import ExitStack

import click

from mocra_elt.cli.common import Settings, command_path, handle_errors


@click.command("run")
@click.option(
    "--port", default=8765, show_default=True, help="Port of the demo flights API on 127.0.0.1."
)
@click.option(
    "--with-servers",
    "--with-postgres",
    "with_servers",
    is_flag=True,
    help="Also run the pipelines and sinks tagged postgres or kafka, against the servers in "
    "MOCRA_PG_*, MOCRA_S3_ENDPOINT_URL and MOCRA_KAFKA_BOOTSTRAP, or throwaway ones that "
    "scripts/services.sh starts and stops.",
)
@click.pass_obj
@handle_errors
def run_reference(settings: Settings, port: int, with_servers: bool) -> None:
    """Write the demo data, start the flights API and run the pipelines."""
    from mocra_elt.cli.console import console
    from mocra_elt.cli.run_validate import execute_runs
    from mocra_elt.demo.reference import (
        SERVER_TAG,
        SERVER_TAGS,
        demo_servers,
        flights_api,
        prepare_demo_data,
        prepare_kafka_data,
        prepare_postgres_data,
        required_variables,
        server_tags_in_use,
    )

    mocra, dbt = command_path("mocra-elt"), command_path("dbt")
    project = settings.project()
    project.ensure_data_dir()
    console.print("Preparing the demo data (flights API state, monthly weather files) ...")
    prepare_demo_data(project)
    with ExitStack() as stack:
        tags = server_tags_in_use(project) if with_servers else []
        if tags:
            servers = stack.enter_context(demo_servers(project.root, required_variables(tags)))
            console.print(f"Using {servers}.")
        if SERVER_TAG in tags:
            copied = prepare_postgres_data()
            if copied:
                console.print(f"Copied {copied:,} flights into the table ops.flights.")
        if "kafka" in tags:
            produced = prepare_kafka_data()
            if produced:
                console.print(f"Produced {produced:,} flight status events to Kafka.")
        stack.enter_context(flights_api(project, port))
        excluded = () if with_servers else SERVER_TAGS
        execute_runs(project, [], trigger="demo", exclude_tags=excluded)
    console.print(
        f"Warehouse: {project.warehouse_path}\n"
        f"Next: '{mocra} runs list', '{mocra} demo publish --rows 100' then 'make run' "
        f"again, or '{dbt} docs generate --project-dir dbt_project && {dbt} docs serve "
        "--project-dir dbt_project'."
    )
    if with_servers:
        console.print(
            'With servers that outlive one run (eval "$(scripts/services.sh start DIR)"), '
            "'mocra-elt demo publish-db' changes 20 rows of ops.flights for the next "
            "'make run-pg'."
        )
