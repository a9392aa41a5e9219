"""`mocra-elt demo run`: the reference job that `make run` starts."""

from __future__ import annotations

import click

from mocra_elt.cli.main import Settings, handle_errors


@click.command("run")
@click.option(
    "--port", default=8765, show_default=True, help="Port of the demo flights API on 127.0.0.1."
)
@click.pass_obj
@handle_errors
def run_reference(settings: Settings, port: int) -> None:
    """Write the demo data, start the flights API and run every pipeline."""
    from mocra_elt.cli.console import console
    from mocra_elt.cli.run_validate import execute_runs
    from mocra_elt.demo.reference import flights_api, prepare_demo_data

    project = settings.project()
    project.ensure_data_dir()
    console.print("Preparing the demo data (flights API state, monthly weather files) ...")
    prepare_demo_data(project)
    with flights_api(project, port):
        execute_runs(project, [], trigger="demo")
    console.print(
        f"Warehouse: {project.warehouse_path}\n"
        "Next: 'mocra-elt runs list', 'mocra-elt demo publish --rows 100' then 'make run' "
        "again, or 'dbt docs generate --project-dir dbt_project && dbt docs serve "
        "--project-dir dbt_project'."
    )
