"""Federation specs: reading, every kind of bad spec, the client and server sides, the CLI."""

import json
import logging
from pathlib import Path

import pytest

from fedsem_app import protocol as p
from fedsem_app.client_app import STATE_ADAPTER, app
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.node import load_node_config
from fedsem_app.data.split import load_split
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.server_app import check_setup
from fedsem_app.spec.apply import apply_spec, node_check, node_config_with_spec
from fedsem_app.spec.read import parse_spec, read_spec, resolve_spec_path
from fedsem_app.spec.schema import SpecError
from fedsem_app.strategies import get_strategy_class
from fedsem_app.tools.compare import spec_strategies
from fedsem_app.tools.spec_cli import main as spec_main
from tests.fake_grid import FakeGrid

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "conf" / "federation-example.yaml"

GOOD = """
defaults:
  model: tiny-llama
  lora: {rank: 4}
clients:
  - name: alice
    lora: {target-modules: [q_proj]}
  - name: bob
    lora: {rank: 2, alpha: 4}
    data: {path: bob.jsonl, prompt-field: question, answer-field: response}
  - name: carol
    model: tiny-gpt2
    fault: garbage
"""


@pytest.fixture
def spec_dir(tmp_path):
    (tmp_path / "bob.jsonl").write_text(
        "".join(
            json.dumps({"question": f"What is rule {i}?", "response": f"Rule {i} says {i}."}) + "\n"
            for i in range(6)
        )
    )
    (tmp_path / "fed.yaml").write_text(GOOD)
    return tmp_path


def test_the_example_spec_reads_as_three_clients_in_partition_order():
    spec = read_spec(EXAMPLE)

    assert spec.names == ("alice", "bob", "carol")
    assert spec.models == ("smollm2-135m", "smollm2-135m", "gemma3-270m")
    assert [c.index for c in spec.clients] == [0, 1, 2]
    assert spec.federation_config == "num-supernodes=3"
    alice, bob, carol = spec.clients
    # alice: her own rank and targets, alpha from the defaults.
    assert (alice.lora_rank, alice.lora_alpha, alice.lora_target_modules) == (
        4,
        16,
        ("q_proj", "v_proj"),
    )
    assert bob.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    # A relative data path starts at the spec's folder.
    assert bob.data_path == str(EXAMPLE.parent / "federation-example-data.jsonl")
    assert (bob.prompt_field, bob.answer_field, bob.category_field) == (
        "question",
        "response",
        "topic",
    )
    assert carol.data_path == "" and carol.lora_target_modules is None


def test_a_spec_client_becomes_its_node_config(spec_dir):
    spec = read_spec(spec_dir / "fed.yaml")

    bob = spec.clients[1].node_config(3)

    assert bob == {
        "partition-id": 1,
        "num-partitions": 3,
        "client-name": "bob",
        "model-name": "tiny-llama",
        "data-path": str(spec_dir / "bob.jsonl"),
        "lora-rank": 2,
        "lora-alpha": 4,
        "prompt-field": "question",
        "answer-field": "response",
    }


def test_the_spec_wins_over_the_run_config_per_client(spec_dir):
    # Prepare: run config says tiny-qwen2, rank 16, alpha 32, prompt field "prompt".
    cfg = load_app_config(
        {
            "federation-spec": str(spec_dir / "fed.yaml"),
            "model.names": "tiny-qwen2",
            "lora.rank": 16,
            "lora.alpha": 32,
        }
    )

    # Execute: what each simulated node (partition id only) runs.
    nodes = [
        load_node_config(node_config_with_spec(cfg, {"partition-id": i, "num-partitions": 3}), cfg)
        for i in range(3)
    ]

    alice, bob, carol = (node.apply(cfg) for node in nodes)
    assert [n.client_name for n in nodes] == ["alice", "bob", "carol"]
    assert [n.model_name for n in nodes] == ["tiny-llama", "tiny-llama", "tiny-gpt2"]
    assert (alice.lora.rank, alice.lora.alpha, alice.lora.target_modules) == (4, 32, ("q_proj",))
    assert (bob.lora.rank, bob.lora.alpha, bob.lora.target_modules) == (2, 4, ())
    assert nodes[1].data_path == str(spec_dir / "bob.jsonl")
    assert (bob.data.prompt_field, bob.data.answer_field) == ("question", "response")
    assert alice.data.prompt_field == "prompt"  # the shared dataset keeps its mapping
    assert carol.fault.applies_to(2) and carol.fault.mode == "garbage"
    assert not alice.fault.applies_to(0)


