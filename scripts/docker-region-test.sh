#!/usr/bin/env bash
# End-to-end test of the docker-compose `region` profile (docker/README.md, "Two regions"):
#
#   1. both regions come up: region A a primary and two replicas; region B, bootstrapped as a
#      standby cluster of region A, a standby leader streaming from region A (over the network
#      `wan`, through region A's HAProxy) and two replicas streaming from it; a row written
#      through region A's HAProxy arrives on every node of region B;
#   2. a writer inserts one row at a time, each through region A's HAProxy :5000 or region B's
#      (whichever takes it; one psql per row), and `pgbaton region-switchover` moves the
#      primary to region B under it: every row the writer saw acknowledged is on region B's
#      new primary (rows lost = 0), and the writer gets through region B's HAProxy;
#   3. the old region follows the new: region A becomes a standby cluster of region B (a
#      standby leader streaming from region B, two replicas) and has every row.
#
# Prints the figures: the write gap (longest time between two acknowledged rows around the
# switchover), how long the command took, acknowledged rows and rows lost, and the load
# average. Everything is torn down on exit (logs printed first on failure). Skipped (exit 0)
# without a Docker engine unless PGBATON_REQUIRE_DOCKER=1. Needs psql on the host.
# Binary: ${CARGO_TARGET_DIR:-target}/debug/pgbaton (PGBATON_BIN overrides).
# Deadlines (seconds): PGBATON_DOCKER_TEST_UP_TIMEOUT (300), PGBATON_DOCKER_TEST_SWITCH_TIMEOUT (180).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
UP_TIMEOUT=${PGBATON_DOCKER_TEST_UP_TIMEOUT:-300}
SWITCH_TIMEOUT=${PGBATON_DOCKER_TEST_SWITCH_TIMEOUT:-180}

exec 3>&2
note() { printf 'docker-region-test: %s\n' "$*" >&3; }
fail() { printf 'docker-region-test: FAILED: %s\n' "$*" >&3; exit 1; }
unavailable() {
    [[ ${PGBATON_REQUIRE_DOCKER:-} == 1 ]] && fail "$1 (PGBATON_REQUIRE_DOCKER=1)"
    note "skipped: $1"
    exit 0
}

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
    unavailable "no Docker engine (docker info failed)"
fi
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ||
    unavailable "neither 'docker compose' nor 'docker-compose' is installed"
command -v psql >/dev/null || fail "psql (PostgreSQL client) not found on the host"

if [[ -z ${PGBATON_BIN:-} ]]; then
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$REPO/$target
    [[ -x $target/debug/pgbaton ]] && export PGBATON_BIN=$target/debug/pgbaton
fi

export PGBATON_DOCKER_PROJECT=pgbaton-region-test-$$
export PGBATON_DOCKER_BIND=127.0.0.1
export PGBATON_DOCKER_PRIMARY_PORT=0 PGBATON_DOCKER_REPLICA_PORT=0 PGBATON_DOCKER_STATS_PORT=0
export PGBATON_DOCKER_B_PRIMARY_PORT=0 PGBATON_DOCKER_B_REPLICA_PORT=0 PGBATON_DOCKER_B_STATS_PORT=0
# shellcheck source=scripts/docker-region.sh
source "$REPO/scripts/docker-region.sh"

START=$SECONDS
LOGDIR=$(mktemp -d /tmp/pgbaton-docker-region-test.XXXXXX)
STARTED=false
WRITER_PID=""

