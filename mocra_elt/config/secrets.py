"""Resolve `${env:NAME}` and `${secret:key}` references at run time."""

from __future__ import annotations

import os

from mocra_elt.config.model import SECRET_REFERENCE
from mocra_elt.errors import SecretError


def resolve_secret(reference: str, *, pipeline: str, field: str) -> str:
    """Return the value a secret reference points to.

    `${env:NAME}` reads an environment variable; `${secret:a.b}` reads key `a.b`
    from dlt's secrets (`.dlt/secrets.toml` or the matching environment variable).
    """
    match = SECRET_REFERENCE.match(reference)
    if match is None:
        raise SecretError(
            f"{field} must be a reference such as '${{env:NAME}}'.", pipeline=pipeline, field=field
        )
    kind, key = match.groups()
    if kind == "env":
        value = os.environ.get(key)
        if value is None:
            raise SecretError(
                f"pipeline {pipeline!r}: {field} refers to environment variable {key!r}, "
                "which is not set. Export it before running.",
                pipeline=pipeline,
                field=field,
            )
        return value
    return _dlt_secret(key, pipeline=pipeline, field=field)


def _dlt_secret(key: str, *, pipeline: str, field: str) -> str:
    import dlt

    try:
        value = dlt.secrets[key]
    except KeyError:
        value = None
    if value is None:
        raise SecretError(
            f"pipeline {pipeline!r}: {field} refers to secret {key!r}, which is not in "
            ".dlt/secrets.toml nor in the matching environment variable "
            f"({key.upper().replace('.', '__')}).",
            pipeline=pipeline,
            field=field,
        )
    return str(value)
