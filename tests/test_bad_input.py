"""Bad files and settings stop the run in the server's pre-training check, in one line.

Each case goes through what the ServerApp runs before any message is sent
(:func:`fedsem_app.server_app.check_setup`, after reading the run config) and
must name the key, the problem and the fix.
"""

import datasets
import pytest

from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.server_app import check_setup


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


CASES = {
    "corrupt-json": (
        lambda t: {"data.path": write(t, "qa.json", b'[{"prompt": "a", "answer": ')},
        "data.path",
        ["could not read", "non-empty and well-formed"],
    ),
    "empty-file": (
        lambda t: {"data.path": write(t, "qa.jsonl", b"")},
        "data.path",
        ["qa.jsonl", "non-empty"],
    ),
    "binary-parquet": (
        lambda t: {"data.path": write(t, "qa.parquet", b"\x00\x01 not parquet \xff")},
        "data.path",
        ["could not read", "parquet"],
    ),
    "missing-file": (
        lambda t: {"data.path": str(t / "gone.csv")},
        "data.path",
        ["gone.csv", "does not exist"],
    ),
    "missing-field": (
        lambda t: {
            "data.path": write(t, "qa.jsonl", b'{"question": "q", "answer": "a"}\n'),
        },
        "data.prompt-field",
        ["'prompt'", "question"],
    ),
    "unknown-model": (
        lambda t: {"model.names": "smollm2-135m,no-such-model"},
        "model.names",
        ["unknown model 'no-such-model'", "registered models", "tiny-llama"],
    ),
    "unknown-dataset": (
        lambda t: {"data.name": "no-such-dataset"},
        "data.name",
        ["no-such-dataset", "data.path"],
    ),
    "budget-over-public-set": (
        lambda t: {"fedsem.prompts-per-round": 100_000},
        "fedsem.prompts-per-round",
        ["exceeds the", "public prompts", "lower it or raise data.public-fraction"],
    ),
    "zero-learning-rate": (
        lambda t: {"train.learning-rate": 0.0},
        "train.learning-rate",
        ["must be in (0, 1)", "got 0.0"],
    ),
    "negative-learning-rate": (
        lambda t: {"train.learning-rate": -0.001},
        "train.learning-rate",
        ["must be in (0, 1)"],
    ),
    "zero-test-fraction": (
        lambda t: {"data.test-fraction": 0.0},
        "data.test-fraction",
        ["must be in (0, 1)"],
    ),
    "zero-fedit-fraction": (
        lambda t: {"fedit.fraction-train": 0.0},
        "fedit.fraction-train",
        ["must be in (0, 1]"],
    ),
    "wrong-type": (
        lambda t: {"train.local-steps": "four"},
        "train.local-steps",
        ["expected an integer", "'four'"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_training_in_one_line(case, tmp_path, monkeypatch):
    # No hub: an unknown dataset name must not start a download attempt.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    overrides, key, fragments = CASES[case]
    with pytest.raises(ConfigError) as err:
        check_setup(load_app_config(overrides(tmp_path)))
    message = str(err.value)
    assert err.value.key == key
    assert message.startswith(f"config key '{key}':")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
