"""Tiny MiniCPM-architecture checkpoints, shipped the way openbmb ships them: remote code + auto_map.

transformers has no ``minicpm`` config class, so the checkpoint carries its own ``configuration_minicpm.py``
and ``modeling_minicpm.py`` (written below: a minimal re-implementation of the forward pass of openbmb's
modeling_minicpm.py, not a copy) and a config.json whose ``auto_map`` points at them. vLLM loads the same
directory with its native ``MiniCPMForCausalLM`` (trust_remote_code is needed only for the config class).

MiniCPM differs from Llama only by three scales (see npuport.weights.minicpm for the sources):
embeddings x scale_emb; each residual branch x scale_depth / sqrt(num_hidden_layers);
logits = lm_head(hidden / (hidden_size / dim_model_base)).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from npuport.weights.ternary import QUANTIZED_PROJECTIONS, fake_quant

EMBEDDED = Path(__file__).resolve().parents[1] / "resources" / "tiny-bitcpm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GROUP_SIZE = 32


def longrope_factors(head_dim: int) -> list[float]:
    return [round(1.0 + 0.25 * i, 4) for i in range(head_dim // 2)]


@dataclass
class MiniCPMArch:
    vocab_size: int = 1024  # the embedded model's tokenizer (resources/tiny-bitcpm)
    hidden_size: int = 96
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 3  # head_dim 32 = hidden_size / heads, as MiniCPM derives it
    num_key_value_heads: int = 1
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    scale_emb: float = 12.0
    scale_depth: float = 1.4
    dim_model_base: int = 16  # hidden / dim_model_base = 6, not a power of two: the division is not exact
    tie_word_embeddings: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def config(self, dtype: str = "float32") -> dict:
        doc = {k: v for k, v in asdict(self).items() if k != "extra"}
        factors = longrope_factors(self.head_dim)
        doc.update(
            architectures=["MiniCPMForCausalLM"],
            model_type="minicpm",
            auto_map={
                "AutoConfig": "configuration_minicpm.MiniCPMConfig",
                "AutoModel": "modeling_minicpm.MiniCPMModel",
                "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
            },
            hidden_act="silu",
            bos_token_id=1,
            eos_token_id=2,
            torch_dtype=dtype,
            # LongRoPE as MiniCPM4 ships it; equal limits keep the cos/sin amplitude factor at 1
            rope_scaling={"rope_type": "longrope", "long_factor": factors, "short_factor": factors,
                          "original_max_position_embeddings": self.max_position_embeddings},
        )  # fmt: skip
        doc.update(self.extra)
        return doc


def minicpm_state_dict(arch: MiniCPMArch, ternary: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (float32). The seven projections are fused ternary per group of GROUP_SIZE inputs when
    ``ternary``, latent otherwise. Tied embeddings: no lm_head.weight, as MiniCPM checkpoints ship it.

    Magnitudes: a small embedding (so that x scale_emb it does not drown the branches, else a tied head just
    repeats the last token) and a large final norm weight (so that logits are spread out)."""
    g = torch.Generator().manual_seed(seed)
    h, inter = arch.hidden_size, arch.intermediate_size
    q_out, kv_out = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    shapes = {
        "self_attn.q_proj": (q_out, h),
        "self_attn.k_proj": (kv_out, h),
        "self_attn.v_proj": (kv_out, h),
        "self_attn.o_proj": (h, q_out),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    sd = {"model.embed_tokens.weight": torch.randn(arch.vocab_size, h, generator=g) * 0.2}
    for layer in range(arch.num_hidden_layers):
        p = f"model.layers.{layer}."
        for proj in QUANTIZED_PROJECTIONS:
            rows, cols = shapes[proj]
            weight = torch.randn(rows, cols, generator=g) * (6.0 / cols**0.5)
            sd[f"{p}{proj}.weight"] = fake_quant(weight, GROUP_SIZE) if ternary else weight
        sd[f"{p}input_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
        sd[f"{p}post_attention_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
    sd["model.norm.weight"] = 6.0 + 0.1 * torch.randn(h, generator=g)
    if not arch.tie_word_embeddings:
        sd["lm_head.weight"] = torch.randn(arch.vocab_size, h, generator=g) * 0.2
    return sd


def write_minicpm_checkpoint(
    directory: str | Path,
    arch: MiniCPMArch | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """model.safetensors + config.json (auto_map) + the remote code + the embedded model's tokenizer."""
    arch = arch or MiniCPMArch()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = minicpm_state_dict(arch) if state_dict is None else state_dict
    tensors = {k: v.to(dtype).contiguous() for k, v in state_dict.items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = arch.config(str(dtype).removeprefix("torch."))
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (directory / "configuration_minicpm.py").write_text(CONFIGURATION_MINICPM, encoding="utf-8")
    (directory / "modeling_minicpm.py").write_text(MODELING_MINICPM, encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copy2(EMBEDDED / name, directory / name)
    return directory


CONFIGURATION_MINICPM = '''\
"""MiniCPM configuration (test fixture): the fields openbmb's MiniCPMConfig adds to a Llama config."""

from transformers import PretrainedConfig


class MiniCPMConfig(PretrainedConfig):
    model_type = "minicpm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        scale_emb=1,
        dim_model_base=1,
        scale_depth=1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.scale_emb = scale_emb
        self.dim_model_base = dim_model_base
        self.scale_depth = scale_depth
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
'''

MODELING_MINICPM = '''\
"""MiniCPM forward pass (test fixture), written after openbmb's modeling_minicpm.py.

No KV cache: every call runs the whole sequence (the tests decode greedily with full forwards).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_minicpm import MiniCPMConfig


class MiniCPMRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class MiniCPMLongRoPE(nn.Module):
    """Rotary embedding; with a LongRoPE rope_scaling the frequencies are divided by the short or long factors
    and cos/sin multiplied by sqrt(1 + log(max / original_max) / log(original_max)), as MiniCPM4 does."""

    def __init__(self, dim, max_position_embeddings, base, rope_scaling=None):
        super().__init__()
        self.dim, self.base = dim, base
        self.rope_scaling = rope_scaling or {}
        original = self.rope_scaling.get("original_max_position_embeddings", max_position_embeddings)
        self.original_max_position_embeddings = original
        self.scaling_factor = math.sqrt(1 + math.log(max_position_embeddings / original) / math.log(original))

    def forward(self, seq_len, device):
        # computed per call, not kept as a tensor: transformers builds modules on the meta device
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))
        if self.rope_scaling:
            key = "long_factor" if seq_len > self.original_max_position_embeddings else "short_factor"
            inv_freq = inv_freq / torch.tensor(self.rope_scaling[key], dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.scaling_factor, emb.sin() * self.scaling_factor


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    dtype = q.dtype
    q, k = q.float(), k.float()
    return ((q * cos) + (rotate_half(q) * sin)).to(dtype), ((k * cos) + (rotate_half(k) * sin)).to(dtype)


class MiniCPMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MiniCPMAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.rotary_emb = MiniCPMLongRoPE(
            self.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )

    def forward(self, hidden_states):
        bsz, q_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(q_len, hidden_states.device)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        groups = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out)


class MiniCPMDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = MiniCPMAttention(config)
        self.mlp = MiniCPMMLP(config)
        self.input_layernorm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.scale_depth = config.scale_depth
        self.num_hidden_layers = config.num_hidden_layers

    def forward(self, hidden_states):
        residual_scale = self.scale_depth / math.sqrt(self.num_hidden_layers)
        attn = self.self_attn(self.input_layernorm(hidden_states))
        hidden_states = hidden_states + attn * residual_scale
        mlp = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + mlp * residual_scale


class MiniCPMPreTrainedModel(PreTrainedModel):
    config_class = MiniCPMConfig
    base_model_prefix = "model"
    _no_split_modules = ["MiniCPMDecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)


class MiniCPMModel(MiniCPMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MiniCPMDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids, **kwargs):
        hidden_states = self.embed_tokens(input_ids) * self.config.scale_emb
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states))


class MiniCPMForCausalLM(MiniCPMPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = MiniCPMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids, **kwargs):
        hidden_states = self.model(input_ids).last_hidden_state
        logits = self.lm_head(hidden_states / (self.config.hidden_size / self.config.dim_model_base))
        return CausalLMOutputWithPast(logits=logits.float())
'''
