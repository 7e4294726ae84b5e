"""Tiny random Llama checkpoints with latent (unfused) linears, written the way the family ships them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_DIMS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 1024,  # the embedded model's tokenizer (resources/tiny-bitcpm) fits
    "tie_word_embeddings": False,
    "max_position_embeddings": 256,
}


def tiny_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**(TINY_DIMS | overrides))


def tiny_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def write_latent_checkpoint(directory: Path, model: LlamaForCausalLM, dtype=torch.bfloat16, config_edits=None) -> Path:
    """``pytorch_model.bin`` (plain state dict) + config.json, optionally with wrong config fields."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
    config = model.config.to_dict() | (config_edits or {})
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    copy_tokenizer(directory)
    return directory


EMBEDDED = Path(__file__).resolve().parents[1] / "resources" / "tiny-bitcpm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def copy_tokenizer(directory: Path) -> None:
    """The embedded model's tokenizer (1024 tokens) and generation config."""
    for name in TOKENIZER_FILES:
        shutil.copy2(EMBEDDED / name, directory / name)


def write_plain_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A random-initialised plain Llama as a model directory (save_pretrained, bf16 safetensors): hidden size 128
    (a multiple of the ternary group), tied embeddings, LongRoPE with equal factors switching at position 128.
    Its distributions are flat (transformers' default init), the opposite of the embedded model's."""
    import math

    head_dim = 32
    factors = [1.0] * (head_dim // 2)
    config = LlamaConfig(
        **(TINY_DIMS | {"hidden_size": 128, "head_dim": head_dim, "num_attention_heads": 4, "intermediate_size": 256,
                        "tie_word_embeddings": True, "max_position_embeddings": 2048}),
        rope_scaling={"rope_type": "longrope", "long_factor": factors, "short_factor": factors,
                      "original_max_position_embeddings": 128},
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    assert math.isclose(config.max_position_embeddings / 128, 16)
    model.save_pretrained(directory, safe_serialization=True)
    copy_tokenizer(directory)
    return directory
