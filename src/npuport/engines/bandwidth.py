"""The memory-bandwidth bound of single-stream decode: bandwidth / bytes read per generated token.

A decode step of one sequence reads every weight once (the input embedding table only one row, unless the LM head
shares it) and the KV cache of the tokens before it. The bandwidth is the host's measured copy bandwidth on a CPU
host (env.json: hardware.memory_bandwidth, measured by env_probe) and the datasheet value of the accelerator
elsewhere (``NOMINAL``, labelled nominal), or the value the config gives (``bench.bandwidth_gb_s``, labelled
configured). Every figure says which it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npuport.core.atomic import read_json

TB = 1e12
GB = 1e9


@dataclass(frozen=True)
class Datasheet:
    """One accelerator's nominal memory bandwidth and where the number comes from."""

    pattern: str  # regular expression over the device name as torch / npu-smi report it (case-insensitive)
    device: str
    bytes_per_s: float | None  # None: no published figure found
    source: str


# First match wins: the more specific names come first. Names as torch.cuda.get_device_name, torch_npu and npu-smi
# print them (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Ascend910B3", "910B3").
NOMINAL: tuple[Datasheet, ...] = (
    Datasheet(r"\bH200\b", "NVIDIA H200 (SXM, NVL; 141 GB HBM3e)", 4.8 * TB,
              "NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/"),
    Datasheet(r"\bH100\b.*\bNVL\b", "NVIDIA H100 NVL (94 GB)", 3.9 * TB,
              "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/"),
    Datasheet(r"\bH100\b.*\bPCIe\b", "NVIDIA H100 PCIe (80 GB)", 2.0 * TB,
              "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/"),
    Datasheet(r"\bH100\b", "NVIDIA H100 SXM (80 GB HBM3)", 3.35 * TB,
              "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/"),
    Datasheet(r"\bH20\b", "NVIDIA H20 (96 GB HBM3)", 4.0 * TB,
              "secondary: NVIDIA publishes no H20 datasheet on nvidia.com; 4.0 TB/s as listed by "
              "https://willitrunai.com/es/gpus/h20-96gb and "
              "https://arthurchiao.art/blog/gpu-data-sheets/ (section 4)"),
    Datasheet(r"\bA100\b.*80\s*GB.*PCIe|\bA100\b.*PCIe.*80\s*GB", "NVIDIA A100 80GB PCIe", 1.935 * TB,
              "NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/"),
    Datasheet(r"\bA100\b.*80\s*GB", "NVIDIA A100 80GB SXM", 2.039 * TB,
              "NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/"),
    Datasheet(r"\bA100\b", "NVIDIA A100 40GB (SXM, PCIe)", 1.555 * TB,
              "NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/"),
    Datasheet(r"910\s*B[1-4]?\b|Ascend\s*910\s*B", "Huawei Ascend 910B (910B1-910B4)", None,
              "none found: Huawei publishes HBM capacity (64 GB; 32 GB on the 910B4) but we found no Huawei "
              "datasheet that gives the 910B's memory bandwidth, and third-party figures disagree (0.4 to 1.6 TB/s); "
              "set bench.bandwidth_gb_s to your vendor's figure"),
)  # fmt: skip


def nominal_bandwidth(device_name: str) -> Datasheet | None:
    """The table's entry for ``device_name`` (first match), None when the table has no row for it."""
    for sheet in NOMINAL:
        if re.search(sheet.pattern, device_name, re.IGNORECASE):
            return sheet
    return None


def accelerator_names(env: Mapping[str, Any]) -> list[str]:
    """Device names env.json holds for the platform it decided: CUDA device names, or the NPU model npu-smi and
    torch_npu give."""
    accel = env.get("accelerators") or {}
    if env.get("platform") == "cuda":
        return [d.get("name", "") for d in (accel.get("cuda") or {}).get("devices") or []]
    if env.get("platform") == "npu":
        smi = ((accel.get("npu_smi") or {}).get("parsed") or {}).get("model")
        return [n for n in [smi, *((accel.get("torch_npu") or {}).get("names") or [])] if n]
    return []


