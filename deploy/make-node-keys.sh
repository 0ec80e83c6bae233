#!/usr/bin/env bash
# Create one ECDSA P-384 key pair per SuperNode for node authentication.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/make-node-keys.sh [-o DIR] NODE_NAME...

Writes DIR/NODE_NAME (private key) and DIR/NODE_NAME.pub (public key) for each
node (default DIR: deploy/keys). Existing keys are kept, never overwritten.

The private key stays on its SuperNode (--auth-supernode-private-key); the public
key is registered with the SuperLink: deploy/register-nodes.sh CONNECTION DIR/*.pub
EOF
}

out_dir="deploy/keys"
nodes=()
while (($#)); do
    case "$1" in
        -o | --out) out_dir="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) nodes+=("$1"); shift ;;
    esac
done
((${#nodes[@]})) || { usage >&2; exit 2; }
command -v ssh-keygen >/dev/null || { echo "error: ssh-keygen not found" >&2; exit 1; }

mkdir -p "$out_dir"
for node in "${nodes[@]}"; do
    key="$out_dir/$node"
    if [[ -f "$key" ]]; then
        echo "kept existing key $key"
        continue
    fi
    # Flower's node authentication expects ECDSA keys in OpenSSH format.
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsem-$node" -f "$key"
    echo "wrote $key and $key.pub"
done
