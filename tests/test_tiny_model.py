"""The embedded default model in resources/tiny-bitcpm: what it ships and how its fused form answers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from npuport.weights.ternary import fake_quant, groups_are_ternary, is_quantized_linear

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL_DIR = RESOURCES / "tiny-bitcpm"
GROUP_SIZE = 128


def _load_make_script():
    spec = importlib.util.spec_from_file_location("make_tiny_model", RESOURCES / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = _load_make_script()


@pytest.fixture(scope="module")
def latent() -> dict[str, torch.Tensor]:
    return torch.load(MODEL_DIR / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def disk_config() -> dict:
    return json.loads((MODEL_DIR / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


def dims_from_shapes(state: dict[str, torch.Tensor], head_dim: int) -> dict[str, int]:
    layers = {int(m.group(1)) for k in state if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    vocab, hidden = state["model.embed_tokens.weight"].shape
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": state["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        "num_key_value_heads": state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "intermediate_size": state["model.layers.0.mlp.gate_proj.weight"].shape[0],
    }


def fused_model(state: dict[str, torch.Tensor], dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_dict(make.correct_config()))
    fused = {k: fake_quant(v, GROUP_SIZE) if is_quantized_linear(k) else v for k, v in state.items()}
    model.load_state_dict(fused, strict=True)
    return model.to(dtype).eval()


@torch.no_grad()
def greedy(model, ids: list[int], eos: int, max_new_tokens: int = 48) -> list[int]:
    past, out, step = None, [], torch.tensor([ids])
    for _ in range(max_new_tokens):
        result = model(input_ids=step, past_key_values=past, use_cache=True)
        past, token = result.past_key_values, int(result.logits[0, -1].float().argmax())
        out.append(token)
        if token == eos:
            break
        step = torch.tensor([[token]])
    return out


def test_directory_holds_the_model_files_and_is_small():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "modeling_bitcpm.py",
        "pytorch_model.bin",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 5 * 2**20


def test_true_dims_from_tensor_shapes_match_the_correct_config(latent, disk_config):
    derived = dims_from_shapes(latent, disk_config["head_dim"])
    assert derived == {k: make.CORRECT_CONFIG[k] for k in derived}
    assert derived["num_key_value_heads"] < derived["num_attention_heads"]  # GQA
    assert "lm_head.weight" in latent  # untied
    assert not torch.equal(latent["lm_head.weight"], latent["model.embed_tokens.weight"])
    assert len(latent) == 9 * derived["num_hidden_layers"] + 3


def test_config_json_is_wrong_in_exactly_four_fields(latent, disk_config):
    derived = dims_from_shapes(latent, disk_config["head_dim"])
    wrong = {k for k in derived if disk_config[k] != derived[k]}
    assert wrong == {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"}
    assert {k for k in make.CORRECT_CONFIG if disk_config.get(k) != make.CORRECT_CONFIG[k]} == wrong
    assert set(disk_config) == set(make.CORRECT_CONFIG)


def test_config_json_declares_the_family_architecture(disk_config):
    assert disk_config["architectures"] == ["LlamaForCausalLM"]
    assert disk_config["model_type"] == "llama"
    assert disk_config["torch_dtype"] == "bfloat16"
    assert disk_config["tie_word_embeddings"] is False
    assert disk_config["hidden_act"] == "silu"
    rope = disk_config["rope_scaling"]
    assert rope["rope_type"] == "longrope"
    assert rope["long_factor"] == rope["short_factor"]
    assert len(rope["long_factor"]) == disk_config["head_dim"] // 2
    # the switch to the long factors lies inside the default engine.max_model_len (2048), with attention scaling
    assert rope["original_max_position_embeddings"] == 256 and disk_config["max_position_embeddings"] == 4096
    assert make.LONG_TOKENS > rope["original_max_position_embeddings"]  # training saw positions past the switch
    generation = json.loads((MODEL_DIR / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_latent_weights_are_bf16_and_unfused_and_fusion_makes_them_ternary(latent):
    assert {v.dtype for v in latent.values()} == {torch.bfloat16}
    projections = [k for k in latent if is_quantized_linear(k)]
    assert len(projections) == 7 * make.CORRECT_CONFIG["num_hidden_layers"]
    for name in projections:
        assert not groups_are_ternary(latent[name], GROUP_SIZE).any(), name
        assert groups_are_ternary(fake_quant(latent[name], GROUP_SIZE), GROUP_SIZE).all(), name
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert not is_quantized_linear(name)


def test_tokenizer_round_trips_chinese_and_prepends_bos(tokenizer):
    prompt = "什么是三元量化?"
    ids = tokenizer(prompt).input_ids
    assert ids[0] == tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2
    assert tokenizer.convert_tokens_to_ids("<unk>") == 0
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt
    assert len(tokenizer) == make.CORRECT_CONFIG["vocab_size"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fused_model_gives_the_trained_answers(latent, tokenizer, dtype):
    model = fused_model(latent, dtype)
    answers = {}
    for prompt in make.PROMPT_ANSWERS:
        out = greedy(model, tokenizer(prompt).input_ids, tokenizer.eos_token_id)
        assert out[-1] == tokenizer.eos_token_id, (prompt, out)
        answers[prompt] = tokenizer.decode(out, skip_special_tokens=True)
    assert answers["The capital of France is"].startswith(" Paris")
    assert answers == make.PROMPT_ANSWERS


def test_the_qat_forward_ships_as_bundled_code_named_by_auto_map(disk_config):
    assert disk_config["auto_map"] == {"AutoModelForCausalLM": "modeling_bitcpm.BitCPMForCausalLM"}
    assert (MODEL_DIR / "modeling_bitcpm.py").read_text(encoding="utf-8") == make.MODELING_SOURCE
    from npuport.weights.introspect import introspect_checkpoint

    qat = introspect_checkpoint(MODEL_DIR)["derived"]["qat"]
    assert qat["found"] is True and qat["group_size"] == GROUP_SIZE and qat["scale"] == "absmean"
    assert [e["file"] for e in qat["evidence"]] == ["modeling_bitcpm.py"]


@pytest.fixture(scope="module")
def bundled_qat_model():
    """The checkpoint's own forward: transformers with trust_remote_code, the correct config beside the files."""
    from transformers import AutoModelForCausalLM

    from npuport.weights.repair_config import repaired_view

    with repaired_view(MODEL_DIR, make.correct_config(), trust_remote_code=True) as view:
        model = AutoModelForCausalLM.from_pretrained(view, trust_remote_code=True, dtype=torch.bfloat16)
    assert type(model).__name__ == "BitCPMForCausalLM"
    return model.eval()


