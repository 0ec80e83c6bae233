"""Analytic communication calculator: expected values worked out by hand."""

from __future__ import annotations

import json

import pytest

from fedsem_app.tools import analytic_cli as analytic
from fedsem_app.tools.analytic import (
    Architecture,
    Assumptions,
    behaviour_bytes,
    compare_row,
    get_architecture,
    lora_bytes,
    lora_parameters,
    paper_sweep,
)

# hidden 128, 2 layers, 4 heads of 32, 2 KV heads, FFN 512
TINY = Architecture("tiny", 128, 2, 4, 2, 32, 512, 2000)


def test_lora_parameters_of_one_q_proj_is_rank_times_in_plus_out():
    # q_proj: 128 -> 4 * 32 = 128, rank 8: 8 * (128 + 128) = 2048 per layer, 2 layers
    assert lora_parameters(TINY, 8, "q_proj") == 2 * 2048


def test_lora_parameters_of_attention_with_grouped_kv_heads():
    # k_proj, v_proj: 128 -> 2 * 32 = 64: 8 * 192 = 1536 each; q, o: 2048 each
    # per layer 2048 + 1536 + 1536 + 2048 = 7168; 2 layers
    assert lora_parameters(TINY, 8, "attention") == 14336
    assert lora_parameters(TINY, 8, "q_proj,k_proj,v_proj,o_proj") == 14336


def test_lora_parameters_of_mlp_modules():
    # gate, up: 128 -> 512, down: 512 -> 128; rank 4: 4 * 640 = 2560 each, 3 per layer
    assert lora_parameters(TINY, 4, "gate_proj,up_proj,down_proj") == 2 * 3 * 2560
    assert lora_parameters(TINY, 4, "all") == lora_parameters(
        TINY, 4, "attention"
    ) + lora_parameters(TINY, 4, "gate_proj,up_proj,down_proj")


def test_smollm2_adapter_matches_the_measured_3_7_mb():
    # 576 hidden, 9 heads x 64, 3 KV heads x 64 = 192: q, o: 8 * 1152 = 9216,
    # k, v: 8 * 768 = 6144; per layer 30720, 30 layers = 921600 parameters;
    # float32: 3,686,400 bytes each way (measured on the wire: 3.7 MB per adapter).
    smollm2 = get_architecture("smollm2-135m")
    assert lora_parameters(smollm2, 8, "attention") == 921_600
    assert lora_bytes(smollm2, 8, "attention", 4, "up") == 3_686_400
    assert lora_bytes(smollm2, 8, "attention", 4, "both") == 7_372_800


def test_llama_405b_q_v_rank_8():
    # q: 8 * (16384 + 16384) = 262144; v: 16384 -> 8 * 128 = 1024: 8 * 17408 = 139264
    # (262144 + 139264) * 126 layers = 50,577,408
    assert lora_parameters(get_architecture("Llama-3.1-405B"), 8, "qv") == 50_577_408


def test_llama_8b_parameter_count_without_norms():
    # per layer: q, o 4096^2 = 16,777,216; k, v 4096 * 1024 = 4,194,304;
    # gate, up, down 4096 * 14336 = 58,720,256 -> 218,103,808; x 32 = 6,979,321,856;
    # embeddings and LM head 2 * 128256 * 4096 = 1,050,673,152
    assert get_architecture("llama-3.1-8b").num_parameters() == 8_029_995_008


def test_smollm2_parameter_count_with_tied_embeddings():
    # per layer: q, o 576^2 = 331,776; k, v 576 * 192 = 110,592; gate, up, down
    # 576 * 1536 = 884,736 -> 3,538,944; x 30 = 106,168,320; one 49152 x 576 table
    # (tied LM head) = 28,311,552 -> 134,479,872 (the published 135M less norms)
    assert get_architecture("smollm2-135m").num_parameters() == 134_479_872


def test_behaviour_bytes_up_and_both():
    # up: 16 answers x 32 tokens x 4 B = 2048; down: 16 x (20 + 32) x 4 = 3328
    assert behaviour_bytes(16, 32, 4, prompt_tokens=20, directions="up") == 2048
    assert behaviour_bytes(16, 32, 4, prompt_tokens=20, directions="both") == 2048 + 3328


def test_compare_row_ratio_and_clients_cancel():
    smollm2 = get_architecture("SmolLM2-135M")
    one = compare_row(smollm2, Assumptions())  # defaults: rank 8 attention fp32, 16 x 32 x 4
    assert one["lora-bytes"] == 7_372_800
    assert one["behaviour-bytes"] == 5376
    assert one["ratio"] == pytest.approx(7_372_800 / 5376)  # 1371.4
    three = compare_row(smollm2, Assumptions(clients=3))
    assert three["lora-bytes"] == 3 * 7_372_800
    assert three["ratio"] == pytest.approx(one["ratio"])


def test_paper_sweep_finds_a_budget_near_1006x_for_405b():
    rows = paper_sweep(
        get_architecture("Llama-3.1-405B"),
        ranks=(8,),
        targets=("attention",),
        bytes_per_param=(4.0,),
        prompts=(100, 1000),
        answer_tokens=(100.0, 1000.0),
    )
    (row,) = rows
    # 802,816 params per layer x 126 = 101,154,816; x 4 B = 404,619,264 B per transfer
    assert row["lora-bytes"] == 404_619_264
    assert row["needed-bytes"] == pytest.approx(404_619_264 / 1006)
    # 1000 x 100 and 100 x 1000 tokens tie at 400,000 B; the first budget wins
    assert (row["prompts"], row["answer_tokens"]) == (100, 1000.0)
    assert row["ratio"] == pytest.approx(404_619_264 / 400_000)  # 1011.5x


def test_lora_formula_matches_peft_on_a_real_model():
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model = peft.get_peft_model(
        LlamaForCausalLM(config),
        peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # q, o: 8 * 128 = 1024; k, v: 64 -> 32: 8 * 96 = 768; (1024 + 768) * 2 * 2 layers
    assert trainable == 7168
    assert lora_parameters(Architecture("t", 64, 2, 4, 2, 16, 128, 100), 8, "attention") == 7168


@pytest.mark.parametrize(
    "call",
    [
        lambda: lora_parameters(TINY, 0, "q_proj"),
        lambda: lora_parameters(TINY, 8, "c_attn"),
        lambda: lora_parameters(TINY, 8, ""),
        lambda: lora_bytes(TINY, 8, "qv", 4, "sideways"),
        lambda: behaviour_bytes(16, 32, 0),
        lambda: get_architecture("gpt-5"),
    ],
)
def test_bad_inputs_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_command_prints_table_and_writes_files(tmp_path, capsys):
    code = analytic.main(
        ["--models", "smollm2-135m", "--sweep", "llama-3.1-405b", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| SmolLM2-135M |" in out and "1,371x" in out
    data = json.loads((tmp_path / "analytic.json").read_text())
    assert data["models"][0]["lora-params"] == 921_600
    assert (tmp_path / "sweep.csv").exists()


def test_command_with_custom_architecture_and_unknown_model(capsys):
    assert analytic.main(["--arch", "128,2,4,2,32,512,2000", "--targets", "q_proj"]) == 0
    assert "| custom |" in capsys.readouterr().out
    assert analytic.main(["--models", "nope"]) == 2
