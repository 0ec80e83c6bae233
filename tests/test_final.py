"""What a run leaves to use: final/ adapters, fedsem-chat, and resume of every client's adapter.

The server's ``main`` and the real ClientApp run tiny models on the Ray-free fake Grid.
"""

import io
import json

import numpy as np
import pytest
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedsem_app.client_app import STATE_ADAPTER, app
from fedsem_app.clients import CausalLMClient
from fedsem_app.config.sections import GenerationConfig
from fedsem_app.final import ADAPTER_CACHE
from fedsem_app.tools import chat
from tests.test_checkpoint import CrashingGrid, SimulatedCrash, run_main

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md", "fedsem.json"}
ROUND_2_TRAIN = 4  # r0 eval, r1 train, r1 eval, r2 train


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def run_config(tmp_path, cache_dir, **overrides):
    return {
        "model.names": "tiny-llama,tiny-gpt2",
        "model.cache-dir": str(cache_dir),
        "model.device": "cpu",
        "num-server-rounds": 2,
        "train.local-steps": 2,
        "train.max-seq-len": 64,
        "gen.max-new-tokens": 8,
        "fedsem.prompts-per-round": 3,
        "eval.num-prompts": 2,
        "results-dir": str(tmp_path),
        "run-name": "job",
        **overrides,
    }


@pytest.fixture(scope="module")
def fedsem_run(tmp_path_factory, cache_dir):
    """A finished two-round fedsem run of two tiny clients: (folder, grid)."""
    tmp = tmp_path_factory.mktemp("runs")
    grid = run_main(app, 2, run_config(tmp, cache_dir))
    return tmp / "job", grid


def last_round_answers(folder):
    """{node id: [(prompt, answer), ...]} of the last round's consensus samples."""
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    last = max(s["round"] for s in samples)
    answers = {}
    for sample in (s for s in samples if s["round"] == last):
        for a in sample["answers"]:
            answers.setdefault(a["node"], []).append((sample["prompt"], a["text"]))
    return answers


def test_each_fedsem_client_saves_its_adapter_with_a_card(fedsem_run, cache_dir):
    folder, grid = fedsem_run
    final = folder / "final"
    for partition, model in ((0, "tiny-llama"), (1, "tiny-gpt2")):
        adapter = final / f"client-{partition}"
        assert ADAPTER_FILES <= {f.name for f in adapter.iterdir()}
        assert (adapter / "tokenizer.json").is_file()
        meta = json.loads((adapter / "fedsem.json").read_text())
        assert meta["model-name"] == model and meta["partition-id"] == partition
        assert meta["round"] == 2 and meta["template"] == "chat" and meta["strategy"] == "fedsem"
        card = (adapter / "README.md").read_text()
        assert f"base_model: {model}" in card and "after round 2 of 2" in card
        assert "CC-BY-4.0" in card and "| rouge-l |" in card
        # The saved weights are the node's own adapter after its last training.
        saved = load_file(str(adapter / "adapter_model.safetensors"))
        state = grid.contexts[partition + 1].state[STATE_ADAPTER]
        assert saved.keys() == state.keys()
        for key in saved:
            np.testing.assert_array_equal(saved[key], state[key].numpy())
    index = json.loads((final / "index.json").read_text())
    assert [e["folder"] for e in index["adapters"]] == ["client-0", "client-1"]
    # The fake Grid's node ids are partition + 1: the index says which node wrote which.
    assert [e["node-id"] for e in index["adapters"]] == [1, 2]
    assert index["rounds"] == 2 and set(index["final"]) == {"rouge-l", "embed-sim", "nll"}
    assert "client-1" in (final / "README.md").read_text()
    # Flower's run id is kept with the results; the run's node adapters left the cache.
    assert json.loads((folder / "summary.json").read_text())["flwr-run-id"] == 1
    assert json.loads((folder / "config.json").read_text())["flwr-run-id"] == 1
    assert not [f for f in (cache_dir / ADAPTER_CACHE).rglob("*") if f.is_file()]


def test_an_adapter_loaded_with_peft_answers_as_the_run_did(fedsem_run, cache_dir):
    folder, _ = fedsem_run
    answers = last_round_answers(folder)
    for partition, model in ((0, "tiny-llama"), (1, "tiny-gpt2")):
        base = AutoModelForCausalLM.from_pretrained(cache_dir / model)
        peft_model = PeftModel.from_pretrained(base, folder / "final" / f"client-{partition}")
        tokenizer = AutoTokenizer.from_pretrained(folder / "final" / f"client-{partition}")
        client = CausalLMClient.from_peft_model(
            model, peft_model, tokenizer, architecture=model, template="chat"
        )
        prompts, expected = zip(*answers[partition + 1], strict=True)
        texts, _ = client.generate(list(prompts), GenerationConfig(max_new_tokens=8))
        assert texts == list(expected)


def test_fedsem_chat_answers_with_a_clients_adapter(fedsem_run, tmp_path, capsys):
    folder, _ = fedsem_run
    (prompt, expected), *rest = last_round_answers(folder)[1]  # node 1 = client 0
    out = io.StringIO()
    assert chat.main([str(folder), "--client", "0", "--prompt", prompt], stdout=out) == 0
    assert out.getvalue() == expected + "\n"
    assert "tiny-llama (fedsem, round 2), template chat" in capsys.readouterr().err

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q, _ in rest))
    out = io.StringIO()
    assert chat.main([str(folder), "--client", "0", "--file", str(prompts)], stdout=out) == 0
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"prompt": q, "answer": a} for q, a in rest
    ]
    # Interactive: one prompt a line, until an empty line.
    out = io.StringIO()
    lines = io.StringIO(prompt + "\n\n")
    assert chat.main([str(folder), "--client", "0"], stdin=lines, stdout=out) == 0
    assert out.getvalue() == expected + "\n"


