"""``fedsem-spec``: check a federation spec and turn it into simulation or deployment settings.

Offline tool.

Usage::

    fedsem-spec check SPEC [--strategy NAME]     # every check the server makes, no training
    fedsem-spec federation-config SPEC           # num-supernodes=K (flwr run --federation-config)
    fedsem-spec node-config SPEC CLIENT          # that client's --node-config string
    fedsem-spec deploy SPEC --superlink HOST:PORT [--format script|systemd|compose]

``deploy`` prints, client by client, how to start its SuperNode with the scripts
in ``deploy/``: a ``deploy/start-supernode.sh --spec SPEC --client NAME`` command
(the script asks ``fedsem-spec node-config`` for the node config), the
environment file of the ``fedsem-supernode@.service`` systemd unit, or a Compose
service. The node config it builds carries the client's name, model, data file
and mapping, device, LoRA settings and fault mode, so a SuperNode needs no run
config of its own and the server can check who connected.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsem_app.config.errors import ConfigError
from fedsem_app.spec.apply import check_strategy
from fedsem_app.spec.read import read_spec
from fedsem_app.spec.schema import ClientSpec, FederationSpec, SpecError

FORMATS = ("script", "systemd", "compose")


def node_config_text(config: Mapping[str, Any]) -> str:
    """A node config as ``flower-supernode --node-config`` takes it (strings TOML-quoted).

    Raises
    ------
    ValueError
        If a string holds a double quote (the key=value form cannot carry it).
    """
    parts = []
    for key, value in config.items():
        if isinstance(value, str):
            if '"' in value:
                raise ValueError(f"node config {key} must not contain a double quote: {value!r}")
            value = f'"{value}"'
        parts.append(f"{key}={value}")
    return " ".join(parts)


def find_client(spec: FederationSpec, name: str) -> ClientSpec:
    """The spec's client called ``name``, or a SpecError listing the names."""
    for client in spec.clients:
        if client.name == name:
            return client
    raise SpecError(
        spec.path, name, "name", f"no such client; the spec lists {', '.join(spec.names)}"
    )


def start_command(
    spec: FederationSpec,
    client: ClientSpec,
    superlink: str,
    port: int,
    *,
    insecure: bool = False,
    keys: str = "deploy/keys",
    root_certificates: str = "deploy/certificates/ca.crt",
) -> str:
    """The ``deploy/start-supernode.sh`` command line of one client's SuperNode."""
    args = ["deploy/start-supernode.sh", "--superlink", superlink, "--port", str(port)]
    args += ["--name", client.name]
    if insecure:
        args.append("--insecure")
    else:
        args += ["--root-certificates", root_certificates]
        args += ["--auth-supernode-private-key", f"{keys}/{client.name}"]
    args += ["--spec", spec.path, "--client", client.name]
    return shlex.join(args)


def systemd_env(spec: FederationSpec, client: ClientSpec, superlink: str, port: int) -> str:
    """The ``/etc/fedsem/supernode-<name>.env`` of ``deploy/systemd/fedsem-supernode@.service``."""
    gpu = client.device.split(":")[1] if client.device.startswith("cuda:") else ""
    values = {
        "SUPERLINK": superlink,
        "PORT": port,
        "KEY": f"/etc/fedsem/keys/{client.name}",
        "SPEC": spec.path,  # the same file on the node's machine
        "CLIENT": client.name,
        # Set by the spec: leave empty (the unit passes them on; the script refuses both).
        "MODEL_NAME": "",
        "DATA_PATH": "",
        "DEVICE": "",
        "GPU": gpu,
        "PARTITION_ID": "",
        "NUM_PARTITIONS": "",
    }
    return "".join(f"{k}={v}\n" for k, v in values.items())


def compose_service(spec: FederationSpec, client: ClientSpec, superlink: str) -> str:
    """A service for ``deploy/compose.yaml``: the spec and data file at the same paths inside."""
    command = [
        "deploy/start-supernode.sh",
        "--foreground",
        "--superlink",
        superlink,
        "--root-certificates",
        "/certificates/ca.crt",
        "--auth-supernode-private-key",
        f"/keys/{client.name}",
        "--spec",
        spec.path,
        "--client",
        client.name,
    ]
    volumes = [
        "./certificates/ca.crt:/certificates/ca.crt:ro",
        f"./keys/{client.name}:/keys/{client.name}:ro",
        f"{spec.path}:{spec.path}:ro",
    ]
    if client.data_path:  # private data stays on this host, mounted read-only
        volumes.append(f"{client.data_path}:{client.data_path}:ro")
    volumes.append(f"supernode-{client.name}-data:/data")
    lines = [f"  supernode-{client.name}:", "    <<: *fedsem", "    command:"]
    lines += [f'      - "{arg}"' for arg in command]
    lines += ["    volumes:"] + [f'      - "{v}"' for v in volumes]
    return "\n".join(lines) + "\n"


