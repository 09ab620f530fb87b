#!/usr/bin/env bash
# End-to-end test of the docker-compose demo (docker/): build the images (Docker's cache keeps
# this short once built), start the project under a unique name with ports Docker chooses,
# wait until exactly one agent answers 200 on /primary and HAProxy's read-write port takes
# writes, write a row, SIGKILL the primary's container (`docker kill`), and wait until
# HAProxy's read-write port reaches a *different*, writable node that still has the row.
# Everything is torn down on exit (containers, network, volumes); on failure the containers'
# logs are printed first.
#
# Without a Docker engine (or without docker compose / docker-compose) it prints why it is
# skipped and exits 0, unless PGBATON_REQUIRE_DOCKER=1 (then it fails).
# The node image gets ${CARGO_TARGET_DIR:-target}/debug/pgbaton as it is (`make docker-test`
# and `make test` build it first); PGBATON_BIN picks another binary.
# Deadlines (seconds): PGBATON_DOCKER_TEST_UP_TIMEOUT (300), PGBATON_DOCKER_TEST_FAILOVER_TIMEOUT (120).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
UP_TIMEOUT=${PGBATON_DOCKER_TEST_UP_TIMEOUT:-300}
FAILOVER_TIMEOUT=${PGBATON_DOCKER_TEST_FAILOVER_TIMEOUT:-120}

# fd 3: the real stderr, also from inside poll (which keeps a check's stderr as the reason).
exec 3>&2
note() { printf 'docker-test: %s\n' "$*" >&3; }
fail() { printf 'docker-test: FAILED: %s\n' "$*" >&3; exit 1; }
unavailable() {
    if [[ ${PGBATON_REQUIRE_DOCKER:-} == 1 ]]; then
        fail "$1 (PGBATON_REQUIRE_DOCKER=1)"
    fi
    note "skipped: $1"
    exit 0
}

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
    unavailable "no Docker engine (docker info failed)"
fi
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ||
    unavailable "neither 'docker compose' nor 'docker-compose' is installed"
command -v psql >/dev/null || fail "psql (PostgreSQL client) not found on the host"

# The binary `make build` made (make test builds first); without one, docker-demo.sh builds it.
if [[ -z ${PGBATON_BIN:-} ]]; then
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$REPO/$target
    if [[ -x $target/debug/pgbaton ]]; then
        export PGBATON_BIN=$target/debug/pgbaton
    fi
fi

# A project of our own, on ports Docker picks: runs beside `make docker-demo` and `make demo`.
export PGBATON_DOCKER_PROJECT=pgbaton-test-$$
export PGBATON_DOCKER_BIND=127.0.0.1
export PGBATON_DOCKER_PRIMARY_PORT=0 PGBATON_DOCKER_REPLICA_PORT=0 PGBATON_DOCKER_STATS_PORT=0
# shellcheck source=scripts/docker-demo.sh
source "$REPO/scripts/docker-demo.sh"

START=$SECONDS
LOGDIR=$(mktemp -d /tmp/pgbaton-docker-test.XXXXXX)
STARTED=false

finish() {
    local rc=$?
    set +e
    if $STARTED; then
        if ((rc != 0)); then
            note "containers' logs:"
            compose logs --no-color --timestamps >&2
            compose ps >&2
        fi
        note "tearing down project $PROJECT"
        compose down --volumes --remove-orphans --timeout 10 >"$LOGDIR/down.log" 2>&1 ||
            cat "$LOGDIR/down.log" >&2
    fi
    rm -rf "$LOGDIR"
    if ((rc == 0)); then
        note "PASSED in $((SECONDS - START)) s"
    else
        note "FAILED after $((SECONDS - START)) s"
    fi
    exit "$rc"
}
trap finish EXIT

now_ms() { date +%s%3N; }
secs_since() { # start in ms
    local d=$(($(now_ms) - $1))
    printf '%d.%03d' $((d / 1000)) $((d % 1000))
}

# Poll "$@" until it succeeds or `timeout` seconds have passed; the last failure's stderr is
# kept in $LOGDIR/why.
poll() { # timeout, description, command...
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" 2>"$LOGDIR/why"; do
        ((SECONDS < deadline)) || fail "$what: not within $timeout s ($(cat "$LOGDIR/why"))"
        sleep 0.5
    done
}

# SQL on one node's PostgreSQL over its Unix socket (peer authentication as postgres).
sql_node() { # service, sql
    docker exec "$(cid "$1")" psql -X -q -At -h /var/run/postgresql -U postgres -d postgres \
        -c "$2" 2>/dev/null
}

# The container's addresses, space-separated (a node is on the compose network and on `wan`).
ip_of() { # container
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" |
        sed 's/ *$//'
}

