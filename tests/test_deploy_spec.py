"""A federation spec starts the loopback deployment it describes (slow).

The deploy script starts each SuperNode from the spec alone
(``deploy/start-supernode.sh --spec FILE --client NAME``), with TLS and node
authentication as in ``tests/test_deploy.py``, whose deployment helpers this
module reuses; behind the Fleet-only proxy where nginx is installed, else with
``--no-proxy`` (the spec's part does not depend on the proxy). Then one FedSem
round runs with ``federation-spec`` naming the same file.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_deploy import (
    NEEDED,
    NODES,
    PATH,
    ROOT,
    Deployment,
    all_logs,
    flwr_run_command,
    prebuild_models,
    run_profile,
    tail,
)

MISSING = [cmd for cmd in NEEDED if cmd != "nginx" and shutil.which(cmd, path=PATH) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not on PATH: {', '.join(MISSING)}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A SuperLink with TLS and node auth, its connection, and three registered keys."""
    dep = Deployment(
        tmp_path_factory.mktemp("deploy-spec"), proxy=bool(shutil.which("nginx", path=PATH))
    )
    left: list[str] = []
    try:
        dep.start_authenticated(list(NODES), list(NODES))
        yield dep
    finally:
        left = dep.stop_all()
    assert not left, "processes left after deploy/stop.sh:\n" + "\n".join(left)


SPEC_CLIENTS = ("alice", "bob", "carol")  # started with the keys node0..node2


def write_spec(dep: Deployment) -> Path:
    """A spec of three tiny clients: per-client LoRA targets and ranks, one with its own file."""
    own = dep.base / "bob.jsonl"
    own.write_text(
        "".join(
            json.dumps({"question": f"What does clause {i} say?", "response": f"Clause {i}."})
            + "\n"
            for i in range(8)
        )
    )
    spec = dep.base / "federation.yaml"
    spec.write_text(
        "defaults: {model: tiny-llama, device: cpu}\n"
        "clients:\n"
        "  - name: alice\n"
        "    lora: {rank: 2, target-modules: [q_proj, v_proj]}\n"
        "  - name: bob\n"
        "    lora: {rank: 4}\n"
        "    data: {path: bob.jsonl, prompt-field: question, answer-field: response}\n"
        "  - name: carol\n"
        "    model: tiny-gpt2\n"
    )
    return spec


# About 2 minutes on 2 idle cores, like the three-node run above (one round fewer).
@pytest.mark.slow
def test_a_federation_spec_starts_the_deployment_it_describes(deployment):
    # Prepare: each SuperNode started by the deploy script from the spec alone.
    dep = deployment
    spec = write_spec(dep)
    prebuild_models(dep.cache, ("tiny-llama", "tiny-gpt2"))
    started = {}
    try:
        for name, key in zip(SPEC_CLIENTS, NODES, strict=True):
            started[name] = dep.start_supernode(name, key, "--spec", str(spec), "--client", name)
        profile = run_profile(
            dep,
            "spec",
            **{"federation-spec": str(spec), "min-clients": 3, "num-server-rounds": 1},
        )

        # Execute
        proc = subprocess.run(
            flwr_run_command(profile),
            cwd=ROOT,
            env=dep.env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        dep.stop(*SPEC_CLIENTS)

    # Assert: every node ran its spec entry, and the server saw all three by name.
    output = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, output + all_logs(dep)
    assert f'client-name="bob" model-name="tiny-llama" data-path="{spec.parent / "bob.jsonl"}"' in (
        started["bob"].stdout
    )
    assert "federation spec: all 3 clients answered" in proc.stdout + proc.stderr, output
    folder = dep.base / "runs" / "spec"
    clients = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    assert {c["client"] for c in clients} == set(SPEC_CLIENTS)
    by_client = {c["client"]: c for c in clients if c["phase"] == "train"}
    assert by_client["bob"]["num-examples"] == 8  # his own file, not a partition
    assert {by_client[n]["model"] for n in SPEC_CLIENTS} == {"tiny-llama", "tiny-gpt2"}
    row = json.loads((folder / "metrics.json").read_text())[1]
    assert row["train-replies"] == 3 and row["dropped-replies"] == 0, row
    shares = {k for k in row if k.startswith("pick-share-")}
    assert shares and shares <= {f"pick-share-{n}" for n in SPEC_CLIENTS}, row
    # Per-client LoRA went to the nodes: each logs what it adapted.
    logs = {n: (dep.run_dir / f"{n}.log").read_text(errors="replace") for n in SPEC_CLIENTS}
    assert "tiny-llama (llama): LoRA on q_proj, v_proj" in logs["alice"], tail(
        dep.run_dir / "alice.log"
    )
    assert "LoRA on k_proj, o_proj, q_proj, v_proj" in logs["bob"], tail(dep.run_dir / "bob.log")
