#!/usr/bin/env bash
# Stop SuperNodes and SuperLinks started by the deploy/start-*.sh scripts.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/stop.sh [NAME...]

Stops the processes whose PID files are in $FEDSEM_DEPLOY_DIR (default
~/.fedsem/deploy): the named ones (e.g. superlink, supernode-9094), or all of
them, SuperNodes signalled first. Each process gets SIGTERM together with the
ClientApp/ServerApp processes it started, then SIGKILL after 15 s.
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
pids=()
for n in "${names[@]}"; do
    pid_file="$RUN_DIR/$n.pid"
    if ! is_running "$pid_file"; then
        echo "$n: not running"
        rm -f "$pid_file"
        continue
    fi
    pid="$(cat "$pid_file")"
    # The start scripts run each process in its own session: its PID is the group id.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    pids+=("$n:$pid")
done
for entry in "${pids[@]}"; do
    n="${entry%%:*}"
    pid="${entry#*:}"
    for _ in $(seq 15); do
        group_alive "$pid" || break
        sleep 1
    done
    if group_alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
        echo "$n: killed (PID $pid)"
    else
        echo "$n: stopped (PID $pid)"
    fi
    rm -f "$RUN_DIR/$n.pid"
done
