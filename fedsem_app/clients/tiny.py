"""Tiny random-init models: offline, deterministic, fast; for tests and smoke runs.

Runs on the client.

All tiny models share one byte-level BPE tokenizer trained on the construction-FAQ
texts. Built models are saved under ``cache_dir/<name>`` (with the tokenizer), so
every process, in simulation or deployment, loads bit-identical weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from fedsem_app.clients.registry import build_cached_folder, register_model

TOKENIZER_FOLDER = "tiny-tokenizer"
VOCAB_SIZE = 2000
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3, in this order
INIT_SEED = 1234  # fixed: the weights of a tiny model never depend on the run

HIDDEN = 128
LAYERS = 2
HEADS = 4
FFN = 512
MAX_POSITIONS = 512

# Size arguments under the names most configs use (Llama, Qwen2, GPT-NeoX).
STANDARD_SIZES: dict[str, object] = {
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "max_position_embeddings": MAX_POSITIONS,
}

# name -> (architecture, config class, size arguments)
TINY_MODELS: dict[str, tuple[str, type[PretrainedConfig], dict[str, object]]] = {
    "tiny-llama": ("llama", LlamaConfig, STANDARD_SIZES),
    "tiny-qwen2": ("qwen2", Qwen2Config, {**STANDARD_SIZES, "num_key_value_heads": 2}),
    "tiny-gpt-neox": ("gpt_neox", GPTNeoXConfig, STANDARD_SIZES),
    # GPT-2 and OPT name their sizes differently.
    "tiny-gpt2": (
        "gpt2",
        GPT2Config,
        dict(n_embd=HIDDEN, n_inner=FFN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POSITIONS),
    ),
    "tiny-opt": (
        "opt",
        OPTConfig,
        dict(
            hidden_size=HIDDEN,
            ffn_dim=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=MAX_POSITIONS,
            word_embed_proj_dim=HIDDEN,
        ),
    ),
}


def _training_texts() -> list[str]:
    # Imported on use: only the first build of the tokenizer needs the data package.
    import zaragoza_construction_faq

    rows = zaragoza_construction_faq.load(lang="en")
    return [text for row in rows for text in (row["q"], row["a"])]


def _train_tokenizer(folder: Path) -> None:
    """Train the byte-level BPE tokenizer on the FAQ and save it to ``folder``."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(), trainer=trainer)
    # Prepend BOS like Llama does, so an empty prompt still gives the model a token.
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    wrapped.save_pretrained(folder)


def load_tiny_tokenizer(cache_dir: Path) -> PreTrainedTokenizerFast:
    """Load the shared tiny tokenizer, trained once into ``cache_dir/tiny-tokenizer``."""
    folder = build_cached_folder(Path(cache_dir) / TOKENIZER_FOLDER, _train_tokenizer)
    return AutoTokenizer.from_pretrained(folder)


def build_tiny(
    name: str, config_cls: type[PretrainedConfig], sizes: dict[str, object], cache_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build (first call) or reload (later calls) the tiny model ``name``.

    Parameters
    ----------
    name
        Registry name; the model is cached under ``cache_dir/name``.
    config_cls
        transformers config class (or factory) of the architecture.
    sizes
        Architecture-specific size arguments.
    cache_dir
        Cache root.

    """
    tokenizer = load_tiny_tokenizer(cache_dir)

    def build(folder: Path) -> None:
        config = config_cls(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sizes,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    folder = build_cached_folder(Path(cache_dir) / name, build)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


def _register_tiny_models() -> None:
    for name, (architecture, config_cls, sizes) in TINY_MODELS.items():
        register_model(
            name,
            architecture=architecture,
            description=f"tiny random-init {architecture} (~1M params) for tests and smoke runs",
        )(functools.partial(build_tiny, name, config_cls, sizes))


_register_tiny_models()
