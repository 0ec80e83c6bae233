import tomllib
from pathlib import Path

import pytest

from fedsem_app.config.app import AppConfig, known_keys, load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.node import load_node_config

ROOT = Path(__file__).resolve().parents[1]


def pyproject_defaults() -> dict:
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def test_pyproject_defaults_match_dataclass_defaults():
    # Prepare: the run config Flower would hand over with no overrides
    flat = pyproject_defaults()
    # Execute
    cfg = load_app_config(flat)
    # Assert: every key is known, and pyproject and code agree on every default
    assert set(flat) == known_keys()
    assert cfg == AppConfig()


def test_overrides_are_typed():
    cfg = load_app_config(
        {
            "train.local-steps": 7,
            "round-timeout": 60,
            "model.names": "tiny-llama, tiny-gpt2",
            "strategy": "fedsem",
        }
    )
    assert cfg.train.local_steps == 7
    assert cfg.round_timeout == 60.0 and isinstance(cfg.round_timeout, float)
    assert cfg.model.names == ("tiny-llama", "tiny-gpt2")
    assert cfg.model.name_for(0) == "tiny-llama"
    assert cfg.model.name_for(3) == "tiny-gpt2"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"train\.local-step.*did you mean train\.local-steps"):
        load_app_config({"train.local-step": 3})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (
            "fedsem.consensus",
            "majority",
            "allowed values: centroid, cluster, confidence, expert, medoid, relevance",
        ),
        ("data.partitioner", "random", "allowed values: category, dirichlet, iid"),
        ("train.learning-rate", 0.0, r"must be in \(0, 1\)"),
        ("train.learning-rate", -0.1, r"must be in \(0, 1\)"),
        ("lora.rank", 0, "positive"),
        ("num-server-rounds", 0, "positive"),
        ("train.local-steps", "four", "expected an integer"),
        ("data.public-fraction", 0.8, "private pool"),
        ("model.template", "xml", "allowed values: alpaca, chat, plain"),
        ("fedsem.samples-per-round", -1, "0 \\(every prompt\\)"),
    ],
)
def test_bad_values_name_the_key(key, value, match):
    run_config = {key: value}
    if key == "data.public-fraction":
        run_config["data.test-fraction"] = 0.3  # 0.3 + 0.8 leaves no private pool
    with pytest.raises(ConfigError, match=match) as info:
        load_app_config(run_config)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_to_flat_round_trips():
    cfg = load_app_config({"model.names": "a,b", "seed": 3})
    assert load_app_config(cfg.to_flat()) == cfg


def test_node_config_wins_over_run_config(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "q", "answer": "a"}\n')
    cfg = load_app_config({"model.names": "tiny-llama,tiny-gpt2", "model.device": "cpu"})
    node = load_node_config(
        {
            "partition-id": 1,
            "num-partitions": 2,
            "model-name": "tiny-opt",
            "data-path": str(data),
            "device": "cuda:1",
        },
        cfg,
    )
    assert (node.model_name, node.data_path, node.device) == ("tiny-opt", str(data), "cuda:1")
    plain = load_node_config({"partition-id": 1, "num-partitions": 2}, cfg)
    assert (plain.model_name, plain.data_path, plain.device) == ("tiny-gpt2", "", "cpu")


def test_node_config_missing_data_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config({"data-path": str(tmp_path / "nope.jsonl")}, AppConfig())


def test_node_partition_out_of_range():
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        load_node_config({"partition-id": 2, "num-partitions": 2}, AppConfig())


def test_results_root_is_absolute():
    assert load_app_config({"results-dir": "rel/runs"}).results_root.is_absolute()
    assert AppConfig().results_root.is_absolute()
