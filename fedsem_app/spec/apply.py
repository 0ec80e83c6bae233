"""A federation spec against the run: the strategy, the run config, each node's config.

Shared: the server applies a spec to the run config, a client to its node config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.common.logger import log

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.spec.read import read_spec
from fedsem_app.spec.schema import NODE_CLIENT_NAME, NODE_PARTITION, FederationSpec, SpecError


def check_strategy(spec: FederationSpec, strategy: str, needs_shared_model: bool) -> None:
    """Refuse a strategy that averages parameters over clients that cannot share them.

    The message for mixed models is the one ``model.names`` gets
    (:func:`fedsem_app.strategies.shared_model_problem`); mixed LoRA settings
    would give adapters of different shapes.
    """
    if not needs_shared_model:
        return
    from fedsem_app.strategies import shared_model_problem

    first = spec.clients[0]
    problem = shared_model_problem(strategy, spec.models)
    if problem:
        other = next(c for c in spec.clients if c.model != first.model)
        raise SpecError(spec.path, other.name, "model", problem)
    for client in spec.clients[1:]:
        for key, attr in (
            ("lora.rank", "lora_rank"),
            ("lora.alpha", "lora_alpha"),
            ("lora.target-modules", "lora_target_modules"),
        ):
            if getattr(client, attr) != getattr(first, attr):
                raise SpecError(
                    spec.path,
                    client.name,
                    key,
                    f"strategy {strategy!r} averages adapters, so every client needs the same "
                    f"LoRA settings; {client.name!r} differs from {first.name!r}. Give them one "
                    "lora setting (e.g. under defaults) or use strategy='fedsem'",
                )


def apply_spec(cfg: AppConfig) -> tuple[AppConfig, FederationSpec | None]:
    """The run config as the server sees it with the spec: its models and client 0's LoRA.

    ``model.names`` becomes the spec's models in partition order (so the server's
    checks and a parameter strategy's shared model follow the spec), and the LoRA
    settings those of the first client (the same for all where a strategy shares
    adapters, see :func:`check_strategy`).
    """
    if not cfg.federation_spec:
        return cfg, None
    spec = read_spec(cfg.federation_spec)
    model = dataclasses.replace(cfg.model, names=spec.models)
    return dataclasses.replace(cfg, model=model, lora=spec.clients[0].lora(cfg.lora)), spec


def node_config_with_spec(cfg: AppConfig, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """A node's config with its spec entry underneath (the node's own keys win).

    In simulation a node knows only its partition id: its entry is client
    ``partition-id`` of the spec. A SuperNode started from the spec
    (``fedsem-spec deploy``) already carries its entry as node config and is
    taken as it is, so its machine needs no copy of the spec.
    """
    node = dict(node_config)
    if not cfg.federation_spec or NODE_CLIENT_NAME in node:
        return node
    spec = read_spec(cfg.federation_spec)
    partition = node.get(NODE_PARTITION, 0)
    entry = spec.client(int(partition) if isinstance(partition, int) else 0)
    return {**entry.node_config(len(spec.clients)), **node}


def spec_summary(spec: FederationSpec) -> str:
    """One log line's worth: ``spec <file>: alice (smollm2-135m), bob (gemma3-270m)``."""
    clients = ", ".join(f"{c.name} ({c.model})" for c in spec.clients)
    return f"federation spec {spec.path}: {clients}"


def node_check(expected: Sequence[str], seen: Sequence[str]) -> tuple[list[str], list[str]]:
    """Which spec clients no node answered as, and which answering names the spec lacks.

    Returns
    -------
    tuple
        (missing, unexpected), each sorted; a node without a client name counts as
        unexpected under ``"(unnamed)"``.
    """
    names = [s or "(unnamed)" for s in seen]
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    return missing, unexpected


def log_node_check(expected: Sequence[str], replies: Sequence[Any]) -> None:
    """Warn about spec clients no node answered as, and nodes the spec does not name.

    ``replies`` are round 0's evaluate replies; each names its client in ``info``.
    """
    seen = [m.content.get(p.INFO, {}).get(p.CLIENT_NAME, "") for m in replies if not m.has_error()]
    missing, unexpected = node_check(expected, seen)
    failed = sum(m.has_error() for m in replies)
    if not missing and not unexpected:
        log(INFO, "federation spec: all %d clients answered", len(expected))
        return
    log(
        WARNING,
        "federation spec lists %d clients (%s); missing: %s; unexpected: %s%s. In "
        'simulation: flwr run . --federation-config "num-supernodes=%d"; in deployment '
        "start each SuperNode with the command fedsem-spec deploy prints",
        len(expected),
        ",".join(expected),
        ", ".join(missing) or "none",
        ", ".join(unexpected) or "none",
        f" ({failed} node(s) replied with an error)" if failed else "",
        len(expected),
    )
