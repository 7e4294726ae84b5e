"""The host around the engine: CPU and memory, the user and container it runs in, the Ascend env variables."""

from __future__ import annotations

import os
import platform
import pwd
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from npuport.env.probe_tools import safe, unknown

RELEVANT_ENV = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_VISIBLE_DEVICES",
    "NPU_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "ASCEND_TOOLKIT_HOME",
    "ASCEND_HOME_PATH",
)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "model name":
                return value.strip()
    if shutil.which("lscpu"):  # aarch64 (Kunpeng) kernels print no "model name" in /proc/cpuinfo
        # LC_ALL=C: lscpu translates its field names ("Model name") under other locales
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env=os.environ | {"LC_ALL": "C"}).stdout  # fmt: skip
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                return value.strip()
    return unknown("no model name in /proc/cpuinfo or lscpu")


def _meminfo() -> dict:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            fields[key] = int(value.split()[0]) * 1024
    return {"total_bytes": fields.get("MemTotal"), "available_bytes": fields.get("MemAvailable")}


def probe_hardware() -> dict:
    return {
        "arch": platform.machine(),
        "cpu_model": safe("cpu model", _cpu_model),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": safe("memory", _meminfo),
    }


def _no_new_privs() -> bool | str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split()[1] == "1"
    return unknown("no NoNewPrivs line in /proc/self/status")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return unknown(f"uid {uid} has no passwd entry")


def _container_evidence(env: Mapping[str, str]) -> list[str]:
    evidence = [marker for marker in ("/.dockerenv", "/run/.containerenv") if os.path.exists(marker)]
    if env.get("KUBERNETES_SERVICE_HOST"):
        evidence.append("KUBERNETES_SERVICE_HOST is set")
    cgroup = Path("/proc/1/cgroup")
    if cgroup.exists():
        text = cgroup.read_text(errors="replace")
        evidence += [f"/proc/1/cgroup mentions {w}" for w in ("docker", "kubepods", "containerd", "lxc") if w in text]
    return evidence


def probe_container(env: Mapping[str, str], cann: Mapping) -> dict:
    uid = os.getuid()
    evidence = safe("container markers", _container_evidence, env)
    toolkit = {k: cann.get(k) for k in ("home", "real_path", "owner_uid", "owner_matches", "writable")}
    return {
        "user": _user_name(uid),
        "uid": uid,
        "gid": os.getgid(),
        "no_new_privs": safe("NoNewPrivs", _no_new_privs),
        "in_container": bool(evidence) if isinstance(evidence, list) else evidence,
        "container_evidence": evidence,
        "cann_toolkit": toolkit,
    }


def probe_env_vars(env: Mapping[str, str]) -> dict:
    values: dict = {name: env.get(name) for name in RELEVANT_ENV}
    ld_path = env.get("LD_LIBRARY_PATH")
    values["LD_LIBRARY_PATH"] = {
        "set": ld_path is not None,
        "ascend_entries": sum("ascend" in part.lower() for part in (ld_path or "").split(":")),
    }
    return values
