"""Any causal LM without naming its modules: families neither the registry nor the app knows.

Tiny random-init models of four families (built offline from transformers configs, with
the tiny tokenizer) load as local folders and get LoRA from peft's per-family mapping or,
where peft has none (phi3), on every linear layer but the output head.
"""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, BloomConfig, FalconConfig, Gemma2Config, Phi3Config

from fedsem_app.clients import clear_client_cache, load_client
from fedsem_app.clients.base import LORA_TARGET_MODULES, adapted_module_kinds
from fedsem_app.clients.tiny import load_tiny_tokenizer
from fedsem_app.config import GenerationConfig, LoraConfig, TrainConfig

SIZES = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
# family -> (config, the module kinds LoRA must adapt: peft's mapping, or all linear layers)
FAMILIES = {
    "gemma2": (
        lambda: Gemma2Config(**SIZES, intermediate_size=128, num_key_value_heads=2, head_dim=16),
        ["q_proj", "v_proj"],
    ),
    "falcon": (lambda: FalconConfig(**SIZES), ["query_key_value"]),
    "bloom": (lambda: BloomConfig(hidden_size=64, n_layer=1, n_head=4), ["query_key_value"]),
    # Not in peft's mapping: every linear layer (fused qkv and gate/up), never lm_head.
    "phi3": (
        lambda: Phi3Config(**SIZES, intermediate_size=128, pad_token_id=0),
        ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
    ),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_outside_the_registry_trains_and_answers(family, tmp_path, cache_dir, caplog):
    assert family not in LORA_TARGET_MODULES
    make_config, expected = FAMILIES[family]
    tokenizer = load_tiny_tokenizer(cache_dir)
    config = make_config()
    config.vocab_size = len(tokenizer)
    config.eos_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
    torch.manual_seed(0)
    folder = tmp_path / family
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    with caplog.at_level(logging.INFO):
        client = load_client(str(folder), LoraConfig(), cache_dir=cache_dir, template="plain")
    try:
        assert client.architecture == family
        assert adapted_module_kinds(client.model) == expected
        assert f"LoRA on {', '.join(expected)}" in caplog.text
        fresh = client.adapter_state()
        stats = client.train(
            [("Why cure concrete?", "It gains strength.")] * 2,
            TrainConfig(local_steps=1, batch_size=2, max_seq_len=32),
            seed=0,
        )
        assert stats["train-steps"] == 1 and stats["train-loss"] > 0
        trained = client.adapter_state()
        assert any((trained[k] != fresh[k]).any() for k in fresh)  # LoRA B left zero
        texts, confidences = client.generate(["Why cure concrete?"], GenerationConfig(4, 1))
        assert len(texts) == 1 and confidences[0] <= 0
    finally:
        clear_client_cache()