def select_bandwidth(env: Mapping[str, Any], configured_gb_s: float | None, devices: int = 1) -> dict[str, Any]:
    """The bandwidth of the bound and its label: kind measured / nominal / configured, or why there is none.
    ``devices``: accelerators the model is split over (tensor parallel), whose bandwidths add up."""
    if configured_gb_s:
        return {"kind": "configured", "bytes_per_s": configured_gb_s * GB * devices, "devices": devices,
                "per_device_bytes_per_s": configured_gb_s * GB,
                "source": "bench.bandwidth_gb_s in the pipeline config"}  # fmt: skip
    platform = env.get("platform")
    if platform == "cpu":
        measured = (env.get("hardware") or {}).get("memory_bandwidth")
        if not isinstance(measured, dict) or not measured.get("bytes_per_s"):
            return {"kind": None, "reason": f"env.json has no measured memory bandwidth ({measured})"}
        return {"kind": "measured", "bytes_per_s": measured["bytes_per_s"], "devices": 1,
                "source": "env.json: hardware.memory_bandwidth (env_probe)", "method": measured.get("method"),
                "last_level_cache_bytes": measured.get("last_level_cache_bytes")}  # fmt: skip
    names = accelerator_names(env)
    sheets = [(n, nominal_bandwidth(n)) for n in names]
    found = [(n, s) for n, s in sheets if s is not None]
    if not found:
        return {"kind": None, "reason": f"no datasheet bandwidth for {names or platform!r} in the table "
                "(npuport.engines.bandwidth.NOMINAL); set bench.bandwidth_gb_s"}  # fmt: skip
    name, sheet = found[0]
    if sheet.bytes_per_s is None:
        return {"kind": None, "reason": f"{name}: {sheet.source}", "device": sheet.device}
    return {"kind": "nominal", "bytes_per_s": sheet.bytes_per_s * devices, "devices": devices, "device_name": name,
            "device": sheet.device, "per_device_bytes_per_s": sheet.bytes_per_s, "source": sheet.source}  # fmt: skip


@dataclass(frozen=True)
class DecodeBytes:
    """Bytes one decode step of one sequence reads, at a given context length."""

    weights: int  # every weight in the engine's dtype, less the input embedding table but one row
    kv_cache_per_token: int  # K and V of every layer for one token
    context_tokens: float  # mean context over the generated tokens
    dtype_bytes: int

    @property
    def kv_cache(self) -> float:
        return self.kv_cache_per_token * self.context_tokens

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kv_cache": self.kv_cache, "total": self.total}


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1}


def decode_bytes(model_dir: str | Path, *, dtype: str, context_tokens: float) -> DecodeBytes:
    """Bytes a decode step reads on ``model_dir`` computed in ``dtype`` (auto: the checkpoint's own), with
    ``context_tokens`` of KV cache before it (the cache is held in the same dtype, vLLM's kv_cache_dtype auto)."""
    from npuport.weights.checkpoint import Checkpoint

    with Checkpoint.open(model_dir) as ckpt:
        infos = list(ckpt.tensors.values())
    has_head = any(info.name.endswith("lm_head.weight") for info in infos)
    weights = 0
    width = DTYPE_BYTES.get(dtype)
    for info in infos:
        own = DTYPE_BYTES.get(info.dtype, 2)
        size = info.nbytes // own * (width or own)
        if info.name.endswith("embed_tokens.weight") and has_head:
            size //= info.shape[0]  # a lookup reads one row
        weights += size
    width = width or DTYPE_BYTES.get(infos[0].dtype, 2)
    config = read_json(Path(model_dir) / "config.json")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * width
    return DecodeBytes(weights=weights, kv_cache_per_token=per_token, context_tokens=context_tokens, dtype_bytes=width)
