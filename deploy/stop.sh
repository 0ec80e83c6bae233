#!/usr/bin/env bash
# Stop SuperNodes and SuperLinks started by the deploy/start-*.sh scripts.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/stop.sh [NAME...]

Stops the processes whose PID files are in $FEDSEM_DEPLOY_DIR (default
~/.fedsem/deploy): the named ones (e.g. superlink, supernode-9094), or all of
them, SuperNodes signalled first. Each process gets SIGTERM together with the
ClientApp/ServerApp processes it started (its process group and all its
descendants), then SIGKILL after 15 s.
EOF
}

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac

names=("$@")
if ((${#names[@]} == 0)); then
    # SuperNodes first, so they do not log reconnect errors against a stopped SuperLink.
    for f in "$RUN_DIR"/*.pid; do
        [[ -e "$f" ]] || continue
        n="$(basename "$f" .pid)"
        [[ "$n" == superlink* ]] || names+=("$n")
    done
    for f in "$RUN_DIR"/superlink*.pid; do
        [[ -e "$f" ]] && names+=("$(basename "$f" .pid)")
    done
fi
((${#names[@]})) || { echo "nothing to stop in $RUN_DIR"; exit 0; }

# SIGTERM to all first, then wait for all: shutting down takes a few seconds each.
# Each process is signalled with its process group (the start scripts run it in its own
# session) and every descendant found before signalling: the SuperLink's SuperExec and
# ServerApps live in a session of their own.
entries=()
for n in "${names[@]}"; do
    pid_file="$RUN_DIR/$n.pid"
    if ! is_running "$pid_file"; then
        echo "$n: not running"
        rm -f "$pid_file"
        continue
    fi
    pid="$(cat "$pid_file")"
    tree="$(descendants "$pid" | tr '\n' ' ')"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [[ -n "${tree// /}" ]] && kill -TERM $tree 2>/dev/null || true
    entries+=("$n:$pid:$tree")
done
for entry in "${entries[@]}"; do
    IFS=: read -r n pid tree <<<"$entry"
    for _ in $(seq 15); do
        # shellcheck disable=SC2086
        group_alive "$pid" || any_alive $tree || break
        sleep 1
    done
    # shellcheck disable=SC2086
    if group_alive "$pid" || any_alive $tree; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        [[ -n "${tree// /}" ]] && kill -KILL $tree 2>/dev/null || true
        echo "$n: killed (PID $pid and its children)"
    else
        echo "$n: stopped (PID $pid)"
    fi
    rm -f "$RUN_DIR/$n.pid"
done