def test_a_node_started_from_the_spec_keeps_its_own_node_config(spec_dir):
    cfg = load_app_config({"federation-spec": str(spec_dir / "fed.yaml")})
    deployed = {"partition-id": 0, "num-partitions": 1, "client-name": "x", "model-name": "m"}

    assert node_config_with_spec(cfg, deployed) == deployed
    # And a simulated node's own keys win over its spec entry.
    merged = node_config_with_spec(cfg, {"partition-id": 2, "num-partitions": 3, "device": "cpu"})
    assert merged["device"] == "cpu" and merged["client-name"] == "carol"


def test_a_partition_beyond_the_spec_says_how_many_nodes_to_simulate(spec_dir):
    cfg = load_app_config({"federation-spec": str(spec_dir / "fed.yaml")})

    with pytest.raises(SpecError, match='num-supernodes=3"'):
        node_config_with_spec(cfg, {"partition-id": 3, "num-partitions": 4})


def test_apply_spec_gives_the_server_the_spec_models_and_first_lora(spec_dir):
    cfg = load_app_config({"federation-spec": str(spec_dir / "fed.yaml"), "lora.alpha": 32})

    applied, spec = apply_spec(cfg)

    assert applied.model.names == ("tiny-llama", "tiny-llama", "tiny-gpt2")
    assert (applied.lora.rank, applied.lora.alpha, applied.lora.target_modules) == (
        4,
        32,
        ("q_proj",),
    )
    assert spec.names == ("alice", "bob", "carol")


