"""Tests of fedsem_app.clients: registry, templates, tokenization, LoRA client.

Fast tests use the tiny random-init models in a temporary cache; the tests that
load the packaged pretrained models are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

from fedsem_app.clients import (
    CausalLMClient,
    answer_confidence,
    available_models,
    build_example,
    check_model_name,
    clear_client_cache,
    format_prompt,
    load_client,
    make_peft_config,
    model_architecture,
    resolve_device,
    set_num_threads,
)
from fedsem_app.clients.batching import encode_prompt, pad_batch, sample_batches
from fedsem_app.clients.registry import build_cached_folder
from fedsem_app.clients.templates import ALPACA_HEADER
from fedsem_app.clients.tiny import TOKENIZER_FOLDER, load_tiny_tokenizer
from fedsem_app.config.sections import GenerationConfig, LoraConfig, ModelConfig, TrainConfig

TINY = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-gpt-neox", "tiny-opt"]
LORA = LoraConfig(rank=4, alpha=8, dropout=0.0)
PAIRS = [
    ("What is a bygglov?", "A building permit from the municipality."),
    ("How long does a permit take?", "Usually about ten weeks."),
    ("Who decides on permits?", "The building committee of the municipality."),
]
PROMPTS = [prompt for prompt, _ in PAIRS]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tokenizer(cache_dir):
    return load_tiny_tokenizer(cache_dir)


@pytest.fixture
def client(cache_dir):
    """A fresh tiny-llama client (tests change its adapter, so never share it)."""
    clear_client_cache()
    yield load_client("tiny-llama", LORA, cache_dir=cache_dir)
    clear_client_cache()


class WordTokenizer:
    """Each space-separated integer is one token id; EOS is 99; no BOS."""

    bos_token = None
    eos_token_id = 99

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(word) for word in text.split()]}


def _numbers(first, last):
    return " ".join(str(i) for i in range(first, last + 1))


# -- registry ----------------------------------------------------------------------------


def test_registry_lists_the_seven_models():
    assert available_models() == [
        "gemma3-270m",
        "smollm2-135m",
        "tiny-gpt-neox",
        "tiny-gpt2",
        "tiny-llama",
        "tiny-opt",
        "tiny-qwen2",
    ]


def test_check_model_name_rejects_unknown_and_lists_registered():
    with pytest.raises(ValueError) as info:
        check_model_name("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in available_models():
        assert name in message
    assert "local model folder" in message and "hub id" in message


def test_check_model_name_accepts_registered_folder_and_hub_id(tmp_path):
    check_model_name("smollm2-135m")
    check_model_name(str(tmp_path))
    check_model_name("HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ValueError):
        check_model_name(str(tmp_path / "missing"))


def test_model_architecture(tmp_path):
    assert model_architecture("smollm2-135m") == "llama"
    assert model_architecture("gemma3-270m") == "gemma3"
    assert model_architecture("tiny-gpt-neox") == "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert model_architecture(str(tmp_path)) == "mistral"
    assert model_architecture("org/some-model") == "org/some-model"


def test_build_cached_folder_is_all_or_nothing(tmp_path):
    target = tmp_path / "model"

    def failing(folder):
        (folder / "half.bin").write_text("x")
        raise RuntimeError("crash while building")

    with pytest.raises(RuntimeError):
        build_cached_folder(target, failing)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary leftovers

    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_text("ok")

    assert build_cached_folder(target, build) == target
    assert build_cached_folder(target, build) == target  # second call: cache hit
    assert len(calls) == 1
    assert (target / "weights.bin").read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_resolve_device_and_threads():
    assert resolve_device("cpu") == "cpu"
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available") as err:
            resolve_device("cuda")
        # The fix in a simulation is Flower's GPU share, so the message names it.
        assert "client-resources-num-gpus" in str(err.value)
    before = torch.get_num_threads()
    try:
        assert set_num_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_num_threads(0) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("assigned", "expected"), [(3.0, 3), (0.5, 1)])
def test_set_num_threads_uses_the_cpus_ray_assigned(monkeypatch, assigned, expected):
    resources = {"CPU": assigned}
    fake_ray = types.SimpleNamespace(
        is_initialized=lambda: True,
        get_runtime_context=lambda: types.SimpleNamespace(get_assigned_resources=lambda: resources),
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    before = torch.get_num_threads()
    try:
        assert set_num_threads(0) == expected and torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


# -- templates and tokenization ------------------------------------------------------------


def test_plain_and_alpaca_templates(tokenizer):
    assert format_prompt(tokenizer, "Why?", "plain") == "Question: Why?\nAnswer: "
    assert format_prompt(tokenizer, "Why?", "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nWhy?\n\n### Response:\n"
    )
    assert format_prompt(tokenizer, "Why?", "alpaca").startswith(ALPACA_HEADER)
    with pytest.raises(ValueError, match="alpaca, chat, plain"):
        format_prompt(tokenizer, "Why?", "nope")


def test_chat_template_and_fallback(tokenizer, cache_dir):
    assert tokenizer.chat_template is None
    assert format_prompt(tokenizer, "Why?", "chat") == "Question: Why?\nAnswer: "
    chat_tokenizer = load_tiny_tokenizer(cache_dir)  # a separate copy to modify
    chat_tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = format_prompt(chat_tokenizer, "Why?", "chat")
    assert text == "<bos><user>Why?<assistant>"
    # The template already wrote BOS: it must not be added a second time.
    ids = encode_prompt(chat_tokenizer, text)
    assert ids[0] == chat_tokenizer.bos_token_id and ids[1] != chat_tokenizer.bos_token_id
    assert encode_prompt(tokenizer, "Hello")[0] == tokenizer.bos_token_id


def test_tiny_tokenizer(tokenizer, cache_dir):
    assert (cache_dir / TOKENIZER_FOLDER / "tokenizer.json").is_file()
    assert 1900 <= len(tokenizer) <= 2000
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (0, 1, 2, 3)
    text = "A bygglov is a building permit."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 1 and len(ids) < len(text) // 2  # trained merges compress the domain text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tiny_tokenizer_training_is_deterministic(tokenizer, tmp_path):
    again = load_tiny_tokenizer(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_build_example_masks_the_prompt(tokenizer):
    prompt_text = format_prompt(tokenizer, "What is a bygglov?", "plain")
    example = build_example(tokenizer, prompt_text, "A building permit.", max_len=128)
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    answer_ids = tokenizer("A building permit.", add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"] == prompt_ids + answer_ids + [2]  # EOS (id 2) ends the answer
    assert example["labels"][:n] == [-100] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_build_example_truncation_by_hand():
    tok = WordTokenizer()
    # Prompt 1..10, answer 11..15 + EOS = 16 tokens > 12: keep the last 6 prompt tokens.
    ex = build_example(tok, _numbers(1, 10), _numbers(11, 15), max_len=12)
    assert ex["input_ids"] == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 99]
    assert ex["labels"] == [-100] * 6 + [11, 12, 13, 14, 15, 99]
    # Long answer: half the window (6) stays for the prompt end, the answer is cut.
    ex = build_example(tok, _numbers(1, 10), _numbers(11, 30), max_len=12)
    assert ex["input_ids"] == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert ex["labels"] == [-100] * 6 + [11, 12, 13, 14, 15, 16]
    # Short prompt, long answer: all 3 prompt tokens stay, 9 answer tokens.
    ex = build_example(tok, "1 2 3", _numbers(11, 30), max_len=12)
    assert ex["input_ids"] == [1, 2, 3] + list(range(11, 20))
    # Fits: nothing is cut.
    assert build_example(tok, "1 2", "3", max_len=12)["input_ids"] == [1, 2, 3, 99]


def test_pad_batch_right_and_left():
    examples = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ]
    right = pad_batch(examples, pad_id=0, side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = pad_batch(examples, pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sample_batches_cycles_through_shuffled_passes():
    batches = sample_batches(np.random.default_rng(3), num_examples=3, batch_size=2, steps=3)
    flat = [i for batch in batches for i in batch]
    assert [len(b) for b in batches] == [2, 2, 2]
    assert sorted(flat[:3]) == [0, 1, 2] and sorted(flat[3:]) == [0, 1, 2]
    assert batches == sample_batches(np.random.default_rng(3), 3, 2, 3)
    # More rows than examples in one batch: the batch spans two passes.
    assert sorted(sample_batches(np.random.default_rng(0), 2, 4, 1)[0]) == [0, 0, 1, 1]


def test_answer_confidence_by_hand():
    assert answer_confidence([5, 2, 2], [-1.0, -3.0, -7.0], eos_ids=[2]) == -2.0
    assert answer_confidence([2, 7], [-0.5, -9.0], eos_ids=[2]) == -0.5  # empty answer
    assert answer_confidence([5, 6], [-1.0, -2.0], eos_ids=[2]) == -1.5  # no EOS: all tokens


# -- LoRA configuration --------------------------------------------------------------------


def test_make_peft_config_defaults_per_architecture():
    assert set(make_peft_config(LORA, "llama").target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    gpt2 = make_peft_config(LORA, "gpt2")
    assert set(gpt2.target_modules) == {"c_attn", "c_proj"} and gpt2.fan_in_fan_out
    assert set(make_peft_config(LORA, "gpt_neox").target_modules) == {"query_key_value", "dense"}
    assert set(make_peft_config(LORA, "opt").target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    }
    custom = make_peft_config(LoraConfig(rank=2, alpha=4, target_modules=("q_proj",)), "llama")
    assert set(custom.target_modules) == {"q_proj"} and (custom.r, custom.lora_alpha) == (2, 4)
    assert make_peft_config(LORA, "phi").target_modules is None  # peft's own default
    # A family neither the app nor peft knows: every linear layer but the head.
    assert make_peft_config(LORA, "no-such-architecture").target_modules == "all-linear"


# -- the client with tiny models -------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_trains_and_generates(name, cache_dir):
    clear_client_cache()
    client = load_client(name, LORA, cache_dir=cache_dir)
    assert isinstance(client, CausalLMClient) and client.name == name
    assert client.architecture == model_architecture(name)
    assert 500_000 <= sum(p.numel() for p in client.model.parameters()) <= 5_000_000
    assert (cache_dir / name / "config.json").is_file()

    stats = client.train(PAIRS, TrainConfig(local_steps=2, batch_size=2), seed=0)
    assert stats["train-steps"] == 2 and stats["num-examples"] == 3
    assert math.isfinite(stats["train-loss"]) and stats["train-loss"] > 0

    texts, confidences = client.generate(PROMPTS, GenerationConfig(max_new_tokens=6, batch_size=2))
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert len(confidences) == 3
    assert all(math.isfinite(c) and c <= 0 for c in confidences)
    clear_client_cache()


def test_training_on_one_pair_lowers_its_nll(client):
    pair = [("What is a bygglov?", "A building permit from the municipality.")]
    before = client.nll(pair)
    stats = client.train(
        pair, TrainConfig(local_steps=30, batch_size=1, learning_rate=1e-2), seed=0
    )
    after = client.nll(pair)
    assert stats["train-steps"] == 30
    # Random-init start: about ln(2000) = 7.6 nats per token; 30 steps must cut > 1 nat.
    assert before > 7.0 and after < before - 1.0, (before, after)


def test_train_without_steps_or_pairs_changes_nothing(client):
    initial = client.adapter_state()
    for pairs, steps in ((PAIRS, 0), ([], 5)):
        stats = client.train(pairs, TrainConfig(local_steps=steps), seed=0)
        assert stats["train-loss"] == 0.0 and stats["train-steps"] == 0
        assert stats["num-examples"] == len(pairs)
    for key, value in client.adapter_state().items():
        np.testing.assert_array_equal(value, initial[key])


def test_proximal_term_keeps_the_adapter_near_its_start(client):
    settings = TrainConfig(local_steps=10, batch_size=2, learning_rate=1e-2)

    def drift(mu):
        client.set_adapter(None)
        start = client.adapter_state()
        loss = client.train(PAIRS, settings, seed=3, proximal_mu=mu)["train-loss"]
        end = client.adapter_state()
        return sum(float(np.sum((end[k] - start[k]) ** 2)) for k in start) ** 0.5, loss

    free, free_loss = drift(0.0)
    held, held_loss = drift(1000.0)
    # mu = 1000: after the first step (no drift yet, so the same first loss) the term's
    # gradient dominates and pulls the weights back; the reported loss excludes the term.
    assert held < free / 3, (held, free)
    assert math.isfinite(held_loss) and held_loss > 0
    client.set_adapter(None)


def test_training_is_seeded(client):
    settings = TrainConfig(local_steps=3, batch_size=2, learning_rate=1e-2)
    first = client.train(PAIRS, settings, seed=7)["train-loss"]
    client.set_adapter(None)
    assert client.train(PAIRS, settings, seed=7)["train-loss"] == first
    client.set_adapter(None)
    assert client.train(PAIRS, settings, seed=8)["train-loss"] != first


def test_adapter_state_round_trip_restores_outputs(client):
    client.train(PAIRS, TrainConfig(local_steps=5, batch_size=2, learning_rate=1e-2), seed=0)
    state = client.adapter_state()
    assert all(v.dtype == np.float32 for v in state.values())
    assert all("lora_" in key for key in state)
    gen = GenerationConfig(max_new_tokens=5, batch_size=3)
    trained_nll = client.nll(PAIRS)
    trained_out = client.generate(PROMPTS, gen)

    client.set_adapter(None)
    assert client.nll(PAIRS) != trained_nll
    client.set_adapter(state)
    assert client.nll(PAIRS) == trained_nll
    assert client.generate(PROMPTS, gen) == trained_out


def test_adapter_state_is_a_copy(client):
    state = client.adapter_state()
    key = next(iter(state))
    state[key][...] = 123.0
    assert not np.any(client.adapter_state()[key] == 123.0)


def test_set_adapter_none_resets_to_initial(client):
    initial = client.adapter_state()
    fresh_nll = client.nll(PAIRS)
    client.train(PAIRS, TrainConfig(local_steps=3, batch_size=2, learning_rate=1e-2), seed=0)
    assert any(not np.array_equal(v, initial[k]) for k, v in client.adapter_state().items())
    client.set_adapter(None)
    for key, value in client.adapter_state().items():
        np.testing.assert_array_equal(value, initial[key])
    assert client.nll(PAIRS) == fresh_nll


def test_set_adapter_rejects_bad_states(client):
    state = client.adapter_state()
    key = sorted(state)[1]
    wrong_shape = dict(state, **{key: np.zeros((3, 3), dtype=np.float32)})
    with pytest.raises(ValueError, match=re.escape(key)):
        client.set_adapter(wrong_shape)
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ValueError, match=re.escape(key)):
        client.set_adapter(missing)
    with pytest.raises(ValueError, match="extra.weight"):
        client.set_adapter(dict(state, **{"extra.weight": np.zeros(1, dtype=np.float32)}))


def test_initial_adapter_is_identical_across_loads(cache_dir):
    clear_client_cache()
    first = load_client("tiny-gpt2", LORA, cache_dir=cache_dir, seed=5).adapter_state()
    clear_client_cache()
    second = load_client("tiny-gpt2", LORA, cache_dir=cache_dir, seed=5).adapter_state()
    clear_client_cache()
    other_seed = load_client("tiny-gpt2", LORA, cache_dir=cache_dir, seed=6).adapter_state()
    clear_client_cache()
    assert list(first) == list(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(not np.array_equal(first[k], other_seed[k]) for k in first)
    assert any(np.any(v != 0) for v in first.values())  # lora_A is random, not all zeros


def test_load_client_cache_hit_returns_same_object(cache_dir):
    clear_client_cache()
    first = load_client("tiny-opt", LORA, cache_dir=cache_dir)
    assert load_client("tiny-opt", LORA, cache_dir=cache_dir) is first
    assert load_client("tiny-opt", LORA, cache_dir=cache_dir, template="plain") is not first
    clear_client_cache()
    assert load_client("tiny-opt", LORA, cache_dir=cache_dir) is not first
    clear_client_cache()


def test_local_folder_loads_like_the_registered_model(cache_dir):
    clear_client_cache()
    registered = load_client("tiny-opt", LORA, cache_dir=cache_dir)
    folder = load_client(str(cache_dir / "tiny-opt"), LORA, cache_dir=cache_dir)
    assert folder is not registered and folder.architecture == "opt"
    assert model_architecture(str(cache_dir / "tiny-opt")) == "opt"
    assert folder.nll(PAIRS) == registered.nll(PAIRS)
    for key, value in registered.adapter_state().items():
        np.testing.assert_array_equal(folder.adapter_state()[key], value)
    clear_client_cache()


@pytest.mark.parametrize("name", TINY)
def test_batched_generation_matches_one_by_one(name, cache_dir):
    # Left padding must not change an answer: positions and masks follow the padding.
    clear_client_cache()
    client = load_client(name, LORA, cache_dir=cache_dir)
    prompts = ["Hi", "What does a building permit in Helsingborg cost?", "Why?"]
    batched = client.generate(prompts, GenerationConfig(max_new_tokens=6, batch_size=3))
    single = client.generate(prompts, GenerationConfig(max_new_tokens=6, batch_size=1))
    assert batched[0] == single[0]
    np.testing.assert_allclose(batched[1], single[1], atol=1e-4)
    clear_client_cache()


def test_generate_matches_step_by_step_greedy_decoding(client):
    # Reference: argmax decoding with a full forward pass per step, log-probs by hand.
    settings = GenerationConfig(max_new_tokens=6, batch_size=1)
    (text,), (confidence,) = client.generate(["What is a bygglov?"], settings)
    ids = encode_prompt(client.tokenizer, client.prompt_text("What is a bygglov?"))
    new, logprobs = [], []
    with torch.no_grad():
        for _ in range(6):
            logits = client.model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            new.append(token)
            logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
            if token == client.tokenizer.eos_token_id:
                break
    assert text == client.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert confidence == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-4)


def test_nll_is_mean_over_answer_tokens(client):
    one = client.nll(PAIRS[:1])
    two = client.nll(PAIRS[1:2])
    n_one = len(client.tokenizer(PAIRS[0][1], add_special_tokens=False)["input_ids"]) + 1
    n_two = len(client.tokenizer(PAIRS[1][1], add_special_tokens=False)["input_ids"]) + 1
    both = client.nll(PAIRS[:2], batch_size=2)  # padded batch: padding must not count
    assert both == pytest.approx((one * n_one + two * n_two) / (n_one + n_two), rel=1e-5)
    with pytest.raises(ValueError):
        client.nll([])


# -- pretrained packaged model ---------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_generates_english():
    clear_client_cache()
    # The app's own model cache: converting the GGUF takes ~30 s, once per machine.
    client = load_client("smollm2-135m", LoraConfig(), cache_dir=ModelConfig().cache_path)
    assert client.architecture == "llama"
    assert client.prompt_text("Hi").startswith("<|im_start|>")  # the GGUF chat template
    texts, confidences = client.generate(
        ["What is a building permit?", "Name one material used to build houses."],
        GenerationConfig(max_new_tokens=24, batch_size=2),
    )
    for text in texts:
        words = re.findall(r"[A-Za-z]+", text)
        assert len(words) >= 3, text
        assert sum(len(w) for w in words) >= 0.6 * len(text.replace(" ", "")), text
    assert all(math.isfinite(c) and c <= 0 for c in confidences)
    clear_client_cache()


# Gemma-3-270M (the second entry of the default model.names): about 1.5 minutes on 2
# cores the first time (GGUF conversion), then about 40 s.
@pytest.mark.slow
def test_gemma3_loads_from_its_packages_and_answers_in_english():
    clear_client_cache()
    client = load_client("gemma3-270m", LoraConfig(), cache_dir=ModelConfig().cache_path)
    assert client.architecture == "gemma3"
    # A base model: the plain question-answer template, no chat turns.
    assert client.prompt_text("Hi") == "Question: Hi\nAnswer: "
    texts, confidences = client.generate(
        ["What is a building permit?"], GenerationConfig(max_new_tokens=16, batch_size=1)
    )
    words = re.findall(r"[A-Za-z]+", texts[0])
    assert len(words) >= 3, texts
    assert sum(len(w) for w in words) >= 0.6 * len(texts[0].replace(" ", "")), texts
    assert math.isfinite(confidences[0]) and confidences[0] <= 0
    clear_client_cache()


def test_length_sorted_batches_return_answers_in_prompt_order(client):
    # Batch 1 has no padding, so sorting changes only the order of generation: the
    # answers must come back identical and in prompt order.
    prompts = ["a much longer question about the roof of the building?", "why?", "who builds it?"]
    plain = client.answer(prompts, GenerationConfig(max_new_tokens=6, batch_size=1))
    assert len(set(plain.confidences)) == 3  # distinct answers: the order is visible
    ordered = client.answer(
        prompts, GenerationConfig(max_new_tokens=6, batch_size=1, sort_by_length=True)
    )
    assert ordered.texts == plain.texts
    assert ordered.confidences == plain.confidences
    assert ordered.finished == plain.finished


# -- generation with the adapter merged ---------------------------------------------------


def _trained(client, steps=10):
    client.train(PAIRS, TrainConfig(local_steps=steps, batch_size=2, learning_rate=3e-2), seed=0)
    return client


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_merged_generation_gives_the_unmerged_answers(name, cache_dir):
    # tiny-gpt2 stores its Conv1D weights transposed (fan_in_fan_out): the merge must too.
    clear_client_cache()
    client = _trained(load_client(name, LORA, cache_dir=cache_dir))
    plain = client.answer(
        PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=3, merge_adapter=False)
    )
    merged = client.answer(
        PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=3, merge_adapter=True)
    )
    with client.model.disable_adapter():
        base = client.answer(PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=3))
    assert base.texts != plain.texts  # the adapter changes answers: merging it is visible
    assert merged.texts == plain.texts and merged.finished == plain.finished
    np.testing.assert_allclose(merged.confidences, plain.confidences, atol=1e-4)
    clear_client_cache()


def test_merged_adapter_folds_w_plus_scaled_ba_and_restores_the_same_tensor(client):
    from fedsem_app.clients.lora import merged_adapter

    _trained(client)
    layer = next(m for n, m in client.model.named_modules() if n.endswith("q_proj"))
    weight = layer.get_base_layer().weight
    storage = weight.data_ptr()
    before = weight.detach().clone()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert layer.scaling["default"] == 2.0  # alpha 8 / rank 4
    with merged_adapter(client.model) as merged:
        assert merged is True
        torch.testing.assert_close(weight.data, before + 2.0 * b @ a)
        # The adapter path is off inside: the layer is the merged base layer alone.
        x = torch.randn(2, weight.shape[1])
        torch.testing.assert_close(layer(x), x @ (before + 2.0 * b @ a).T)
    assert weight.data_ptr() == storage and torch.equal(weight.data, before)  # the same memory


def test_merged_adapter_restores_weights_after_an_error(client):
    from fedsem_app.clients.lora import merged_adapter

    _trained(client)
    before = {n: p.detach().clone() for n, p in client.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(client.model):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in client.model.named_parameters())
    assert not client.model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters


def test_training_after_merged_generation_gives_the_same_adapter(cache_dir):
    # Two identical clients; one answers with the adapter merged between two trainings.
    # Restoring W exactly (not as (W + delta) - delta) makes the adapters bit-identical.
    settings = TrainConfig(local_steps=3, batch_size=2, learning_rate=1e-2)
    adapters = []
    for merge in (False, True):
        clear_client_cache()
        client = load_client("tiny-llama", LORA, cache_dir=cache_dir)
        client.train(PAIRS, settings, seed=0)
        client.answer(PROMPTS, GenerationConfig(max_new_tokens=8, merge_adapter=merge))
        client.train(PAIRS, settings, seed=1)
        adapters.append(client.adapter_state())
    plain, merged = adapters
    assert plain.keys() == merged.keys()
    assert all(np.array_equal(plain[k], merged[k]) for k in plain)
    clear_client_cache()


@pytest.mark.parametrize("kind", ["dora", "bfloat16"])
def test_merged_adapter_leaves_dora_and_half_precision_unmerged(kind, cache_dir):
    # DoRA rescales W + delta by a norm, so "W + delta" would be wrong; in bf16 a small
    # delta mostly rounds away when added to W. Both run with the adapter path instead.
    import peft

    from fedsem_app.clients.lora import merged_adapter
    from fedsem_app.clients.registry import load_base_model

    base, _, _ = load_base_model("tiny-llama", cache_dir, "cpu")
    if kind == "bfloat16":
        base = base.to(torch.bfloat16)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj"], use_dora=kind == "dora")
    )
    weight = next(m for n, m in model.named_modules() if n.endswith("q_proj")).get_base_layer()
    storage = weight.weight.data_ptr()
    with merged_adapter(model) as merged:
        assert merged is False and weight.weight.data_ptr() == storage
