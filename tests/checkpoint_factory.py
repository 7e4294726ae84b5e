"""Write small Llama-style test checkpoints (safetensors or .bin, single or sharded) and bad files.

Reused by the tests of several stages; everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from npuport.weights.ternary import QUANTIZED_PROJECTIONS, fake_quant

ST_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.int64: "I64",
    torch.int32: "I32",
}


@dataclass
class Arch:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 96
    vocab_size: int = 128
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    extra: dict = field(default_factory=dict)  # more config.json keys (rope_scaling, ...)

    def config(self, **overrides) -> dict:
        """A config.json document for this architecture; ``overrides`` replace or (value None) remove keys."""
        doc = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}
        doc.update({k: v for k, v in asdict(self).items() if k != "extra"})
        doc.update(self.extra)
        doc.update(overrides)
        return {k: v for k, v in doc.items() if v is not None}


def longrope_scaling(head_dim: int) -> dict:
    """A LongRoPE rope_scaling block whose factor lists have head_dim / 2 entries (equal long/short, as BitCPM4)."""
    factors = [1.0 + i / head_dim for i in range(head_dim // 2)]
    return {
        "rope_type": "longrope",
        "long_factor": factors,
        "short_factor": factors,
        "original_max_position_embeddings": 4096,
    }


def ternary_weight(rows: int, cols: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """A fused ternary weight: per group of ``group_size`` columns the values are {-a, 0, +a} with its own a."""
    return fake_quant(torch.randn(rows, cols, generator=generator) * 0.02, group_size)


def llama_state_dict(
    arch: Arch,
    dtype: torch.dtype = torch.bfloat16,
    ternary_group_size: int | None = None,
    inv_freq: bool = False,
    quantizer_params: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random Llama weights; the seven projections are ternary per ``ternary_group_size`` (<= 0: per row)
    when it is not None, latent (plain random) otherwise."""
    g = torch.Generator().manual_seed(seed)
    h, inter, q_out = arch.hidden_size, arch.intermediate_size, arch.num_attention_heads * arch.head_dim
    kv_out = arch.num_key_value_heads * arch.head_dim
    shapes = {
        "self_attn.q_proj": (q_out, h),
        "self_attn.k_proj": (kv_out, h),
        "self_attn.v_proj": (kv_out, h),
        "self_attn.o_proj": (h, q_out),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    sd = {"model.embed_tokens.weight": torch.randn(arch.vocab_size, h, generator=g)}
    for layer in range(arch.num_hidden_layers):
        p = f"model.layers.{layer}."
        for proj in QUANTIZED_PROJECTIONS:
            rows, cols = shapes[proj]
            if ternary_group_size is None:
                sd[f"{p}{proj}.weight"] = torch.randn(rows, cols, generator=g) * 0.02
            else:
                sd[f"{p}{proj}.weight"] = ternary_weight(rows, cols, ternary_group_size, g)
            bias = arch.attention_bias if proj.startswith("self_attn") else arch.mlp_bias
            if bias:
                sd[f"{p}{proj}.bias"] = torch.randn(rows, generator=g) * 0.01
            if quantizer_params:
                sd[f"{p}{proj}.weight_quantizer.alpha"] = torch.ones(1)
        sd[f"{p}input_layernorm.weight"] = torch.ones(h)
        sd[f"{p}post_attention_layernorm.weight"] = torch.ones(h)
        if inv_freq:
            sd[f"{p}self_attn.rotary_emb.inv_freq"] = 1.0 / (
                10000 ** (torch.arange(0, arch.head_dim, 2) / arch.head_dim)
            )
    sd["model.norm.weight"] = torch.ones(h)
    if not arch.tie_word_embeddings:
        sd["lm_head.weight"] = torch.randn(arch.vocab_size, h, generator=g)
    return {k: (v.to(dtype) if v.is_floating_point() and not k.endswith("inv_freq") else v) for k, v in sd.items()}


def _shards(state_dict: dict[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    names = list(state_dict)
    size = -(-len(names) // shards)
    return [{n: state_dict[n] for n in names[i * size : (i + 1) * size]} for i in range(shards)]


def write_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    fmt: str = "safetensors",
    shards: int = 1,
    config: dict | None = None,
) -> Path:
    """Write ``state_dict`` as HF-style files (``fmt`` "safetensors" or "bin"); ``shards`` > 1 adds an index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    parts = _shards(state_dict, shards)
    weight_map = {}
    for i, part in enumerate(parts, start=1):
        file = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in part.items()}, directory / file, metadata={"format": "pt"})
        else:
            torch.save(part, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        write_index(directory / f"{stem}.{ext}.index.json", weight_map, total)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def write_index(path: Path, weight_map: dict[str, str], total_size: int = 0) -> None:
    path.write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}), encoding="utf-8")


def write_safetensors_streaming(path: str | Path, tensors) -> None:
    """Write a standard safetensors file tensor by tensor, never holding more than one tensor's bytes.

    ``tensors`` is a list of (name, shape, dtype, producer) where producer() returns the tensor when it is written.
    """
    header, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the safetensors library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, produce in tensors:
            tensor = produce().to(dtype).contiguous()
            assert tuple(tensor.shape) == tuple(shape), name
            f.write(tensor.view(torch.uint8).numpy().data)


def write_raw_safetensors(
    path: str | Path, header: bytes | dict, data: bytes = b"", header_len: int | None = None
) -> Path:
    """A safetensors file from explicit parts, for malformed-input tests."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = Path(path)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


class _CreatesMarker:
    """Unpickling this would create ``marker`` by calling open(marker, "w")."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_bin(path: str | Path, marker: str | Path, layout: str = "zip") -> Path:
    """A pytorch_model.bin whose unpickling would create ``marker``.

    ``layout``: "zip" (torch.save default), "legacy" (pre-zip torch.save format) or "pickle" (a bare pickle).
    """
    payload = {"model.embed_tokens.weight": torch.zeros(2, 2), "evil": _CreatesMarker(str(marker))}
    path = Path(path)
    if layout == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "zip")
    return path