BAD = {
    "unknown top-level key": (
        "defaults: {model: tiny-llama}\nclient:\n  - name: a\n",
        "key 'client': unknown key (did you mean 'clients'?)",
    ),
    "unknown client key": (
        "clients:\n  - name: a\n    modle: tiny-llama\n",
        "client 'a', key 'modle': unknown key (did you mean 'model'?)",
    ),
    "unknown lora key": (
        "clients:\n  - name: a\n    model: tiny-llama\n    lora: {rnak: 4}\n",
        "client 'a', key 'lora.rnak': unknown key (did you mean 'lora.rank'?)",
    ),
    "unknown data key": (
        "clients:\n  - name: a\n    model: tiny-llama\n    data: {pth: x.jsonl}\n",
        "client 'a', key 'data.pth': unknown key (did you mean 'data.path'?)",
    ),
    "unknown model": (
        "clients:\n  - name: a\n    model: tiny-lama\n",
        "client 'a', key 'model': unknown model 'tiny-lama'",
    ),
    "missing model": ("clients:\n  - name: a\n", "client 'a', key 'model': must be a non-empty"),
    "missing data file": (
        "clients:\n  - name: a\n    model: tiny-llama\n    data: {path: nowhere.jsonl}\n",
        "client 'a', key 'data.path': file",
    ),
    "duplicate names": (
        "defaults: {model: tiny-llama}\nclients:\n  - name: a\n  - name: b\n  - name: a\n",
        "client 'a', key 'name': duplicate client name (clients[0] and clients[2])",
    ),
    "missing name": (
        "defaults: {model: tiny-llama}\nclients:\n  - model: tiny-gpt2\n",
        "client 'clients[0]', key 'name': must be a non-empty string",
    ),
    "wrong type": (
        "clients:\n  - name: a\n    model: tiny-llama\n    lora: {rank: eight}\n",
        "client 'a', key 'lora.rank': must be a positive integer, got 'eight'",
    ),
    "fields without a file": (
        "clients:\n  - name: a\n    model: tiny-llama\n    data: {prompt-field: q}\n",
        "client 'a', key 'data.prompt-field': maps the fields of the client's own file",
    ),
    "unknown fault mode": (
        "clients:\n  - name: a\n    model: tiny-llama\n    fault: garbge\n",
        "client 'a', key 'fault': got 'garbge'",
    ),
    "unknown device": (
        "clients:\n  - name: a\n    model: tiny-llama\n    device: gpu\n",
        "client 'a', key 'device': got 'gpu'",
    ),
    "no clients": ("defaults: {model: tiny-llama}\n", "key 'clients': give a list of clients"),
    "not yaml": ("clients: [name: a\n", "key '(yaml)': not a safe YAML document"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_spec_stops_with_one_line_naming_client_and_key(kind, tmp_path):
    text, expected = BAD[kind]

    with pytest.raises(SpecError) as err:
        parse_spec(text, "fed.yaml", tmp_path)

    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("federation spec fed.yaml: ")
    assert expected in message, message


def test_a_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = f'clients: !!python/object/apply:os.system ["touch {marker}"]\n'

    with pytest.raises(SpecError, match="not a safe YAML document.*python/object"):
        parse_spec(text, "fed.yaml", tmp_path)

    assert not marker.exists()


def test_a_missing_spec_file_names_the_run_config_key(tmp_path):
    with pytest.raises(SpecError, match="key 'federation-spec': file .* does not exist"):
        read_spec(tmp_path / "none.yaml")


def test_a_parameter_strategy_over_a_mixed_spec_refuses_as_for_mixed_model_names():
    # The message model.names gets today, for the same two models.
    names = load_app_config(
        {"strategy": "fedavg-lora", "model.names": "smollm2-135m,smollm2-135m,gemma3-270m"}
    )
    with pytest.raises(ConfigError) as by_names:
        check_setup(names)
    cfg, spec = apply_spec(
        load_app_config({"strategy": "fedavg-lora", "federation-spec": str(EXAMPLE)})
    )

    with pytest.raises(SpecError) as by_spec:
        check_setup(cfg, spec)

    assert "client 'carol', key 'model'" in str(by_spec.value)
    today = str(by_names.value).split(": ", 1)[1]
    assert str(by_spec.value).endswith(today)


def test_a_parameter_strategy_refuses_clients_with_different_lora(spec_dir):
    text = (
        "defaults: {model: tiny-llama}\nclients:\n  - name: a\n  - name: b\n    lora: {rank: 2}\n"
    )
    spec = parse_spec(text, "fed.yaml", spec_dir)
    cfg = load_app_config({"strategy": "fedavg-lora"})

    with pytest.raises(SpecError, match="client 'b', key 'lora.rank': strategy 'fedavg-lora'"):
        check_setup(cfg, spec)


def test_node_check_names_missing_and_unexpected_clients():
    missing, unexpected = node_check(("alice", "bob", "carol"), ["carol", "", "dave", "alice"])

    assert missing == ["bob"]
    assert unexpected == ["(unnamed)", "dave"]


def test_compare_over_a_mixed_spec_leaves_out_shared_model_strategies():
    runnable, skipped, federation = spec_strategies(EXAMPLE, None)

    assert set(skipped) == {"fedavg-lora", "fedit", "fedprox-lora", "pooled"}
    assert runnable == ["fedsem", "local"]
    assert federation == "num-supernodes=3"
    with pytest.raises(SpecError, match="client 'carol', key 'model': strategy 'fedit'"):
        spec_strategies(EXAMPLE, ["fedsem", "fedit"])


def test_fedsem_spec_prints_federation_node_and_deploy_settings(capsys):
    assert spec_main(["federation-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "num-supernodes=3\n"

    assert spec_main(["node-config", str(EXAMPLE), "alice"]) == 0
    assert capsys.readouterr().out == (
        'partition-id=0 num-partitions=3 client-name="alice" model-name="smollm2-135m" '
        'device="auto" lora-rank=4 lora-alpha=16 lora-target-modules="q_proj,v_proj"\n'
    )

    assert spec_main(["deploy", str(EXAMPLE), "--superlink", "10.0.0.1:8000"]) == 0
    out = capsys.readouterr().out
    assert out.count("deploy/start-supernode.sh --superlink 10.0.0.1:8000") == 3
    assert "--port 9095 --name bob" in out
    assert f"--spec {EXAMPLE} --client bob" in out
    assert "--auth-supernode-private-key deploy/keys/carol" in out

    assert spec_main(["deploy", str(EXAMPLE), "--superlink", "h:8000", "--format", "systemd"]) == 0
    out = capsys.readouterr().out
    assert f"SPEC={EXAMPLE}\nCLIENT=carol\n" in out

    assert spec_main(["node-config", str(EXAMPLE), "dave"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "client 'dave', key 'name': no such client" in err


def test_a_spec_federation_runs_with_per_client_lora_data_and_names(spec_dir, tmp_path, caplog):
    # Prepare: the spec above without carol's fault; a fourth node the spec does not list.
    (spec_dir / "fed.yaml").write_text(GOOD.replace("    fault: garbage\n", ""))
    cache = tmp_path / "models"
    run_config = load_app_config(
        {
            "federation-spec": str(spec_dir / "fed.yaml"),
            "model.cache-dir": str(cache),
            "model.device": "cpu",
            "num-server-rounds": 1,
            "train.local-steps": 1,
            "train.max-seq-len": 48,
            "gen.max-new-tokens": 4,
            "fedsem.prompts-per-round": 2,
            "eval.num-prompts": 2,
        }
    ).to_flat()
    cfg, spec = apply_spec(load_app_config(run_config))
    extra = {"client-name": "dave", "model-name": "tiny-llama"}
    grid = MeteredGrid(FakeGrid(app, 4, run_config, [{}, {}, {}, extra]))
    run_log = RunLog(make_run_folder(tmp_path, "r", "fedsem"), run_config, 1, grid.snapshot)
    strategy = get_strategy_class("fedsem")(cfg, load_split(cfg.data, cfg.seed), run_log)
    strategy.expected_clients = spec.names

    # Execute
    with caplog.at_level(logging.WARNING):
        strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=1)

    # Assert: the server said who was unexpected; results name clients by spec name.
    assert "missing: none; unexpected: dave" in caplog.text
    clients = [json.loads(line) for line in (run_log.folder / "clients.jsonl").open()]
    assert {c["client"] for c in clients} == {"alice", "bob", "carol", "dave"}
    row = run_log.rows[1]
    shares = {k: v for k, v in row.items() if k.startswith("pick-share-")}
    assert set(shares) <= {f"pick-share-{n}" for n in ("alice", "bob", "carol", "dave")}
    assert sum(shares.values()) == pytest.approx(1.0)
    # Each client trained its own LoRA: alice rank 4 on q_proj only, bob rank 2 on the
    # architecture's default projections; bob trained on his 6 own pairs.
    ctx = grid._grid.contexts
    alice = {k: v.numpy() for k, v in ctx[1].state[STATE_ADAPTER].items()}
    bob = {k: v.numpy() for k, v in ctx[2].state[STATE_ADAPTER].items()}
    assert {k.split(".")[-3] for k in alice if "lora_A" in k} == {"q_proj"}
    assert {k.split(".")[-3] for k in bob if "lora_A" in k} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    assert {v.shape[0] for k, v in alice.items() if "lora_A" in k} == {4}
    assert {v.shape[0] for k, v in bob.items() if "lora_A" in k} == {2}
    bob_train = next(c for c in clients if c["client"] == "bob" and p.TRAIN_LOSS in c)
    assert bob_train[p.NUM_EXAMPLES] == 6


def test_a_relative_spec_path_is_found_in_the_app_folder_from_elsewhere(tmp_path, monkeypatch):
    # flwr run runs the app in the SuperLink's working directory, not the project's.
    monkeypatch.chdir(tmp_path)

    assert resolve_spec_path("conf/federation-example.yaml") == EXAMPLE
    assert resolve_spec_path("conf/federation-example.yaml", tmp_path) == (
        tmp_path / "conf" / "federation-example.yaml"
    )
