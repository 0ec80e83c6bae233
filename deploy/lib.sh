# Shared helpers of the deploy/*.sh scripts (sourced, not run).
# shellcheck shell=bash

# PID files and logs of the processes the start scripts launch.
RUN_DIR="${FEDSEM_DEPLOY_DIR:-$HOME/.fedsem/deploy}"

die() {
    echo "error: $*" >&2
    exit 1
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found on PATH; activate the project's environment (. .venv/bin/activate)"
}

need_file() {
    [[ -f "$1" ]] || die "$2 '$1' does not exist"
}

abs_path() {
    # Absolute path of an existing file, so PID files and config entries stay valid
    # when the process runs from another directory.
    (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")")
}

is_running() {
    # Whether the PID in file $1 is alive; a zombie (killed, not yet reaped) is not.
    local state
    [[ -f "$1" ]] || return 1
    state="$(ps -o stat= -p "$(cat "$1")" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

group_alive() {
    # Whether process group $1 still has a live (non-zombie) member.
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

descendants() {
    # PIDs of all descendants of PID $1. The SuperLink starts its SuperExec in a new
    # session (and that one the ServerApps), so its process group does not hold them all.
    ps -eo pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            queue = kids[root]
            while (split(queue, todo) > 0) {
                queue = ""
                for (i in todo) { print todo[i]; queue = queue kids[todo[i]] }
            }
        }'
}

any_alive() {
    # Whether any of the PIDs $@ is alive (zombies do not count).
    (($#)) || return 1
    ps -o stat= -p "$(IFS=,; echo "$*")" 2>/dev/null | grep -qv '^Z'
}

start_background() {
    # start_background NAME READY_PATTERN WAIT_SECONDS CMD...
    # Start CMD in its own session (so stop.sh can end it with all its children),
    # record its PID, then wait until READY_PATTERN shows up in its log.
    local name="$1" ready="$2" wait_s="$3"
    shift 3
    local pid_file="$RUN_DIR/$name.pid" log_file="$RUN_DIR/$name.log"
    mkdir -p "$RUN_DIR"
    if is_running "$pid_file"; then
        die "$name already runs (PID $(cat "$pid_file")); stop it with deploy/stop.sh $name"
    fi
    setsid nohup "$@" >"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    local waited=0
    while ! grep -q -- "$ready" "$log_file" 2>/dev/null; do
        if ! is_running "$pid_file"; then
            tail -n 20 "$log_file" >&2
            # Its children may outlive it (a SuperNode starts its SuperExec first).
            kill -KILL -- "-$(cat "$pid_file")" 2>/dev/null || true
            rm -f "$pid_file"
            die "$name exited during start-up; full log: $log_file"
        fi
        if ((waited >= wait_s)); then
            tail -n 20 "$log_file" >&2
            die "$name not ready after ${wait_s}s (still running, PID $(cat "$pid_file")); log: $log_file"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "$name started: PID $(cat "$pid_file"), log $log_file"
}
