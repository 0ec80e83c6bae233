#!/usr/bin/env bash
# Start a Flower SuperLink that other machines reach only through a Fleet-only proxy.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/start-superlink.sh [options]

Default layout (TLS, SuperNode authentication, proxy):
  flower-superlink  127.0.0.1:LOCAL_PORT  Fleet, Control and Runtime API (TLS,
                                          registered node keys only); loopback only
  flower-superexec  (no port)             starts the ServerApp processes; proves
                                          itself to the Runtime API with a secret
  nginx             HOST:PORT             TLS; forwards POST /v1/fleet/* to the
                                          SuperLink, answers 404 to everything else
Other machines reach only HOST:PORT, and there only the Fleet API, so only
registered SuperNodes get anything done. The operator submits runs and registers
nodes over the Control API on this machine (connection 127.0.0.1:LOCAL_PORT) or
through an SSH tunnel to it. Processes run in the background (PID files and logs
in $FEDSEM_DEPLOY_DIR, default ~/.fedsem/deploy); the script returns once all
listen. Runtime dependency installation is disabled: the ServerApp runs with this
environment's packages.

Options:
  --certs DIR        ca.crt, server.pem, server.key (deploy/make-certs.sh);
                     default: deploy/certificates
  --host HOST        address the proxy listens on (default 0.0.0.0: other machines)
  --port PORT        port the proxy listens on, the one to open (default 8000)
  --local-port PORT  loopback port of the SuperLink itself (default 9093)
  --superexec-secret FILE
                     SuperExec shared secret; default: $FEDSEM_DEPLOY_DIR/NAME.secret,
                     made on first start (32 random bytes, hex, mode 600)
  --database FILE    SuperLink state (runs, registered nodes) survives restarts in
                     FILE; default: $FEDSEM_DEPLOY_DIR/NAME.db; 'memory' keeps it in
                     memory only (nodes must be registered again after a restart)
  --name NAME        name of the PID/log files (default superlink); the other
                     processes are NAME-superexec and NAME-proxy
  --foreground       run all in the foreground (systemd, containers); exits when
                     any of them exits, after stopping the others
  -h, --help         this help

Weaker layouts, each announced with a warning of what it opens:
  --no-proxy         flower-superlink itself on HOST:PORT (TLS, node auth): anyone
                     who reaches the port and holds ca.crt can use the Control API
                     (submit runs that execute here, register node keys)
  --insecure         no TLS, no node auth, no proxy (a first try on a trusted
                     network): anyone who reaches HOST:PORT can do anything
  --no-auth          accept any SuperNode (no --enable-supernode-auth)
EOF
}

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

certs="deploy/certificates"
insecure=0
proxy=1
auth=1
host="0.0.0.0"
port=8000
local_port=9093
secret=""
database=""
name="superlink"
foreground=0
while (($#)); do
    case "$1" in
        --certs) certs="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        --no-proxy) proxy=0; shift ;;
        --no-auth) auth=0; shift ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --local-port) local_port="$2"; shift 2 ;;
        --superexec-secret) secret="$2"; shift 2 ;;
        --database) database="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --foreground) foreground=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
((insecure)) && { proxy=0; auth=0; }  # Flower authenticates nodes only over TLS

need_cmd flower-superlink
need_cmd flower-superexec
need_cmd flwr-serverapp  # the SuperExec starts the ServerApp with it
if ((proxy)) && ! command -v nginx >/dev/null; then
    die "nginx not found on PATH (it is the proxy in front of the SuperLink); install it (Debian: apt-get install nginx)"
fi
mkdir -p "$RUN_DIR"
database="${database:-$RUN_DIR/$name.db}"
[[ "$database" == memory ]] && database=":flwr-in-memory:"  # Flower's in-memory state

# Where flower-superlink itself listens: loopback behind the proxy, else HOST:PORT.
if ((proxy)); then
    link_host=127.0.0.1
    link_port="$local_port"
else
    link_host="$host"
    link_port="$port"
fi
# The SuperExec dials the Runtime API on loopback (a bind-all address is not dialable).
link_addr="$link_host:$link_port"
[[ "$link_host" == 0.0.0.0 ]] && link_addr="127.0.0.1:$link_port"

# The SuperExec's shared secret: the Runtime API hands ServerApp tasks only to
# callers that sign with it. Flower checks it only with --isolation process, so the
# SuperLink does not start its own SuperExec; we start one with the secret.
secret="${secret:-$RUN_DIR/$name.secret}"
if [[ ! -s "$secret" ]]; then
    command -v openssl >/dev/null || die "openssl not found (needed for $secret)"
    (umask 077 && openssl rand -hex 32 | tr -d '\n' >"$secret")
fi
secret="$(abs_path "$secret")"

link_args=(--host "$link_host" --port "$link_port" --database "$database"
    --isolation process --superexec-auth-secret-file "$secret"
    --disable-runtime-dependency-installation)
exec_args=(--runtime-api-address "$link_addr" --superexec-auth-secret-file "$secret")
if ((insecure)); then
    link_args+=(--insecure)
    exec_args+=(--insecure)
else
    for f in ca.crt server.pem server.key; do need_file "$certs/$f" "certificate file"; done
    ca="$(abs_path "$certs/ca.crt")"
    cert="$(abs_path "$certs/server.pem")"
    key="$(abs_path "$certs/server.key")"
    link_args+=(--ssl-ca-certfile "$ca" --ssl-certfile "$cert" --ssl-keyfile "$key")
    exec_args+=(--root-certificates "$ca")
fi
((auth)) && link_args+=(--enable-supernode-auth)

warn_open() {
    # Loud, on stderr: what a weaker layout lets other machines do.
    {
        echo "################################################################"
        echo "WARNING: $1"
        shift
        for line in "$@"; do echo "  - $line"; done
        echo "################################################################"
    } >&2
}
if ((insecure)); then
    warn_open "--insecure: $host:$port is open to anyone who reaches it, unencrypted:" \
        "any machine can join as a SuperNode and receive the run's messages" \
        "any machine can submit runs (flwr run); their ServerApp runs HERE as user $(id -un)" \
        "any machine can list, stop and read the logs of every run" \
        "everything crosses the network in clear text" \
        "use it for a first try on a trusted network only"
elif ((!proxy)); then
    warn_open "--no-proxy: the Control and Runtime APIs listen on $host:$port too:" \
        "anyone who reaches the port with ca.crt (every node has it) can submit runs;" \
        "their ServerApp runs HERE as user $(id -un)" \
        "they can register their own node keys, list/stop runs and read all run logs"
fi
if ((!auth && !insecure)); then
    warn_open "--no-auth: any SuperNode that reaches the Fleet API is accepted"
fi

proxy_conf="$RUN_DIR/$name-proxy.conf"
nginx_args=(-e stderr -p "$RUN_DIR" -c "$proxy_conf" -g "daemon off;")
if ((proxy)); then
    # Fill in the template; our own nginx instance, nothing of the system's one.
    mkdir -p "$RUN_DIR/$name-proxy.tmp"
    sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@NAME@|$name|g" -e "s|@HOST@|$host|g" \
        -e "s|@PORT@|$port|g" -e "s|@LOCAL_PORT@|$local_port|g" -e "s|@CERT@|$cert|g" \
        -e "s|@KEY@|$key|g" -e "s|@CA@|$ca|g" "$here/superlink-proxy.conf" >"$proxy_conf"
    nginx "${nginx_args[@]}" -t -q || die "nginx refused $proxy_conf"
fi

# The same switch for the ServerApp processes the SuperExec starts.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

wait_listening() {
    # wait_listening HOST PORT SECONDS: until something accepts TCP connections there.
    local waited=0
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        ((waited++ < $3)) || return 1
        sleep 1
    done
}

if ((foreground)); then
    # All three as children; when one ends, stop the others and exit non-zero, so
    # that systemd or the container engine restarts the whole SuperLink.
    pids=()
    stop_children() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
    trap 'stop_children; wait; exit 143' TERM INT
    flower-superlink "${link_args[@]}" &
    pids+=($!)
    wait_listening "${link_addr%:*}" "$link_port" 60 || { stop_children; die "SuperLink did not listen"; }
    flower-superexec "${exec_args[@]}" --parent-pid "${pids[0]}" &
    pids+=($!)
    if ((proxy)); then
        nginx "${nginx_args[@]}" &
        pids+=($!)
    fi
    status=0
    wait -n "${pids[@]}" || status=$?
    echo "a SuperLink process ended (status $status); stopping the others" >&2
    stop_children
    wait
    exit $((status == 0 ? 1 : status))
fi

# If a later process fails to start, stop the ones already running: all or nothing.
started=()
stop_started() {
    local rc=$?
    if ((rc != 0 && ${#started[@]})); then
        "$here/stop.sh" "${started[@]}" >&2 || true
    fi
}
trap stop_started EXIT
start_background "$name" "Uvicorn running on" 60 flower-superlink "${link_args[@]}"
started+=("$name")
start_background "$name-superexec" "Starting Flower SuperExec" 30 \
    flower-superexec "${exec_args[@]}" --parent-pid "$(cat "$RUN_DIR/$name.pid")"
started+=("$name-superexec")
if ((proxy)); then
    start_background "$name-proxy" "start worker process" 30 nginx "${nginx_args[@]}"
    echo "other machines: https://$host:$port (Fleet API only)"
    echo "operator (flwr run/ls/log, supernode register) on this machine: 127.0.0.1:$local_port"
else
    echo "SuperNodes and flwr: $host:$port"
fi
