#!/usr/bin/env bash
# Write a SuperLink connection entry into $FLWR_HOME/config.toml for `flwr`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/add-connection.sh NAME HOST:PORT (--root-certificates FILE | --insecure)

Adds (or replaces) [superlink.NAME] in $FLWR_HOME/config.toml (default
~/.flwr/config.toml), so that these work:
  flwr run . NAME --stream
  flwr supernode register deploy/keys/node0.pub NAME
  flwr log RUN_ID NAME
FILE is the CA certificate that signed the SuperLink's certificate (ca.crt).
EOF
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
(($# >= 3)) || { usage >&2; exit 2; }
name="$1"
address="$2"
shift 2
entry=""
case "$1" in
    --insecure) entry="insecure = true" ;;
    --root-certificates)
        [[ -f "${2:-}" ]] || { echo "error: certificate '${2:-}' does not exist" >&2; exit 1; }
        # Absolute: flwr resolves it from wherever it is run.
        cert="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
        entry="root-certificates = \"$cert\""
        ;;
    *) usage >&2; exit 2 ;;
esac

flwr_home="${FLWR_HOME:-$HOME/.flwr}"
config="$flwr_home/config.toml"
mkdir -p "$flwr_home"
touch "$config"
# Drop an existing [superlink.NAME] table (up to the next table), then append ours.
awk -v header="[superlink.$name]" '
    /^\[/ { skip = ($0 == header) }
    !skip { print }
' "$config" >"$config.tmp"
mv "$config.tmp" "$config"
printf '\n[superlink.%s]\naddress = "%s"\n%s\n' "$name" "$address" "$entry" >>"$config"
echo "connection '$name' -> $address written to $config"
