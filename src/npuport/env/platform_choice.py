"""Which platform (npu, cuda or cpu) a vLLM engine run on this host would use, decided from probed facts."""

from __future__ import annotations

from collections.abc import Mapping


def npu_usable(facts: Mapping) -> bool:
    npu = facts.get("accelerators", {}).get("torch_npu", {})
    return bool(npu.get("is_available")) and (npu.get("device_count") or 0) > 0


def cuda_count(facts: Mapping) -> int:
    cuda = facts.get("accelerators", {}).get("cuda", {})
    return cuda.get("device_count") or 0 if cuda.get("available") else 0


def decide_platform(facts: Mapping) -> tuple[str, str]:
    """("npu"|"cuda"|"cpu", human device string) for what a vLLM engine run on this host would use."""
    versions = facts.get("versions", {})
    vllm_dist = facts.get("distributions", {}).get("vllm") or ""
    accel = facts.get("accelerators", {})
    if npu_usable(facts) and versions.get("vllm_ascend", "absent") != "absent":
        npu = accel["torch_npu"]
        smi = (accel.get("npu_smi") or {}).get("parsed") or {}
        model = smi.get("model") or ",".join(sorted(set(npu.get("names") or []))) or "NPU"
        return "npu", f"Ascend {model} x{npu['device_count']} (torch_npu)"
    cuda_devices = cuda_count(facts)
    if cuda_devices and versions.get("vllm", "absent") != "absent" and not vllm_dist.endswith("-cpu"):
        devices = accel["cuda"].get("devices") or []
        names = ",".join(sorted({d["name"] for d in devices})) or "CUDA GPU"
        memory = max((d.get("memory_bytes") or 0 for d in devices), default=0) / 2**30
        return "cuda", f"{names} x{cuda_devices} ({memory:.0f} GiB each)"
    hw = facts.get("hardware", {})
    total = (hw.get("memory") or {}).get("total_bytes") if isinstance(hw.get("memory"), dict) else None
    ram = f", {total / 2**30:.0f} GiB RAM" if total else ""
    return "cpu", f"CPU {hw.get('cpu_model', 'unknown')} ({hw.get('cpu_usable', '?')} usable cores{ram})"
