#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that authenticates nodes.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/register-nodes.sh CONNECTION PUBLIC_KEY...

Runs `flwr supernode register PUBLIC_KEY CONNECTION` for each key, e.g.
  deploy/register-nodes.sh fedsem deploy/keys/*.pub
CONNECTION is an entry in $FLWR_HOME/config.toml (deploy/add-connection.sh).
Only registered nodes may connect; list them with `flwr supernode ls CONNECTION`.
EOF
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
(($# >= 2)) || { usage >&2; exit 2; }
command -v flwr >/dev/null || { echo "error: flwr not found on PATH" >&2; exit 1; }
connection="$1"
shift
for key in "$@"; do
    [[ -f "$key" ]] || { echo "error: public key '$key' does not exist" >&2; exit 1; }
    echo "registering $key"
    flwr supernode register "$key" "$connection"
done