def deploy_text(
    spec: FederationSpec,
    superlink: str,
    fmt: str = "script",
    *,
    first_port: int = 9094,
    insecure: bool = False,
    keys: str = "deploy/keys",
) -> str:
    """What ``fedsem-spec deploy`` prints: one block per client, in partition order."""
    blocks = []
    for client in spec.clients:
        node = node_config_text(client.node_config(len(spec.clients)))
        head = f"# {client.name}: partition {client.index} of {len(spec.clients)}, {client.model}"
        port = first_port + client.index  # one Runtime API port per SuperNode on a host
        if fmt == "script":
            body = start_command(spec, client, superlink, port, insecure=insecure, keys=keys)
        elif fmt == "systemd":
            head += f"\n# /etc/fedsem/supernode-{client.name}.env (fedsem-supernode@{client.name})"
            body = systemd_env(spec, client, superlink, port).rstrip("\n")
        else:
            body = compose_service(spec, client, superlink).rstrip("\n")
        blocks.append(f"{head}\n# --node-config {shlex.quote(node)}\n{body}\n")
    return "\n".join(blocks)


def check_text(spec: FederationSpec) -> str:
    """A table of the checked spec, one client a line."""
    lines = [f"{spec.path}: {len(spec.clients)} clients, all checks passed"]
    for c in spec.clients:
        lora = ", ".join(
            f"{k} {v}"
            for k, v in (
                ("rank", c.lora_rank),
                ("alpha", c.lora_alpha),
                ("targets", ",".join(c.lora_target_modules or ()) or None),
            )
            if v is not None
        )
        data = c.data_path or f"partition {c.index}"
        extra = "".join(f", {k} {v}" for k, v in (("device", c.device), ("fault", c.fault)) if v)
        lines.append(
            f"  {c.index}: {c.name}: {c.model}; LoRA {lora or 'run config'}; {data}{extra}"
        )
    lines.append(f'simulate with: --federation-config "{spec.federation_config}"')
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsem-spec", description="Check a federation spec and derive run settings from it."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check the spec as the server does (no training)")
    check.add_argument("spec", type=Path)
    check.add_argument("--strategy", help="also check that this strategy can run the spec")
    fed = sub.add_parser("federation-config", help="print num-supernodes=K")
    fed.add_argument("spec", type=Path)
    node = sub.add_parser("node-config", help="print one client's --node-config string")
    node.add_argument("spec", type=Path)
    node.add_argument("client", help="the client's name in the spec")
    deploy = sub.add_parser("deploy", help="print each SuperNode's start command / unit / service")
    deploy.add_argument("spec", type=Path)
    deploy.add_argument("--superlink", required=True, help="HOST:PORT the SuperNodes dial")
    deploy.add_argument("--format", choices=FORMATS, default="script")
    deploy.add_argument("--first-port", type=int, default=9094, help="Runtime API port of client 0")
    deploy.add_argument("--insecure", action="store_true", help="no TLS, no node keys (tests)")
    deploy.add_argument("--keys", default="deploy/keys", help="folder of the nodes' private keys")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedsem-spec``; 0 on success, 2 on a bad spec (one line on stderr)."""
    args = _parser().parse_args(argv)
    try:
        spec = read_spec(args.spec)
        if args.command == "check":
            if args.strategy:
                from fedsem_app.strategies import get_strategy_class

                cls = get_strategy_class(args.strategy)
                check_strategy(spec, args.strategy, cls.needs_shared_model)
            print(check_text(spec))
        elif args.command == "federation-config":
            print(spec.federation_config)
        elif args.command == "node-config":
            client = find_client(spec, args.client)
            print(node_config_text(client.node_config(len(spec.clients))))
        else:
            print(
                deploy_text(
                    spec,
                    args.superlink,
                    args.format,
                    first_port=args.first_port,
                    insecure=args.insecure,
                    keys=args.keys,
                ),
                end="",
            )
    except (ConfigError, ValueError) as err:
        print(f"fedsem-spec: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
