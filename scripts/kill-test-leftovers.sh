#!/usr/bin/env bash
# Clean up after interrupted integration-test runs (Ctrl-C or a killed `cargo test` skip the
# harness's teardown). A harness test directory (${PGBATON_TEST_TMPDIR:-/tmp}/pgbaton-it-*)
# records the test process's pid in harness.pid; for every directory whose test process is
# gone, kill each process whose working directory is inside it (agents, PostgreSQL, etcd and
# HAProxy all run there) and, with --dirs, remove the directory. Directories of running tests
# and anything else (e.g. the demo in .demo/) are left alone.
set -euo pipefail

root=${PGBATON_TEST_TMPDIR:-/tmp}

# Network namespaces (pgbt-<pid>-<n>-<host>) and root-namespace links (pgbt<pid>-<n>) of the
# netns tests (integration-tests/src/netns.rs) whose test process is gone. Run again after the
# kills: a namespace lives on, unnamed, while a process runs in it.
remove_stale_networks() {
    command -v ip >/dev/null || return 0
    local ns link
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns =~ ^pgbt-([0-9]+)- ]] || continue
        [[ -e /proc/${BASH_REMATCH[1]} ]] && continue # its test is still running
        ip netns del "$ns" && echo "kill-test-leftovers: removed network namespace $ns"
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        [[ $link =~ ^pgbt([0-9]+)- ]] || continue
        [[ -e /proc/${BASH_REMATCH[1]} ]] && continue
        ip link del "$link" 2>/dev/null && echo "kill-test-leftovers: removed link $link"
    done
    return 0
}

stale=()
for d in "$root"/pgbaton-it-*; do
    [[ -d $d ]] || continue
    owner=$(cat "$d/harness.pid" 2>/dev/null || true)
    if [[ -n $owner ]] && owner_stat=$(cat "/proc/$owner/stat" 2>/dev/null); then
        owner_state=${owner_stat##*) }
        [[ ${owner_state:0:1} == Z ]] || continue # its test is still running
    fi
    stale+=("$d")
done
if ((${#stale[@]} == 0)); then
    remove_stale_networks
    echo "kill-test-leftovers: nothing to clean"
    exit 0
fi
# pid -> ppid of every process, to add descendants (PostgreSQL backends rewrite their
# command lines and, in containers, root may not read another user's cwd).
declare -A PPID_OF=()
for stat in /proc/[0-9]*/stat; do
    line=$({ cat "$stat"; } 2>/dev/null) || continue
    rest=${line##*) }
    read -r _state ppid _ <<<"$rest"
    pid=${stat#/proc/}
    PPID_OF[${pid%/stat}]=$ppid
done

for d in "${stale[@]}"; do
    declare -A victim=()
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        cwd=$(readlink "$proc/cwd" 2>/dev/null || true)
        cmdline=$({ tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null || true)
        if [[ $cwd == "$d" || $cwd == "$d"/* || $cmdline == *"$d/"* ]]; then
            victim[$pid]=1
        fi
    done
    # Add descendants until nothing changes.
    changed=1
    while ((changed)); do
        changed=0
        for pid in "${!PPID_OF[@]}"; do
            if [[ -z ${victim[$pid]:-} && -n ${victim[${PPID_OF[$pid]}]:-} ]]; then
                victim[$pid]=1
                changed=1
            fi
        done
    done
    pids=("${!victim[@]}")
    unset victim
    if ((${#pids[@]})); then
        echo "kill-test-leftovers: $d: killing ${pids[*]}"
        kill -STOP "${pids[@]}" 2>/dev/null || true
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if [[ ${1:-} == --dirs ]]; then
        rm -rf -- "$d"
        echo "kill-test-leftovers: removed $d"
    fi
done
remove_stale_networks
