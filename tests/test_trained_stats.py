"""The trained-statistics Llama (tests/trained_stats_factory.py): what trained models have and random weights lack is
there, measured with transformers (float32, eager attention) on the evaluation text's first 256 tokens."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from trained_stats_factory import (
    HEADS,
    LAYERS,
    MASSIVE,
    MASSIVE_LAYER,
    MASSIVE_RATIO,
    VOCAB_SIZE,
    build_trained_stats_llama,
    evaluation_ids,
    measure_trained_stats,
    shared_trained_stats_llama,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shared_trained_stats_llama(tmp_path_factory)


@pytest.fixture(scope="module")
def stats(model_dir) -> dict:
    return measure_trained_stats(model_dir, evaluation_ids(model_dir))


def test_massive_activations_appear_after_the_first_layers_at_the_first_token(stats):
    layers = stats["layers"]
    assert len(layers) == LAYERS and stats["tokens"] == 256
    assert all(layer["ratio"] < MASSIVE_RATIO and not layer["dims"] for layer in layers[:MASSIVE_LAYER])
    for layer in layers[MASSIVE_LAYER:]:  # from layer 1 on, to the last: ~1000x the median, two dims, token 0
        assert layer["ratio"] >= 10 * MASSIVE_RATIO, layer
        assert sorted(layer["dims"]) == sorted(MASSIVE) and layer["positions"] == [0], layer


def test_later_layers_put_most_attention_on_the_first_token(stats):
    for attention in stats["attention"][: MASSIVE_LAYER + 1]:  # no sink before the massive activation exists
        assert max(attention["sink"]) < 0.1, attention
    for attention in stats["attention"][MASSIVE_LAYER + 1 :]:
        sink = attention["sink"]
        assert len(sink) == HEADS and sum(sink) / HEADS >= 0.6, attention
        assert sum(share >= 0.5 for share in sink) >= HEADS - 2, attention  # most heads, not all


def test_first_layer_attention_is_peaked(stats):
    first, second = stats["attention"][0]["peak"], stats["attention"][1]["peak"]
    assert min(first) >= 0.25 and sum(first) / HEADS >= 0.4, first  # on up to 256 keys: measured 0.33-0.68
    assert max(second) < 0.2, second  # a random layer's heads, for contrast


def test_rmsnorm_weights_are_wide_ranged(stats):
    assert len(stats["norms"]) == 2 * LAYERS + 1
    assert all(norm["ratio"] >= 100 and norm["max"] >= 4 for norm in stats["norms"].values()), stats["norms"]


def test_the_bf16_forward_is_finite_and_the_model_predicts_text(stats, model_dir):
    assert stats["bf16_finite"]
    assert stats["text_loss"] < math.log(VOCAB_SIZE) - 2, stats["text_loss"]
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([evaluation_ids(model_dir)])
    with torch.no_grad():
        full, low = (AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)(ids).logits[0].float()
                     for dtype in (torch.float32, torch.bfloat16))  # fmt: skip
    assert float((full.argmax(-1) == low.argmax(-1)).float().mean()) >= 0.95


def test_the_files_are_what_save_pretrained_writes_with_the_library_defaults(model_dir):
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names  # fmt: skip
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"] and config["tie_word_embeddings"] is False
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["model_max_length"] == VERY_LARGE_INTEGER  # no length limit: the library's default
    generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == 2
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "什么是三元量化? The capital of France is Paris."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 1 and tokenizer.decode(ids, skip_special_tokens=True) == text


def test_the_build_is_deterministic(model_dir, tmp_path):
    again = build_trained_stats_llama(tmp_path / "again")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        digests = {hashlib.sha256((directory / name).read_bytes()).hexdigest() for directory in (again, model_dir)}
        assert len(digests) == 1, name
