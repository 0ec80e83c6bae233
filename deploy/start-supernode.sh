#!/usr/bin/env bash
# Start a Flower SuperNode with its own model, private data and device.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/start-supernode.sh --superlink HOST:PORT [options]

Starts `flower-supernode` in the background (PID file and log in
$FEDSEM_DEPLOY_DIR, default ~/.fedsem/deploy) and waits until the SuperLink has
accepted it. The ClientApp runs with this environment's packages.

Connection:
  --superlink HOST:PORT          the SuperLink (required)
  --root-certificates FILE       CA certificate of the SuperLink (default
                                 deploy/certificates/ca.crt)
  --insecure                     no TLS (only against a SuperLink started --insecure)
  --auth-supernode-private-key FILE
                                 this node's private key (deploy/make-node-keys.sh);
                                 needed when the SuperLink authenticates nodes
  --port PORT                    this node's Runtime API port, bound to 127.0.0.1:
                                 the ClientApp processes it starts fetch their
                                 message there and return the reply (plain HTTP,
                                 no caller check: keep it off the network);
                                 default 9094, one per SuperNode on a host

What this node runs (its --node-config; these win over the run config). Either
from a federation spec (fedsem_app/spec/; `fedsem-spec deploy SPEC` prints the
command for every client):
  --spec FILE --client NAME      the client NAME of the spec FILE: its partition,
                                 name, model, data file and mapping, device, LoRA
                                 settings and fault mode (fedsem-spec node-config)
or one by one:
  --model-name NAME              registered model, local model folder or hub id
  --data-path FILE               private JSON/JSONL/CSV/Parquet file of this node
  --device DEV                   auto, cpu, cuda, cuda:N, mps
  --partition-id N               which partition of the configured dataset (default 0)
  --num-partitions N             how many partitions (default 1)
  --gpu IDS                      set CUDA_VISIBLE_DEVICES=IDS (one GPU per SuperNode)

Other:
  --name NAME                    name of the PID/log files (default supernode-PORT)
  --wait SECONDS                 how long to wait for the SuperLink (default 60)
  --foreground                   run in the foreground (systemd, containers)
  -h, --help                     this help
EOF
}

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

superlink=""
root_certificates="deploy/certificates/ca.crt"
insecure=0
auth_key=""
port=9094
model_name=""
data_path=""
device=""
partition_id=0
num_partitions=1
gpu=""
name=""
spec=""
client=""
wait_s=60
foreground=0
while (($#)); do
    case "$1" in
        --superlink) superlink="$2"; shift 2 ;;
        --root-certificates) root_certificates="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        --auth-supernode-private-key) auth_key="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --model-name) model_name="$2"; shift 2 ;;
        --data-path) data_path="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --partition-id) partition_id="$2"; shift 2 ;;
        --num-partitions) num_partitions="$2"; shift 2 ;;
        --gpu) gpu="$2"; shift 2 ;;
        --spec) spec="$2"; shift 2 ;;
        --client) client="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --wait) wait_s="$2"; shift 2 ;;
        --foreground) foreground=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ -n "$superlink" ]] || { usage >&2; exit 2; }
need_cmd flower-supernode
need_cmd flwr-clientapp  # the SuperNode starts one ClientApp process per message
name="${name:-supernode-$port}"

if [[ -n "$spec" || -n "$client" ]]; then
    [[ -n "$spec" && -n "$client" ]] || die "--spec and --client go together"
    [[ -z "$model_name$data_path$device" ]] \
        || die "--spec sets model, data and device: drop --model-name, --data-path, --device"
    need_cmd fedsem-spec
    need_file "$spec" "--spec"
    # The spec's own checks (data file present, known model, ...) run here, on this
    # machine, before the node starts; a bad spec stops with its one-line reason.
    node_config="$(fedsem-spec node-config "$spec" "$client")" || exit 1
else
    if [[ -n "$data_path" ]]; then
        # Checked here: a wrong path would otherwise fail only inside every round.
        need_file "$data_path" "--data-path"
        data_path="$(abs_path "$data_path")"  # ClientApps run in another directory
    fi

    # Node config: what this node runs. Strings are TOML-quoted.
    node_config="partition-id=$partition_id num-partitions=$num_partitions"
    for pair in "model-name=$model_name" "data-path=$data_path" "device=$device"; do
        value="${pair#*=}"
        [[ -z "$value" ]] && continue
        [[ "$value" == *'"'* ]] && die "${pair%%=*} must not contain a double quote"
        node_config+=" ${pair%%=*}=\"$value\""
    done
fi

# Loopback only (Flower's default too, stated so it stays so): only this node's own
# ClientApp processes need the Runtime API, and it does not check who calls.
args=(--superlink "$superlink" --host 127.0.0.1 --port "$port" --node-config "$node_config")
if ((insecure)); then
    args+=(--insecure)
else
    need_file "$root_certificates" "--root-certificates"
    args+=(--root-certificates "$(abs_path "$root_certificates")")
fi
if [[ -n "$auth_key" ]]; then
    need_file "$auth_key" "--auth-supernode-private-key"
    args+=(--auth-supernode-private-key "$(abs_path "$auth_key")")
fi
[[ -n "$gpu" ]] && export CUDA_VISIBLE_DEVICES="$gpu"

echo "node config: $node_config"
if ((foreground)); then
    exec flower-supernode "${args[@]}"
fi
# "SuperNode ID" is logged once the SuperLink has accepted the node.
start_background "$name" "SuperNode ID" "$wait_s" flower-supernode "${args[@]}"
