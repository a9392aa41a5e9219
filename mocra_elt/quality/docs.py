"""Build Great Expectations Data Docs from the suite files and recorded results.

The site shows one page per suite in `expectations/` and one page per suite
checked in each recorded run, rebuilt from `mocra_audit.quality_results`, so
it needs no Great Expectations store besides the HTML folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.quality.engine import GreatExpectations
from mocra_elt.quality.expectations import expectation_for
from mocra_elt.quality.results import query_results
from mocra_elt.quality.suites import Suite, plan_rules

log = logging.getLogger(__name__)

SITE_NAME = "mocra_quality"


def docs_dir(project: Project) -> Path:
    return Path(project.data_dir) / "quality_docs"


def build_docs(
    project: Project, suites: list[Suite], results: list[dict[str, Any]], target: Path
) -> Path:
    """Write the site into `target` (replacing an earlier build); return its index.html."""
    if target.exists():
        shutil.rmtree(target)
    ge = GreatExpectations()
    context = ge.context
    context.add_data_docs_site(
        site_name=SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(target),
            },
        },
    )
    for suite in suites:
        _add_suite(ge, suite)
    for (run_id, suite_name), rows in _group(results).items():
        _add_validation(ge, run_id, suite_name, rows)
    context.build_data_docs(site_names=[SITE_NAME])
    return target / "index.html"


def _add_suite(ge: GreatExpectations, suite: Suite) -> None:
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    now = datetime.now(UTC)
    expectations = []
    for planned in plan_rules(suite, None):
        expectation_type, kwargs = expectation_for(planned, None, now)
        configuration = ExpectationConfiguration(
            type=expectation_type,
            kwargs={key: value for key, value in kwargs.items() if value is not None},
            meta={"rule": planned.name, "policy": planned.policy, "target": suite.target},
        )
        try:
            expectations.append(configuration.to_domain_obj())
        except Exception as error:  # noqa: BLE001 - one unreadable rule must not hide the rest
            log.warning(
                "suite %r, rule %r left out of the docs: %s", suite.name, planned.name, error
            )
    ge.context.suites.add(
        ge.gx.ExpectationSuite(
            name=suite.name, expectations=expectations, meta={"notes": suite.description}
        )
    )


def _group(results: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["run_id"], row["suite"]), []).append(row)
    return groups


def _add_validation(
    ge: GreatExpectations, run_id: str, suite_name: str, rows: list[dict[str, Any]]
) -> None:
    from great_expectations.core import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    results = []
    for row in rows:
        configuration = ExpectationConfiguration(
            type=row["expectation"],
            kwargs=json.loads(row["kwargs"] or "{}"),
            meta={"rule": row["rule"], "policy": row["policy"], "status": row["status"]},
        )
        results.append(
            ExpectationValidationResult(
                success=row["status"] == "passed",
                expectation_config=configuration,
                result=_result_of(row),
            )
        )
    passed = sum(1 for result in results if result.success)
    checked_at = rows[0]["checked_at"].replace(tzinfo=UTC)
    identifier = RunIdentifier(run_name=run_id, run_time=checked_at)
    relation = rows[0]["relation"]
    validation = ExpectationSuiteValidationResult(
        success=passed == len(results),
        results=results,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results),
        },
        meta={
            "run_id": identifier,
            "pipeline": rows[0]["pipeline"],
            "batch_spec": {"data_asset_name": relation},
            "great_expectations_version": ge.gx.__version__,
            "active_batch_definition": {
                "datasource_name": "warehouse",
                "data_connector_name": "mocra_quality",
                "data_asset_name": relation,
                "batch_identifiers": {},
            },
        },
    )
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
        run_id=identifier,
        batch_identifier=relation,
    )
    ge.context.validation_results_store.set(key, validation)


def _result_of(row: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if row["element_count"] is not None:
        result.update(
            element_count=row["element_count"],
            unexpected_count=row["unexpected_count"],
            unexpected_percent=row["unexpected_percent"],
            partial_unexpected_list=json.loads(row["sample"] or "[]"),
        )
    if row["observed_value"] is not None:
        result["observed_value"] = json.loads(row["observed_value"])
    return result


def recorded_results(
    connection: Any, run_id: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Return the results of one run (an id prefix) or of the newest `limit` runs."""
    if run_id is not None:
        rows = query_results(connection, "where left(run_id, length(?)) = ?", [run_id, run_id])
        runs = {row["run_id"] for row in rows}
        if not runs:
            raise ConfigError(
                f"no quality results recorded for run {run_id!r}. List runs with "
                "'mocra-elt runs list'.",
                error_code="CONFIG_NOT_FOUND",
            )
        if len(runs) > 1:
            raise ConfigError(
                f"run id prefix {run_id!r} matches {len(runs)} runs; give more characters."
            )
        return rows
    rows = query_results(connection, "", [])
    newest = sorted({row["run_id"] for row in rows}, reverse=True)[:limit]
    return [row for row in rows if row["run_id"] in set(newest)]