t=$SECONDS
note "building images"
build
note "images ready in $((SECONDS - t)) s"

note "starting project $PROJECT"
STARTED=true
t=$(now_ms)
compose up -d >"$LOGDIR/up.log" 2>&1 || { cat "$LOGDIR/up.log" >&2; fail "compose up"; }
load_cids
PRIMARY_PORT=$(published_port 5000)
[[ -n $PRIMARY_PORT ]] || fail "HAProxy's port 5000 is not published"
note "HAProxy read-write port: 127.0.0.1:$PRIMARY_PORT"

healthy() {
    local rc=0
    check_healthy >"$LOGDIR/leader" 2>"$LOGDIR/healthy" || rc=$?
    ((rc != 2)) || fail "$(cat "$LOGDIR/healthy")"
    cat "$LOGDIR/healthy" >&2
    return "$rc"
}
poll "$UP_TIMEOUT" "one primary, two replicas, HAProxy writable" healthy
OLD=$(cat "$LOGDIR/leader")
note "healthy after $(secs_since "$t") s: primary $OLD"

# Exactly one 200 on /primary (check_healthy fails on two); say which.
probe "$(cid haproxy)" /primary | sed 's/^/docker-test:   \/primary /' >&2

TOKEN="written-before-failover-$$-$RANDOM"
psql_5000() { # sql
    PGPASSWORD=$SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=3 psql -X -q -At -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -c "$1"
}
write_row() {
    psql_5000 "CREATE TABLE IF NOT EXISTS docker_test (id int PRIMARY KEY, note text);
               INSERT INTO docker_test VALUES (1, '$TOKEN') ON CONFLICT (id) DO NOTHING" >/dev/null
}
poll 30 "write through HAProxy :5000" write_row
[[ $(psql_5000 "SELECT note FROM docker_test WHERE id = 1") == "$TOKEN" ]] ||
    fail "the row written through :5000 does not read back"
note "wrote a row through HAProxy :5000"

# Replication is asynchronous: kill only once both replicas have the row, so losing it would
# be pgbaton's fault and not the configuration's.
replicated() {
    local n
    for n in "${NODES[@]}"; do
        [[ $n == "$OLD" ]] && continue
        [[ $(sql_node "$n" "SELECT note FROM docker_test WHERE id = 1") == "$TOKEN" ]] ||
            { echo "$n has not replayed the row yet" >&2; return 1; }
    done
}
poll 60 "row replicated to both replicas" replicated

OLD_CID=$(cid "$OLD")
OLD_IP=$(ip_of "$OLD_CID")
note "docker kill $OLD ($OLD_IP)"
t=$(now_ms)
docker kill "$OLD_CID" >/dev/null

# Through HAProxy :5000: a primary, not the old one, with the row.
failed_over() {
    local out
    out=$(psql_5000 "SELECT pg_is_in_recovery(), host(inet_server_addr()),
                     (SELECT note FROM docker_test WHERE id = 1)" 2>&1) ||
        { echo "psql: ${out//$'\n'/ }" >&2; return 1; }
    IFS='|' read -r recovery addr row <<<"$out"
    [[ " $OLD_IP " != *" $addr "* ]] || { echo ":5000 still reaches the old primary $OLD" >&2; return 1; }
    [[ $recovery == f ]] || { echo ":5000 reaches $addr, in recovery" >&2; return 1; }
    [[ $row == "$TOKEN" ]] || fail "new primary $addr does not have the row written before the failover (got '$row')"
    echo "$addr" >"$LOGDIR/new-ip"
}
poll "$FAILOVER_TIMEOUT" "HAProxy :5000 reaching a new writable primary" failed_over
FAILOVER=$(secs_since "$t")
NEW_IP=$(cat "$LOGDIR/new-ip")
psql_5000 "INSERT INTO docker_test VALUES (2, 'written after failover')" >/dev/null ||
    fail "insert through :5000 after the failover"

NEW=""
for n in "${NODES[@]}"; do
    [[ $n == "$OLD" ]] && continue
    [[ " $(ip_of "$(cid "$n")") " == *" $NEW_IP "* ]] && NEW=$n
done
[[ -n $NEW ]] || fail "$NEW_IP is none of the surviving nodes"
leaders=$(probe "$(cid haproxy)" /primary | awk '$2 == 200 { print $1 }' | tr '\n' ' ')
[[ $leaders == "$NEW " ]] || fail "agents answering 200 on /primary: '${leaders}', expected $NEW"
note "failover $OLD -> $NEW: HAProxy :5000 writable on the new primary $FAILOVER s after the kill; row kept"
