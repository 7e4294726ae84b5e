"""Architecture introspection: derived fields, head-layout rules, ternary sampling, mismatches, bad layouts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from checkpoint_factory import Arch, llama_state_dict, longrope_scaling, ternary_weight, write_checkpoint

from npuport.core.errors import NpuportError
from npuport.weights.introspect import DERIVED_FIELDS, head_layouts, introspect_checkpoint, sample_row_indices

ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
)


def _introspect(tmp_path, arch, sd=None, fmt="safetensors", shards=1, config="auto", **kwargs):
    sd = llama_state_dict(arch) if sd is None else sd
    config = arch.config() if config == "auto" else config
    write_checkpoint(tmp_path, sd, fmt, shards, config)
    doc = introspect_checkpoint(tmp_path, **kwargs)
    json.dumps(doc, allow_nan=False)  # JSON-ready
    return doc


@pytest.mark.parametrize(("fmt", "shards"), [("safetensors", 1), ("safetensors", 2), ("bin", 1), ("bin", 3)])
@pytest.mark.parametrize(
    "arch",
    [
        Arch(),
        Arch(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=6,
            head_dim=8,
            intermediate_size=80,
            vocab_size=100,
            attention_bias=True,
        ),
        Arch(num_attention_heads=2, num_key_value_heads=1, head_dim=40, mlp_bias=True, tie_word_embeddings=True),
    ],
    ids=["gqa", "mha-bias", "head-dim-not-hidden-over-heads"],
)
def test_every_derived_field(tmp_path, fmt, shards, arch):
    sd = llama_state_dict(arch)
    doc = _introspect(tmp_path, arch, sd, fmt, shards)
    derived = doc["derived"]
    for field in ARCH_FIELDS:
        assert derived[field] == getattr(arch, field), field
    assert derived["dtype"] == "bfloat16"
    assert derived["parameter_count"] == sum(t.numel() for t in sd.values())
    assert derived["total_bytes"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert derived["tensor_count"] == len(sd)
    assert derived["quantizer_modules"] == []
    assert derived["qat"]["found"] is False and derived["qat"]["summary"].startswith("no sign of ternary QAT")
    assert doc["checkpoint"]["format"] == fmt and len(doc["checkpoint"]["files"]) == shards
    assert doc["mismatches"] == [] and doc["ambiguities"] == []
    assert set(doc["declared"]) == set(DERIVED_FIELDS)
    assert all(isinstance(doc["sources"][f], str) and doc["sources"][f] for f in derived)
    assert "config.json head_dim" in doc["sources"]["head_dim"]


def test_tied_bin_with_shared_lm_head_counts_parameters_once(tmp_path):
    arch = Arch(tie_word_embeddings=True)
    sd = llama_state_dict(arch)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    doc = _introspect(tmp_path, arch, sd, "bin")
    assert doc["derived"]["tie_word_embeddings"] is True
    assert "same bytes" in doc["sources"]["tie_word_embeddings"]
    unique = [t for n, t in sd.items() if n != "lm_head.weight"]
    assert doc["derived"]["parameter_count"] == sum(t.numel() for t in unique)
    assert doc["derived"]["tensor_count"] == len(sd)


def test_untied_lm_head_equal_values_but_separate_storage_is_untied(tmp_path):
    arch = Arch()
    sd = llama_state_dict(arch)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    doc = _introspect(tmp_path, arch, sd, "bin")
    assert doc["derived"]["tie_word_embeddings"] is False


def test_dtype_is_the_one_holding_most_bytes(tmp_path):
    arch = Arch(vocab_size=4096)
    sd = llama_state_dict(arch)
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].float()
    sd["lm_head.weight"] = sd["lm_head.weight"].float()
    doc = _introspect(tmp_path, arch, sd)
    assert doc["derived"]["dtype"] == "float32"
    assert doc["mismatches"] == [{"field": "dtype", "declared": "bfloat16", "derived": "float32"}]


# -- head layout rules ----------------------------------------------------------------------------------


def _assert_heads(doc, arch):
    for field in ("num_attention_heads", "num_key_value_heads", "head_dim"):
        assert doc["derived"][field] == getattr(arch, field)


def test_ambiguity_without_any_deciding_rule(tmp_path):
    arch = Arch()  # q out 64, k out 32
    config = arch.config(head_dim=None, num_attention_heads=None)
    doc = _introspect(tmp_path, arch, config=config)
    for field in ("num_attention_heads", "num_key_value_heads", "head_dim"):
        assert doc["derived"][field] is None
        assert doc["sources"][field].startswith("not derivable")
    fields = {a["field"] for a in doc["ambiguities"]}
    assert fields == {"num_attention_heads", "num_key_value_heads", "head_dim"}
    candidates = doc["ambiguities"][0]["candidates"]
    assert {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16} in candidates
    assert {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32} in candidates
    for c in candidates:
        assert c["num_attention_heads"] * c["head_dim"] == 64 and c["num_key_value_heads"] * c["head_dim"] == 32
    assert all(a["chosen"] is None for a in doc["ambiguities"])
    # the other fields are still derived
    assert doc["derived"]["hidden_size"] == 64 and doc["derived"]["num_hidden_layers"] == 2


def test_ambiguity_lists_rejected_config_values(tmp_path):
    arch = Arch()
    config = arch.config(head_dim=24, hidden_size=96, num_attention_heads=4)  # 24 divides neither 64 nor 32
    doc = _introspect(tmp_path, arch, config=config)
    assert doc["derived"]["head_dim"] is None
    assert "config.json head_dim gives 24, inconsistent" in doc["ambiguities"][0]["reason"]


def test_missing_config_gives_null_declared_fields_and_a_note(tmp_path):
    arch = Arch()
    doc = _introspect(tmp_path, arch, config=None)
    assert all(v is None for v in doc["declared"].values())
    assert any("config.json" in n for n in doc["notes"])
    assert doc["mismatches"] == []
    assert doc["derived"]["head_dim"] is None  # nothing decides the head layout


def test_rule_config_hidden_over_heads(tmp_path):
    arch = Arch()
    doc = _introspect(tmp_path, arch, config=arch.config(head_dim=None))
    _assert_heads(doc, arch)
    assert "hidden_size / num_attention_heads" in doc["sources"]["head_dim"]


def test_hidden_over_heads_is_not_used_when_config_hidden_is_wrong(tmp_path):
    arch = Arch()
    # 128 / 8 = 16 would happen to fit, but the config's hidden size contradicts the weights
    doc = _introspect(tmp_path, arch, config=arch.config(head_dim=None, hidden_size=128, num_attention_heads=8))
    assert doc["derived"]["head_dim"] is None


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters", "nested_rope_parameters"])
def test_rule_longrope_factor_length(tmp_path, key):
    arch = Arch()
    # The reference's wrong config: every size off, no head_dim, so only the rope factors decide.
    rope = longrope_scaling(arch.head_dim)
    extra = {"rope_parameters": {"full_attention": rope}} if key.startswith("nested") else {key: rope}
    config = arch.config(head_dim=None, hidden_size=80, num_attention_heads=8, **extra)
    doc = _introspect(tmp_path, arch, config=config)
    _assert_heads(doc, arch)
    assert "long_factor length 8" in doc["sources"]["head_dim"]
    assert "rope" in doc["sources"]["head_dim"]


def test_rule_longrope_with_partial_rotary_factor(tmp_path):
    arch = Arch()
    config = arch.config(
        head_dim=None, num_attention_heads=None, rope_scaling=longrope_scaling(8), partial_rotary_factor=0.5
    )
    doc = _introspect(tmp_path, arch, config=config)
    _assert_heads(doc, arch)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_rule_inv_freq_tensor(tmp_path, fmt):
    arch = Arch()
    sd = llama_state_dict(arch, inv_freq=True)
    doc = _introspect(tmp_path, arch, sd, fmt, config=None)
    _assert_heads(doc, arch)
    assert "inv_freq" in doc["sources"]["head_dim"]


def test_config_head_dim_wins_over_disagreeing_rope_and_says_so(tmp_path):
    arch = Arch()
    config = arch.config(rope_scaling=longrope_scaling(8))  # factors imply head_dim 8, config says 16
    doc = _introspect(tmp_path, arch, config=config)
    _assert_heads(doc, arch)
    (amb,) = doc["ambiguities"]
    assert amb["field"] == "head_dim" and amb["chosen"] == 16
    assert {c["head_dim"] for c in amb["candidates"]} == {8, 16}


def test_head_layouts():
    assert head_layouts(2048, 256)[0] == {"num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256}
    assert {"num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128} in head_layouts(2048, 256)
    assert head_layouts(96, 64) == []  # 64 does not divide 96: q heads cannot be a multiple of kv heads


# -- mismatches --------------------------------------------------------------------------------------------


def test_mismatches_against_a_wrong_config(tmp_path):
    arch = Arch(extra={"rope_scaling": longrope_scaling(16)})
    wrong = {"hidden_size": 80, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 160}
    config = arch.config(head_dim=None, **wrong)
    doc = _introspect(tmp_path, arch, config=config)
    got = {m["field"]: (m["declared"], m["derived"]) for m in doc["mismatches"]}
    assert got == {f: (v, getattr(arch, f)) for f, v in wrong.items()}
    assert doc["declared"]["num_key_value_heads"] == 2 and doc["declared"]["head_dim"] is None
    _assert_heads(doc, arch)


def test_config_that_is_not_json_or_not_utf8(tmp_path):
    arch = Arch()
    write_checkpoint(tmp_path, llama_state_dict(arch))
    (tmp_path / "config.json").write_text("{hidden_size: 3")
    with pytest.raises(NpuportError, match="config.json: not valid JSON"):
        introspect_checkpoint(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(NpuportError, match="config.json: not valid UTF-8"):
        introspect_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(NpuportError, match="config.json: holds a JSON list"):
        introspect_checkpoint(tmp_path)


# -- quantizer modules and ternary check -------------------------------------------------------------------


def test_quantizer_modules(tmp_path):
    arch = Arch()
    sd = llama_state_dict(arch, quantizer_params=True)
    sd["model.layers.0.self_attn.q_proj.weight_scale"] = torch.ones(1)
    sd["model.layers.1.self_attn.q_proj.weight_scale"] = torch.ones(1)
    doc = _introspect(tmp_path, arch, sd)
    modules = doc["derived"]["quantizer_modules"]
    assert "model.layers.0.mlp.down_proj.weight_quantizer" in modules
    assert "model.layers.1.self_attn.q_proj" in modules
    assert len(modules) == 2 * 7 + 2
    # quantizer wrapper modules are ternary QAT evidence; a bare weight_scale leaf (FP8, int packs) is not
    evidence = doc["derived"]["qat"]["evidence"]
    assert [e["kind"] for e in evidence] == ["tensors"] and evidence[0]["module_count"] == 2 * 7


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("group", [16, 32])
def test_fused_weights_are_ternary_with_their_group_size(tmp_path, fmt, group):
    arch = Arch()
    doc = _introspect(tmp_path, arch, llama_state_dict(arch, ternary_group_size=group), fmt)
    t = doc["derived"]["ternary"]
    assert t["status"] == "ternary" and t["group_size"] == group and t["per_row"] is False
    assert t["tensors_checked"] == 2 * 7
    assert all(v["ternary"] and v["group_size"] == group for v in t["tensors"].values())


def test_per_row_ternary_weights(tmp_path):
    arch = Arch(intermediate_size=96)
    doc = _introspect(tmp_path, arch, llama_state_dict(arch, ternary_group_size=0))
    t = doc["derived"]["ternary"]
    assert t["status"] == "ternary" and t["per_row"] is True
    assert t["tensors"]["model.layers.0.mlp.down_proj.weight"]["group_size"] == 96
    assert t["tensors"]["model.layers.0.mlp.up_proj.weight"]["group_size"] == 64
    assert t["group_size"] == math.gcd(96, 64)


def test_latent_weights(tmp_path):
    arch = Arch()
    doc = _introspect(tmp_path, arch, llama_state_dict(arch))
    t = doc["derived"]["ternary"]
    assert t["status"] == "latent" and t["group_size"] is None
    assert not any(v["ternary"] for v in t["tensors"].values())


def test_mixed_weights_and_sampling_accounting(tmp_path):
    arch = Arch()
    sd = llama_state_dict(arch, ternary_group_size=16)
    latent = "model.layers.1.mlp.gate_proj.weight"
    sd[latent] = (torch.randn(sd[latent].shape) * 0.02).to(torch.bfloat16)
    doc = _introspect(tmp_path, arch, sd, sample_rows=5, seed=7)
    t = doc["derived"]["ternary"]
    assert t["status"] == "mixed" and t["group_size"] is None
    assert t["tensors"][latent]["ternary"] is False
    assert t["rows_sampled_per_tensor"] == 5
    assert all(v["rows_sampled"] == 5 for v in t["tensors"].values())
    expected_values = sum(5 * sd[n].shape[1] for n in t["tensors"])
    assert t["values_checked"] == expected_values


def test_sampling_all_rows_catches_one_bad_value(tmp_path):
    arch = Arch()
    sd = llama_state_dict(arch, ternary_group_size=16)
    name = "model.layers.0.self_attn.k_proj.weight"  # 32 rows
    sd[name][17, 3] = 0.123
    doc = _introspect(tmp_path, arch, sd, sample_rows=64)
    t = doc["derived"]["ternary"]
    assert t["tensors"][name] == {"ternary": False, "group_size": None, "rows_sampled": 32}
    assert t["status"] == "mixed"


def test_sample_is_deterministic_and_seeded():
    a = sample_row_indices(1000, 8, 0, "x")
    assert a == sample_row_indices(1000, 8, 0, "x") and len(set(a)) == 8 and a == sorted(a)
    assert a != sample_row_indices(1000, 8, 1, "x")
    assert sample_row_indices(5, 8, 0, "x") == [0, 1, 2, 3, 4]


def test_ternary_weight_helper_is_ternary_per_group():
    w = ternary_weight(4, 64, 16, torch.Generator().manual_seed(0)).reshape(4, 4, 16)
    for row in w:
        for group in row:
            assert len(set(group.abs().tolist()) - {0.0}) == 1


# -- structural errors ----------------------------------------------------------------------------------


def test_missing_layer_is_an_error_naming_it(tmp_path):
    arch = Arch(num_hidden_layers=3)
    sd = {k: v for k, v in llama_state_dict(arch).items() if ".layers.1." not in k}
    write_checkpoint(tmp_path, sd, config=arch.config())
    with pytest.raises(NpuportError, match=r"model\.layers\.1\.\*"):
        introspect_checkpoint(tmp_path)


def test_layer_missing_one_tensor(tmp_path):
    arch = Arch(num_hidden_layers=3)
    sd = llama_state_dict(arch)
    del sd["model.layers.2.mlp.up_proj.weight"]
    write_checkpoint(tmp_path, sd)
    with pytest.raises(NpuportError, match=r"model\.layers\.2\.mlp\.up_proj\.weight missing"):
        introspect_checkpoint(tmp_path)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shapes_that_contradict_across_layers(tmp_path, fmt):
    arch = Arch()
    sd = llama_state_dict(arch)
    sd["model.layers.1.mlp.gate_proj.weight"] = torch.zeros(80, 64, dtype=torch.bfloat16)
    write_checkpoint(tmp_path, sd, fmt)
    with pytest.raises(NpuportError, match=r"model\.layers\.1\.mlp\.gate_proj\.weight is \[80, 64\]") as info:
        introspect_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_projection_contradicting_hidden_size(tmp_path):
    arch = Arch()
    sd = llama_state_dict(arch)
    for layer in range(2):
        sd[f"model.layers.{layer}.self_attn.o_proj.weight"] = torch.zeros(48, 64, dtype=torch.bfloat16)
    write_checkpoint(tmp_path, sd)
    with pytest.raises(
        NpuportError, match=r"model\.layers\.0\.self_attn\.o_proj\.weight is \[48, 64\], expected \[64, 64\]"
    ):
        introspect_checkpoint(tmp_path)


def test_not_a_llama_checkpoint(tmp_path):
    write_checkpoint(tmp_path, {"encoder.weight": torch.ones(2, 2)})
    with pytest.raises(NpuportError, match="Llama-style decoder"):
        introspect_checkpoint(tmp_path)


def test_bad_sample_rows(tmp_path):
    with pytest.raises(NpuportError, match="sample_rows: 0 is not a positive integer"):
        introspect_checkpoint(tmp_path, sample_rows=0)
