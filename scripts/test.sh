#!/usr/bin/env bash
# Run the test suite with the services it needs. Called by `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

export DO_NOT_TRACK=1 DBT_SEND_ANONYMOUS_USAGE_STATS=False RUNTIME__DLTHUB_TELEMETRY=false
export PYTHONDONTWRITEBYTECODE=1

# PostgreSQL, an S3 API server and a Kafka broker on 127.0.0.1, stopped on exit. With the servers
# started here, a test that cannot reach one fails instead of skipping.
services_dir=$(mktemp -d /tmp/mocra-services.XXXXXX)
trap 'scripts/services.sh stop "$services_dir"; rm -rf "$services_dir"' EXIT
service_env=$(scripts/services.sh start "$services_dir")
eval "$service_env"
export MOCRA_REQUIRE_SERVICES=1

.venv/bin/pytest "$@"
