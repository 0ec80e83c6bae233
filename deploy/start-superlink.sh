#!/usr/bin/env bash
# Start a Flower SuperLink with TLS and SuperNode authentication (the defaults).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/start-superlink.sh [options]

Starts `flower-superlink` in the background (PID file and log in
$FEDSEM_DEPLOY_DIR, default ~/.fedsem/deploy) and waits until it listens. One
port serves the Fleet API (SuperNodes), the Control API (`flwr`) and the
ServerApp runtime. The ServerApp runs with this environment's packages: runtime
dependency installation is disabled.

Options:
  --certs DIR       folder with ca.crt, server.pem, server.key (deploy/make-certs.sh);
                    default: deploy/certificates
  --insecure        no TLS (a first try on a trusted network only); implies
                    --no-auth, since Flower authenticates nodes only over TLS
  --no-auth         accept any SuperNode (no --enable-supernode-auth)
  --host HOST       address to bind (default 0.0.0.0: reachable from other machines)
  --port PORT       port (default 8000)
  --database FILE   SuperLink state (runs, registered nodes) survives restarts in
                    FILE; default: $FEDSEM_DEPLOY_DIR/NAME.db; 'memory' keeps it in
                    memory only (nodes must be registered again after a restart)
  --name NAME       name of the PID/log files (default superlink)
  --foreground      run in the foreground (systemd, containers)
  -h, --help        this help
EOF
}

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

certs="deploy/certificates"
insecure=0
auth=1
host="0.0.0.0"
port=8000
database=""
name="superlink"
foreground=0
while (($#)); do
    case "$1" in
        --certs) certs="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        --no-auth) auth=0; shift ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --database) database="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --foreground) foreground=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

need_cmd flower-superlink
need_cmd flwr-serverapp  # the SuperLink starts the ServerApp with it
mkdir -p "$RUN_DIR"
database="${database:-$RUN_DIR/$name.db}"
[[ "$database" == memory ]] && database=":flwr-in-memory:"  # Flower's in-memory state

args=(--host "$host" --port "$port" --database "$database"
    --disable-runtime-dependency-installation)
if ((insecure)); then
    args+=(--insecure)
    auth=0
else
    for f in ca.crt server.pem server.key; do need_file "$certs/$f" "certificate file"; done
    args+=(--ssl-ca-certfile "$(abs_path "$certs/ca.crt")"
        --ssl-certfile "$(abs_path "$certs/server.pem")"
        --ssl-keyfile "$(abs_path "$certs/server.key")")
fi
((auth)) && args+=(--enable-supernode-auth)

# The same switch for the ServerApp processes the SuperLink starts.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
if ((foreground)); then
    exec flower-superlink "${args[@]}"
fi
start_background "$name" "Uvicorn running on" 60 flower-superlink "${args[@]}"
