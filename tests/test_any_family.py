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
from fedsem_app.clients.lora import LORA_TARGET_MODULES, adapted_module_kinds
from fedsem_app.clients.tiny import load_tiny_tokenizer
from fedsem_app.config.sections import GenerationConfig, LoraConfig, TrainConfig

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


def test_the_gpu_profile_is_a_valid_run_config():
    import tomllib
    from pathlib import Path

    from fedsem_app.config.app import load_app_config

    profile = tomllib.loads((Path(__file__).parents[1] / "conf" / "gpu.toml").read_text())
    flat = {f"{section}.{k}": v for section, keys in profile.items() for k, v in keys.items()}
    cfg = load_app_config(flat)
    assert cfg.model.device == "cuda" and cfg.gen.batch_size == 32
    assert cfg.fedsem.prompts_per_round == 32 and cfg.train.max_seq_len == 256


def test_hub_and_folder_models_load_in_the_devices_dtype_through_the_hf_cache(
    cache_dir, monkeypatch
):
    from fedsem_app.clients import load_base_model, registry

    tiny = load_client("tiny-llama", LoraConfig(), cache_dir=cache_dir)  # builds the folder
    clear_client_cache()
    calls = []
    real = registry.AutoModelForCausalLM.from_pretrained

    def spy(source, **kwargs):
        calls.append(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(registry.AutoModelForCausalLM, "from_pretrained", spy)
    # As on a bf16 GPU: the weights come in bf16 straight away, no float32 copy first.
    monkeypatch.setattr(registry, "_dtype_for", lambda device: torch.bfloat16)
    model, _, architecture = load_base_model(str(cache_dir / "tiny-llama"), cache_dir, "cuda")
    assert architecture == "llama" and tiny.architecture == "llama"
    assert calls == [{"dtype": torch.bfloat16}]  # no private cache_dir: HF_HOME's cache
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
