#!/usr/bin/env bash
# A local 3-node pgbaton cluster on loopback: one etcd, three PostgreSQL 15 servers each with
# its `pgbaton agent`, and HAProxy in front. The work is done by `pgbaton-dev demo`
# (integration-tests/src/demo.rs), on the test harness's library; this script installs what
# is missing and builds.
#
#   scripts/demo.sh up     install missing packages (as root), build, start, wait healthy
#   scripts/demo.sh down   stop everything `up` started and remove the demo directory
#   scripts/demo.sh status show the pids and the cluster (pgbaton list)
#
# Ports (127.0.0.1 only; chosen to avoid the packaged services on 2379/5432/8008):
#   etcd 12379 (peer 12380) | PostgreSQL 5433-5435 | agents' REST API 8009-8011
#   HAProxy 5000 (primary, via GET /primary), 5001 (replicas, via GET /replica), 7000 (stats)
# Everything lives in $PGBATON_DEMO_DIR (default: <repo>/.demo): configs, data, logs, pids.
# As root, agents (and so PostgreSQL) run as the `postgres` user. PGBATON_DEMO_TIMEOUT: the
# seconds `up` waits for a healthy cluster (180); PGBATON_PG_BIN_DIR: PostgreSQL's binaries.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
export PGBATON_DEMO_DIR=${PGBATON_DEMO_DIR:-$REPO/.demo}
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    up | down | status) ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac

if [[ $1 == up ]]; then
    if ((EUID == 0)); then
        "$REPO/scripts/install-deps.sh"
    else
        "$REPO/scripts/install-deps.sh" --check ||
            die "missing system packages; run as root (sudo make demo) or scripts/install-deps.sh as root"
    fi
fi

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
target=${CARGO_TARGET_DIR:-}
if [[ -z $target ]]; then
    target=$(cd "$REPO" && cargo metadata --no-deps --format-version 1 |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
dev=$target/debug/pgbaton-dev
# `down` and `status` use what `up` built (a tree that does not compile must not keep a
# running demo from being stopped).
if [[ $1 == up || ! -x $dev ]]; then
    printf 'demo: building pgbaton, pgbaton-fence-guard and pgbaton-dev (dev profile)\n'
    (cd "$REPO" && cargo build -q -p baton-cli --bin pgbaton --bin pgbaton-fence-guard -p baton-integration-tests --bin pgbaton-dev)
fi
# pgbaton-dev runs the pgbaton beside it ($PGBATON_BIN overrides).
exec "$dev" demo "$1"
