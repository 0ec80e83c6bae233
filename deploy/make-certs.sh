#!/usr/bin/env bash
# Create a private CA and a SuperLink server certificate signed by it.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/make-certs.sh [-o DIR] [--days N] [--force] NAME_OR_IP...

Writes into DIR (default: deploy/certificates):
  ca.crt, ca.key          a private certificate authority
  server.pem, server.key  the SuperLink's certificate, valid for every NAME_OR_IP

Every hostname or IP address that SuperNodes use to reach the SuperLink machine
must be listed (they check it against the certificate), e.g.:
  deploy/make-certs.sh superlink.example.org 10.0.0.5
localhost and 127.0.0.1 are always added: on the SuperLink machine the proxy, the
SuperExec and the operator's `flwr` reach the SuperLink itself on loopback, with TLS.

Give ca.crt to every SuperNode (--root-certificates) and to every `flwr` user
(root-certificates in the connection). Keep ca.key and server.key private.
An existing ca.crt in DIR is never replaced (every node trusts it); pass --force
to start over with a new CA.
EOF
}

out_dir="deploy/certificates"
days=365
force=0
names=()
while (($#)); do
    case "$1" in
        -o | --out) out_dir="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done
((${#names[@]})) || { usage >&2; exit 2; }
# The loopback hops on the SuperLink machine check these names too (see --help).
for name in localhost 127.0.0.1; do
    [[ " ${names[*]} " == *" $name "* ]] || names+=("$name")
done
command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 1; }

# Subject Alternative Names: IP entries for addresses, DNS entries for names.
sans=()
for name in "${names[@]}"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
        sans+=("IP:$name")
    else
        sans+=("DNS:$name")
    fi
done
san_line=$(IFS=,; echo "${sans[*]}")

if [[ -f "$out_dir/ca.crt" ]] && ((force == 0)); then
    echo "error: $out_dir/ca.crt exists; nodes may trust it already (use --force to replace)" >&2
    exit 1
fi
mkdir -p "$out_dir"
cd "$out_dir"
umask 077  # private keys readable by their owner only

# EC P-256 keys: fast to make, supported by every TLS stack Flower uses.
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=fedsem-ca" -out ca.crt

openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -subj "/CN=${names[0]}" -out server.csr
cat >server.ext <<EOF
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san_line
EOF
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$days" -sha256 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.pem

echo "certificates in $(pwd): ca.crt, server.pem, server.key (SANs: $san_line)"