finish() {
    local rc=$?
    set +e
    [[ -n $WRITER_PID ]] && kill "$WRITER_PID" 2>/dev/null && wait "$WRITER_PID" 2>/dev/null
    if $STARTED; then
        if ((rc != 0)); then
            note "containers' logs:"
            compose logs --no-color --timestamps --tail=80 >&2
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

poll() { # timeout, description, command...
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >"$LOGDIR/out" 2>"$LOGDIR/why"; do
        ((SECONDS < deadline)) || fail "$what: not within $timeout s ($(cat "$LOGDIR/why"))"
        sleep 0.5
    done
    cat "$LOGDIR/out"
}

psql_port() { # port, sql
    PGPASSWORD=$SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=2 psql -X -q -At -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

# Every node in $2.. has at least $1 rows in region_test.
rows_on() { # count, nodes...
    local want=$1 n have
    shift
    for n in "$@"; do
        have=$(sql_node "$n" "SELECT count(*) FROM region_test") || have=none
        [[ $have =~ ^[0-9]+$ ]] && ((have >= want)) ||
            { echo "$n has $have of $want rows" >&2; return 1; }
    done
}

t=$SECONDS
note "building images"
build
note "images ready in $((SECONDS - t)) s"

note "starting project $PROJECT (profile region)"
STARTED=true
t=$SECONDS
compose up -d >"$LOGDIR/up.log" 2>&1 || { cat "$LOGDIR/up.log" >&2; fail "compose up"; }
PORT_A=$(published_port_of haproxy 5000)
PORT_B=$(published_port_of haproxy-b 5000)
[[ -n $PORT_A && -n $PORT_B ]] || fail "the HAProxies' ports 5000 are not published"
note "read-write ports: region A 127.0.0.1:$PORT_A, region B 127.0.0.1:$PORT_B"

# 1. Both regions up; region B streams from region A.
A_LEADER=$(poll "$UP_TIMEOUT" "region A: a primary and two replicas" \
    region_leader "$(cid haproxy)" /primary "${NODES_A[@]}")
note "region A healthy after $((SECONDS - t)) s: primary $A_LEADER"
poll 60 "a write through region A's HAProxy" \
    psql_port "$PORT_A" "CREATE TABLE IF NOT EXISTS region_test (id bigint PRIMARY KEY);
                         INSERT INTO region_test VALUES (0) ON CONFLICT DO NOTHING" >/dev/null
B_LEADER=$(poll "$UP_TIMEOUT" "region B: a standby leader streaming from region A, two replicas" \
    standby_region "$(cid haproxy-b)" "${NODES_B[@]}")
note "region B healthy after $((SECONDS - t)) s: standby leader $B_LEADER"
poll 60 "region A's row on every node of region B" rows_on 1 "${NODES_B[@]}"
psql_port "$PORT_B" "INSERT INTO region_test VALUES (-1)" >/dev/null 2>&1 &&
    fail "region B's HAProxy :5000 took a write while region B is a standby cluster"
note "region B streams from region A: row 0 on node-b1..3; region B's :5000 takes no writes"

# 2. The writer: one row per psql, through whichever region's HAProxy takes it (the last one
# that did first). Acknowledged rows: "id epoch_ms port" in $LOGDIR/acks.
writer() {
    local id=1 port=$PORT_A other
    while [[ ! -e $LOGDIR/stop ]]; do
        if psql_port "$port" "INSERT INTO region_test VALUES ($id)" >/dev/null 2>&1; then
            echo "$id $(now_ms) $port" >>"$LOGDIR/acks"
        else
            other=$PORT_A
            [[ $port == "$PORT_A" ]] && other=$PORT_B
            id=$((id + 1))
            if psql_port "$other" "INSERT INTO region_test VALUES ($id)" >/dev/null 2>&1; then
                echo "$id $(now_ms) $other" >>"$LOGDIR/acks"
                port=$other
            else
                sleep 0.05
            fi
        fi
        id=$((id + 1))
    done
}
: >"$LOGDIR/acks"
writer &
WRITER_PID=$!
acks_on() { # port, at least
    local n
    n=$(awk -v p="$1" '$3 == p' "$LOGDIR/acks" | wc -l)
    ((n >= $2)) || { echo "$n acknowledged rows through :$1" >&2; return 1; }
}
poll 60 "the writer committing through region A" acks_on "$PORT_A" 20 >/dev/null

note "pgbaton region-switchover (region A -> region B) under the writer"
T_REQ=$(now_ms)
region_switchover a >"$LOGDIR/switchover.out" 2>&1 ||
    { cat "$LOGDIR/switchover.out" >&2; fail "region-switchover failed"; }
T_DONE=$(now_ms)
sed 's/^/docker-region-test:   /' "$LOGDIR/switchover.out" >&2
grep -q "successfully promoted" "$LOGDIR/switchover.out" || fail "region-switchover did not promote"
poll "$SWITCH_TIMEOUT" "the writer committing through region B" acks_on "$PORT_B" 20 >/dev/null
touch "$LOGDIR/stop"
wait "$WRITER_PID"
WRITER_PID=""

B_PRIMARY=$(poll 60 "region B: a primary and two replicas" \
    region_leader "$(cid haproxy-b)" /primary "${NODES_B[@]}")
# Count every row: each acknowledged id must be on region B's new primary.
sort -n <(awk '{print $1}' "$LOGDIR/acks") >"$LOGDIR/acked"
sql_node "$B_PRIMARY" "SELECT id FROM region_test WHERE id > 0 ORDER BY id" | sort -n >"$LOGDIR/have"
ACKED=$(wc -l <"$LOGDIR/acked")
LOST=$(comm -23 "$LOGDIR/acked" "$LOGDIR/have" | wc -l)
HAVE=$(wc -l <"$LOGDIR/have")
ACKED_A=$(awk -v p="$PORT_A" '$3 == p' "$LOGDIR/acks" | wc -l)
ACKED_B=$(awk -v p="$PORT_B" '$3 == p' "$LOGDIR/acks" | wc -l)
# The write gap: the longest time between two consecutive acknowledged rows.
GAP_MS=$(awk 'NR > 1 { d = $2 - prev; if (d > max) max = d } { prev = $2 } END { print max + 0 }' \
    "$LOGDIR/acks")
((LOST == 0)) || fail "$LOST of $ACKED acknowledged rows are missing on region B's primary $B_PRIMARY: $(comm -23 "$LOGDIR/acked" "$LOGDIR/have" | head -n 10 | tr '\n' ' ')"
note "rows: $ACKED acknowledged ($ACKED_A through region A, $ACKED_B through region B), $HAVE on $B_PRIMARY, lost 0"

# 3. The old region follows the new.
A_STANDBY=$(poll "$SWITCH_TIMEOUT" "region A: a standby leader streaming from region B, two replicas" \
    standby_region "$(cid haproxy)" "${NODES_A[@]}")
TOTAL=$(sql_node "$B_PRIMARY" "SELECT count(*) FROM region_test")
poll 60 "every row on every node of both regions" rows_on "$TOTAL" "${NODES_A[@]}" "${NODES_B[@]}"
psql_port "$PORT_A" "INSERT INTO region_test VALUES (-2)" >/dev/null 2>&1 &&
    fail "region A's HAProxy :5000 took a write after the region switchover"
note "region A follows region B: standby leader $A_STANDBY, $TOTAL rows on node1..3 and node-b1..3"

note "FIGURES: region-switchover A -> B: write gap ${GAP_MS} ms; command $(((T_DONE - T_REQ)))" \
    "ms; acknowledged rows $ACKED, lost $LOST; load average $(cut -d' ' -f1-3 /proc/loadavg)" \
    "($(nproc) cores); $(date -u '+%Y-%m-%d %H:%M UTC')"