def test_fedsem_chat_names_what_is_missing(fedsem_run, tmp_path, capsys):
    folder, _ = fedsem_run
    assert chat.main([str(folder), "--client", "7", "--prompt", "x"]) == 2
    assert "no adapter of client 7" in capsys.readouterr().err
    assert chat.main([str(tmp_path), "--prompt", "x"]) == 2
    assert "has no final adapters" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no"}\n')
    assert chat.main([str(folder), "--file", str(bad)]) == 2
    assert "bad.jsonl:2: no string field 'prompt'" in capsys.readouterr().err


def test_a_resumed_fedsem_run_continues_each_clients_adapter(fedsem_run, tmp_path, cache_dir):
    through, _ = fedsem_run
    cfg = run_config(tmp_path, cache_dir)
    with pytest.raises(SimulatedCrash):
        run_main(app, 2, cfg, crash_on_call=ROUND_2_TRAIN)
    folder = tmp_path / "job"
    # Between the runs each node's adapter waits in the cache, keyed by the run folder.
    cached = sorted(f.name for f in (cache_dir / ADAPTER_CACHE).rglob("*.npz"))
    assert cached == ["partition-0-tiny-llama.npz", "partition-1-tiny-gpt2.npz"]
    # The resumed run: a new Flower run id, fresh node state, and the partitions on
    # swapped node ids, as a new simulation may hand them out.
    grid = CrashingGrid(
        app,
        2,
        {**cfg, "resume-from": str(folder)},
        node_configs=[{"partition-id": 1}, {"partition-id": 0}],
    )
    from flwr.app import Context, RecordDict

    from fedsem_app.server_app import main

    main(
        grid,
        Context(
            run_id=9,
            node_id=0,
            node_config={},
            state=RecordDict(),
            run_config={**cfg, "resume-from": str(folder)},
        ),
    )
    for partition in (0, 1):
        name = f"final/client-{partition}/adapter_model.safetensors"
        resumed, uninterrupted = load_file(str(folder / name)), load_file(str(through / name))
        assert resumed.keys() == uninterrupted.keys()
        for key in resumed:
            np.testing.assert_array_equal(resumed[key], uninterrupted[key])
    assert not [f for f in (cache_dir / ADAPTER_CACHE).rglob("*") if f.is_file()]


def test_a_finished_run_extended_by_a_resume_starts_from_the_saved_adapters(fedsem_run, cache_dir):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedsem_app import protocol as p
    from fedsem_app.client_app import _restore_adapter
    from fedsem_app.clients import load_client
    from fedsem_app.config.sections import LoraConfig

    folder, _ = fedsem_run
    # The run is over: no cache file is left, only final/; a new run (new ids) goes on.
    context = Context(
        run_id=77,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    config = ConfigRecord({p.RUN_FOLDER: str(folder), p.ROUND: 3, p.NUM_ROUNDS: 3})
    msg = Message(RecordDict({p.TRAIN_CONFIG: config}), dst_node_id=5, message_type="train")
    client = load_client("tiny-llama", LoraConfig(), device="cpu", cache_dir=cache_dir, seed=42)
    _restore_adapter(client, msg, context, cache_dir)
    restored = client.adapter_state()
    saved = load_file(str(folder / "final" / "client-0" / "adapter_model.safetensors"))
    assert restored.keys() == saved.keys()
    for key in saved:
        np.testing.assert_array_equal(restored[key], saved[key])
    client.set_adapter(None)


def test_fedavg_lora_saves_the_global_adapter_and_chat_uses_it(tmp_path, cache_dir, capsys):
    from fedsem_app.run.checkpoint import read_checkpoint

    cfg = run_config(
        tmp_path,
        cache_dir,
        **{
            "strategy": "fedavg-lora",
            "model.names": "tiny-llama",
            "num-server-rounds": 1,
        },
    )
    run_main(app, 2, cfg)
    folder = tmp_path / "job"
    assert sorted(f.name for f in (folder / "final").iterdir()) == [
        "README.md",
        "global",
        "index.json",
    ]
    meta = json.loads((folder / "final" / "global" / "fedsem.json").read_text())
    assert meta["partition-id"] is None and meta["strategy"] == "fedavg-lora"
    assert "the federation's global adapter" in (folder / "final/global/README.md").read_text()
    # The saved adapter is the averaged one the run ended with (its checkpoint's arrays).
    saved = load_file(str(folder / "final" / "global" / "adapter_model.safetensors"))
    arrays = read_checkpoint(folder).arrays
    assert saved.keys() == set(arrays.keys())
    for key in saved:
        np.testing.assert_array_equal(saved[key], arrays[key].numpy())
    # Clients save nothing of their own, and leave no cache file behind.
    assert not [f for f in (cache_dir / ADAPTER_CACHE).rglob("*") if f.is_file()]
    out = io.StringIO()
    assert chat.main([str(folder), "--prompt", "How long does concrete cure?"], stdout=out) == 0
    assert out.getvalue().endswith("\n")
    assert chat.main([str(folder), "--client", "0", "--prompt", "x"]) == 2
    assert "drop --client" in capsys.readouterr().err