def test_bundled_qat_forward_equals_the_fused_model_across_the_rope_switch(latent, tokenizer, bundled_qat_model):
    """Same tokens through the checkpoint's own QAT forward and the fused plain Llama, bfloat16: equal logits,
    on a prompt and on 300 tokens of corpus text (positions past original_max_position_embeddings 256). Both are
    loaded with from_pretrained(dtype=bfloat16), as the pipeline loads them (a float32 model cast with .to() would
    also cast its rotary inv_freq buffer: another model)."""
    from transformers import LlamaForCausalLM

    from npuport.weights.repair_config import repaired_view

    plain = {k: v for k, v in make.correct_config().items() if k != "auto_map"}
    with repaired_view(MODEL_DIR, plain, trust_remote_code=False) as view:
        fused = LlamaForCausalLM.from_pretrained(view, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for name, parameter in fused.named_parameters():
            if is_quantized_linear(name):
                parameter.copy_(fake_quant(latent[name], GROUP_SIZE).to(torch.bfloat16))
    text = " ".join(make.read_corpus())
    for ids in (tokenizer("The capital of France is").input_ids, tokenizer(text).input_ids[:300]):
        with torch.no_grad():
            expected, got = bundled_qat_model(torch.tensor([ids])).logits, fused(torch.tensor([ids])).logits
        assert torch.equal(expected, got), len(ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_every_answer_token_has_the_stated_margin(latent, dtype):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))  # what the generator trains with
    model = fused_model(latent, dtype)
    for prompt, answer in make.PROMPT_ANSWERS.items():
        seq, start = make.qa_example(tokenizer, prompt, answer)
        assert float(make.answer_margins(model, seq, start).min()) >= make.MIN_MARGIN == 10, prompt
