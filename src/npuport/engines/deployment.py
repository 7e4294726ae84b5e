"""Deployment configurations: the engine as it is deployed, and named variations of it.

A configuration is engine settings (the model's ``engine`` section with the configuration's overrides) and a
workload pattern: how the scored token sequences reach the engine (alone, inside a batch of other sequences, after
another request that put their prefix in the prefix cache). The *deployed* configuration is the ``engine`` section
itself, as ``vllm serve`` runs it (compiled graphs, vLLM's prefix-caching and chunked-prefill defaults); every stage
that starts an engine takes its settings from here, and the matrix (``deployments.configurations``) varies it one
setting or one pattern at a time. Torch-free and small: the smoke stage runs the configurations, compare scores them,
the report reads the names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from npuport.core.errors import NpuportError
from npuport.core.settings import EngineSettings, Settings

DEPLOYED = "deployed"
EAGER_DIAGNOSTIC = {"enforce_eager": True}
DEPLOYED_DESCRIPTION = "the engine section as `vllm serve` runs it, each sequence alone"


@dataclass(frozen=True)
class Workload:
    """How the scored sequences reach the engine (the schema's deployment workload)."""

    kind: str = "alone"
    concurrent: int = 8
    prefix_tokens: int = 512

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None) -> Workload:
        from npuport.core.settings import section_schema

        properties = section_schema("deployments").get("properties", {})
        item = properties["configurations"]["items"]
        defaults = {
            name: prop.get("default")
            for name, prop in _resolve_item(item)["properties"]["workload"]["properties"].items()
        }
        return cls(**(defaults | dict(mapping or {})))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "concurrent": self.concurrent, "prefix_tokens": self.prefix_tokens}


def _resolve_item(item: Mapping[str, Any]) -> Mapping[str, Any]:
    from npuport.core.settings import merged_schema

    return merged_schema(dict(item))


@dataclass(frozen=True)
class Deployment:
    """One configuration: its name, what differs from the deployed one, and the engine it runs on."""

    name: str
    description: str
    overrides: Mapping[str, Any]
    workload: Workload
    engine: EngineSettings

    @property
    def deployed(self) -> bool:
        return self.name == DEPLOYED

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "overrides": dict(self.overrides),
                "workload": self.workload.as_dict(), "engine": self.engine.as_dict()}  # fmt: skip


@dataclass(frozen=True)
class DeploymentsSettings(Settings):
    SECTION: ClassVar[str] = "deployments"
    enabled: bool
    segments: int
    configurations: tuple = field(default=())


def configurations(settings: DeploymentsSettings, deployed: EngineSettings) -> list[Deployment]:
    """The deployed configuration first, then each configured one (none when ``settings.enabled`` is false)."""
    found = [Deployment(DEPLOYED, DEPLOYED_DESCRIPTION, {}, Workload(), deployed)]
    if not settings.enabled:
        return found
    for entry in settings.configurations:
        name = entry["name"]
        if name in {d.name for d in found}:
            raise NpuportError("config", f"deployments.configurations: the name {name!r} is used twice")
        overrides = dict(entry.get("engine") or {})
        workload = Workload.from_config(entry.get("workload"))
        found.append(Deployment(name, entry.get("description") or "", overrides, workload,
                                deployed.with_overrides(overrides)))  # fmt: skip
    return found


def eager_diagnostic(deployed: EngineSettings) -> EngineSettings:
    """The engine of the layer comparison: the deployed settings, run eagerly (forward hooks do not fire inside
    compiled graphs)."""
    return deployed.with_overrides(EAGER_DIAGNOSTIC)


def engine_key(engine: EngineSettings) -> str:
    """Identity of an engine's settings: configurations with the same key share one engine start."""
    return json.dumps(engine.as_dict(), sort_keys=True)


def engine_groups(deployments: Sequence[Deployment]) -> list[tuple[EngineSettings, list[Deployment]]]:
    """The configurations grouped by engine settings, in first-appearance order (one engine start per group)."""
    groups: dict[str, tuple[EngineSettings, list[Deployment]]] = {}
    for deployment in deployments:
        groups.setdefault(engine_key(deployment.engine), (deployment.engine, []))[1].append(deployment)
    return list(groups.values())


def differs(deployment: Deployment, deployed: EngineSettings) -> list[str]:
    """The engine keys in which ``deployment`` differs from the deployed engine, as ``key=value``."""
    mine, base = deployment.engine.as_dict(), deployed.as_dict()
    return [f"{key}={json.dumps(mine[key])}" for key in mine if mine[key] != base.get(key)]


@dataclass(frozen=True)
class HostFacts:
    """What decides whether a configuration can run here: the platform vLLM picked and what it offers."""

    is_cpu: bool
    devices: int  # accelerator devices; on the CPU backend the NUMA nodes (vLLM binds one tensor-parallel rank to each)
    cpu_flags: frozenset[str] = frozenset()
    platform: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {"is_cpu": self.is_cpu, "devices": self.devices, "platform": self.platform,
                "fp8_capable_cpu": bool(self.cpu_flags & FP8_CPU_FLAGS)}  # fmt: skip


FP8_CPU_FLAGS = frozenset({"avx512f", "amx_tile"})


def cannot_run(engine: EngineSettings, host: HostFacts) -> str | None:
    """Why ``engine`` cannot run on this host (None: it can), from what vLLM's platform needs."""
    tp = engine.tensor_parallel_size
    if tp > host.devices:
        if host.is_cpu:
            return (f"tensor_parallel_size {tp} needs {tp} NUMA nodes on the vLLM CPU backend (it binds each "
                    f"tensor-parallel rank to one); this host has {host.devices}")  # fmt: skip
        return f"tensor_parallel_size {tp} needs {tp} {host.platform} devices; {host.devices} visible"
    if host.is_cpu and engine.kv_cache_dtype.startswith("fp8") and not host.cpu_flags & FP8_CPU_FLAGS:
        return "an fp8 KV cache on the vLLM CPU backend needs AVX-512 or AMX; this CPU has neither"
    return None


def host_facts() -> HostFacts:
    """The platform vLLM resolves here (imports vLLM) and what it offers."""
    from vllm.platforms import current_platform as platform

    flags = cpu_flags()
    if platform.is_cpu():
        return HostFacts(True, max(1, numa_nodes()), flags, "cpu")
    try:
        count = int(platform.device_count())
    except Exception:  # noqa: BLE001 - a platform without a count offers one device
        count = 1
    return HostFacts(False, count, flags, str(platform.device_type))


def numa_nodes() -> int:
    try:
        return sum(1 for name in os.listdir("/sys/devices/system/node") if name[4:].isdigit() and name[:4] == "node")
    except OSError:
        return 1


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
