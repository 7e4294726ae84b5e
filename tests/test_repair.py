import json

import pytest

from npuport.core.errors import NpuportError
from npuport.weights.repair_config import field_table, repair

DERIVED = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 96,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}


def _config(tmp_path, **fields):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 256}
    config |= DERIVED | fields
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def _status(report):
    return {row["field"]: row["status"] for row in report["fields"]}


def test_wrong_fields_repaired_and_result_loads(tmp_path):
    path = _config(tmp_path, hidden_size=80, num_hidden_layers=3, num_attention_heads=8, intermediate_size=256)
    config, report = repair(path, {"derived": DERIVED, "ambiguities": []})
    repaired = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"]
    assert sorted(report["repaired"]) == repaired
    assert _status(report)["vocab_size"] == "ok"
    assert _status(report)["max_position_embeddings"] == "not derivable"
    assert {k: config[k] for k in DERIVED} == DERIVED
    assert config["max_position_embeddings"] == 256  # kept as declared
    assert report["transformers_config_class"] == "LlamaConfig"


def test_field_missing_from_config_is_added():
    table = field_table({}, DERIVED)
    assert all(row["status"] == "repaired" for row in table if row["derived"] is not None)


def test_underivable_field_keeps_declared_value(tmp_path):
    path = _config(tmp_path)
    derived = DERIVED | {"num_attention_heads": None, "head_dim": None}
    config, report = repair(path, {"derived": derived, "ambiguities": [{"field": "head_dim"}]})
    assert config["num_attention_heads"] == 4 and config["head_dim"] == 16
    assert {"num_attention_heads", "head_dim"} <= set(report["not_derivable"])
    assert report["ambiguities"] == [{"field": "head_dim"}]


def test_config_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{hidden_size: 2048")
    with pytest.raises(NpuportError, match=r"config\.json: not valid JSON"):
        repair(path, {"derived": DERIVED})


def test_config_not_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"name": "\xff\xfe"}')
    with pytest.raises(NpuportError, match="not valid UTF-8"):
        repair(path, {"derived": DERIVED})


def test_missing_config(tmp_path):
    with pytest.raises(NpuportError, match="no config.json"):
        repair(tmp_path / "config.json", {"derived": DERIVED})


def test_remote_code_config_not_loaded_without_trust(tmp_path):
    path = _config(tmp_path, auto_map={"AutoConfig": "configuration_x.XConfig"})
    _, report = repair(path, {"derived": DERIVED})
    assert report["transformers_config_class"].startswith("not checked")


# --- the config of the plain model: QAT declarations and the QAT forward's auto_map go ------------------------------

QAT_CODE = {"found": True, "evidence": [{"kind": "modeling_code", "file": "modeling_q.py"}]}
QAT_DECLARED = {"found": True, "evidence": [{"kind": "config", "key": "quantization_config"}]}
AUTO_MAP = {"AutoModelForCausalLM": "modeling_q.QForCausalLM", "AutoTokenizer": ["tok.T", None]}


def test_the_qat_forward_auto_map_is_dropped_for_the_plain_llama(tmp_path):
    path = _config(tmp_path, auto_map=AUTO_MAP)
    config, report = repair(path, {"derived": DERIVED | {"qat": QAT_CODE}, "ambiguities": []})
    assert config["auto_map"] == {"AutoTokenizer": ["tok.T", None]}  # tokenizer code is not the QAT forward
    assert report["removed"][0]["key"] == "auto_map" and "modeling_q.py" in report["removed"][0]["reason"]
    assert report["removed"][0]["value"] == {"AutoModelForCausalLM": "modeling_q.QForCausalLM"}


def test_other_remote_code_stays(tmp_path):
    path = _config(tmp_path, auto_map=AUTO_MAP)
    config, report = repair(path, {"derived": DERIVED | {"qat": {"found": False, "evidence": []}}})
    assert config["auto_map"] == AUTO_MAP and report["removed"] == []
    assert report["transformers_config_class"].startswith("not checked")
    minicpm = _config(tmp_path, auto_map=AUTO_MAP, model_type="minicpm")  # not a stock Llama: its code is needed
    config, report = repair(minicpm, {"derived": DERIVED | {"qat": QAT_CODE}})
    assert config["auto_map"] == AUTO_MAP and report["removed"] == []


def test_a_ternary_declaration_is_dropped_and_the_config_loads(tmp_path):
    path = _config(tmp_path, quantization_config={"quant_method": "ternary", "group_size": 128})
    config, report = repair(path, {"derived": DERIVED | {"qat": QAT_DECLARED}})
    assert "quantization_config" not in config
    assert report["removed"] == [
        {"key": "quantization_config", "value": {"quant_method": "ternary", "group_size": 128},
         "reason": "ternary QAT declaration: the served model is plain"}
    ]  # fmt: skip
    assert report["transformers_config_class"] == "LlamaConfig"
