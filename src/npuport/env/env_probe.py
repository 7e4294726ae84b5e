"""Probe the host an engine runs on (versions, hardware, accelerators, container limits) and diagnose it.

`probe_environment` collects facts and never raises: a fact that cannot be told is recorded as
``"unknown: <reason>"``. `diagnose` is pure decision logic on those facts, so it is tested on recorded
outputs of real Ascend hosts (tests/data/npu-smi, tests/data/errors) as well as on this host.

torch, torch.cuda and torch_npu are probed in a child interpreter: with torch_npu installed, ``import torch``
itself loads torch_npu (torch's device-backend autoload), and a broken CANN can fail or hang there.
"""

from __future__ import annotations

import datetime
import glob
import importlib.metadata
import json
import logging
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from npuport.env.npu_smi import npu_smi_errors, parse_npu_smi_info

__all__ = ["COMPAT", "DEFAULT_PACKAGES", "decide_platform", "diagnose", "parse_npu_smi_info", "probe_environment"]

log = logging.getLogger(__name__)

DEFAULT_PACKAGES = ("torch", "transformers", "vllm", "vllm_ascend", "torch_npu")
RELEVANT_ENV = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_VISIBLE_DEVICES",
    "NPU_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "ASCEND_TOOLKIT_HOME",
    "ASCEND_HOME_PATH",
)
DRIVER_VERSION_FILE = Path("/usr/local/Ascend/driver/version.info")
NPU_SMI_TIMEOUT_S = 30
CHILD_TIMEOUT_S = 120


@dataclass(frozen=True)
class Stack:
    """torch, the torch_npu release line built for it, and the CANN releases published as matching it."""

    torch: str
    torch_npu: str
    cann: tuple[str, ...]
    source: str


# Versions that belong together. Sources (looked up, not remembered):
#  [VA] vllm-project/vllm-ascend docs/source/community/versioning_policy.md, "Release compatibility matrix";
#  [PT] Ascend/pytorch README (branch v2.7.1-7.3.0, README.zh.md table 1 and the 2026 README table);
#  [HA] hiascend.com Ascend Extension for PyTorch 7.0.0 release note (CANN 8.1.RC1 / PyTorch 2.5.1);
#  [VI] vllm-ascend v0.26.0rc1 installation.md (CANN 9.1.0, torch 2.10.0, torch-npu 2.10.0.post4).
COMPAT: tuple[Stack, ...] = (
    Stack("2.10.0", "2.10.0", ("9.0.0", "9.0.1", "9.1.0"), "[VA] v0.20.2rc1-v0.23.0rc1; [PT] CANN 9.0.0; [VI]"),
    Stack(
        "2.9.0",
        "2.9.0",
        ("8.5.0", "8.5.1"),
        "[VA] v0.14.0rc1-v0.15.0rc1 (CANN 8.5.0), v0.16.0rc1-v0.19.1rc1 (CANN 8.5.1; v0.18.0 ships torch_npu "
        "2.9.0.post1); [PT] v2.9.0-7.3.0 with CANN 8.5.0",
    ),
    Stack(
        "2.8.0",
        "2.8.0",
        ("8.3.RC1", "8.3.RC2", "8.5.0", "8.5.1"),
        "[VA] v0.12.0rc1-v0.13.0rc3 (CANN 8.3.RC2/8.5.0/8.5.1); [PT] 2.8.0 with CANN 8.3.RC1, 2.8.0.post2 with 8.5.0",
    ),
    Stack(
        "2.7.1",
        "2.7.1",
        ("8.2.RC1", "8.3.RC1", "8.3.RC2", "8.5.0"),
        "[VA] v0.10.0rc1-v0.11.0 (CANN 8.2.RC1/8.3.RC1/8.3.RC2); [PT] 2.7.1.post2 with CANN 8.5.0",
    ),
    Stack("2.6.0", "2.6.0", ("8.5.0",), "[PT] 2.6.0.post5 with CANN 8.5.0"),
    Stack(
        "2.5.1",
        "2.5.1",
        ("8.0.0", "8.1.RC1", "8.2.RC1"),
        "[VA] v0.7.3-v0.9.2rc1 (CANN 8.0.0/8.1.RC1/8.2.RC1); [HA] CANN 8.1.RC1 with torch_npu 2.5.1",
    ),
)


# ---------------------------------------------------------------------------------------------- small helpers


def _unknown(reason: object) -> str:
    return f"unknown: {reason}"


def _safe(what: str, fn, *args):
    """Run one probing step; a failure becomes an "unknown: ..." fact instead of an exception."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the probe must never raise
        log.warning("probe step %s failed: %s", what, exc)
        return _unknown(f"{what} failed: {type(exc).__name__}: {exc}")


def _release(version: str | None) -> str | None:
    """'2.9.0.post1+git4c901a4' -> '2.9.0'; None for 'absent'/'unknown...'."""
    match = re.match(r"^(\d+\.\d+\.\d+)", version or "")
    return match[1] if match else None


def read_key_values(path: Path) -> dict[str, str]:
    """Read an Ascend `key=value` info file (ascend_*_install.info, driver version.info)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            pairs[key.strip()] = value.strip()
    return pairs


def _tail(text: str, limit: int = 20000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def run_command(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run with a timeout that also ends the command's own children (its process group), then re-raise."""
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=dict(env),
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------------------------------------------- versions


def package_versions(packages: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Installed version and providing distribution of each import name, without importing it."""
    top_level = importlib.metadata.packages_distributions()
    versions, distributions = {}, {}
    for name in packages:
        candidates = [*top_level.get(name, []), name.replace("_", "-"), name]
        versions[name] = "absent"
        for dist in dict.fromkeys(candidates):
            try:
                versions[name] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            distributions[name] = dist
            break
    return versions, distributions


def cann_home_candidates(env: Mapping[str, str]) -> list[str]:
    """Where a CANN toolkit may live, most specific first (env vars, then the default install paths)."""
    candidates = [env.get("ASCEND_TOOLKIT_HOME"), env.get("ASCEND_HOME_PATH")]
    candidates += ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann"]
    candidates += sorted(glob.glob("/usr/local/Ascend/cann-*"), reverse=True)
    if env.get("HOME"):
        candidates.append(os.path.join(env["HOME"], "Ascend/ascend-toolkit/latest"))
    return [path for path in dict.fromkeys(candidates) if path]


def cann_version_file(home: Path) -> Path | None:
    """The install-info file torch_npu itself reads (`ascend_*_install.info`), toolkit first."""
    patterns = ["*-linux/ascend_toolkit_install.info", "ascend_toolkit_install.info"]
    patterns += ["*-linux/ascend_*_install.info", "ascend_*_install.info"]
    for pattern in patterns:
        found = sorted(home.glob(pattern))
        if found:
            return found[0]
    return None


def probe_cann(env: Mapping[str, str]) -> dict:
    """CANN toolkit: where it is, its version, and whether this user owns or can write it."""
    home = next((Path(p) for p in cann_home_candidates(env) if os.path.isdir(p)), None)
    if home is None:
        return {"home": None, "version": "absent", "reason": "no CANN toolkit directory found"}
    real = home.resolve()
    stat = real.stat()
    facts = {
        "home": str(home),
        "real_path": str(real),
        "owner_uid": stat.st_uid,
        "owner_matches": stat.st_uid == os.getuid(),
        "writable": os.access(real, os.W_OK),
    }
    version_file = cann_version_file(real)
    if version_file is None:
        return {**facts, "version": _unknown(f"no ascend_*_install.info under {real}"), "version_file": None}
    fields = read_key_values(version_file)
    version = fields.get("version") or _unknown(f"no version= line in {version_file}")
    return {**facts, "version": version, "version_file": str(version_file), "package": fields.get("package_name")}


def driver_version(path: Path = DRIVER_VERSION_FILE) -> str:
    """NPU driver version; newer drivers put the release in package_version and a component version in Version."""
    if not path.exists():
        return "absent"
    fields = read_key_values(path)
    return fields.get("package_version") or fields.get("Version") or _unknown(f"no Version= line in {path}")


# ---------------------------------------------------------------------------------------------------- hardware


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "model name":
                return value.strip()
    if shutil.which("lscpu"):  # aarch64 (Kunpeng) kernels print no "model name" in /proc/cpuinfo
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                return value.strip()
    return _unknown("no model name in /proc/cpuinfo or lscpu")


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
        "cpu_model": _safe("cpu model", _cpu_model),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": _safe("memory", _meminfo),
    }


def probe_npu_smi(env: Mapping[str, str]) -> dict:
    """Run `npu-smi info` (only if the binary exists) and parse its table or its error lines."""
    binary = shutil.which("npu-smi", path=env.get("PATH", os.defpath))
    if binary is None:
        return {"present": False, "reason": "npu-smi not on PATH"}
    try:
        done = run_command([binary, "info"], NPU_SMI_TIMEOUT_S, env)
    except subprocess.TimeoutExpired:
        return {"present": True, "path": binary, "reason": f"npu-smi info timed out after {NPU_SMI_TIMEOUT_S} s"}
    text = done.stdout + ("\n" + done.stderr if done.stderr else "")
    return {
        "present": True,
        "path": binary,
        "returncode": done.returncode,
        "parsed": parse_npu_smi_info(text),
        "errors": npu_smi_errors(text),
        "raw": _tail(text),
    }


def _accelerator_child() -> None:
    """Runs in a child interpreter: torch.cuda and torch_npu facts as one JSON line on stdout."""
    import importlib.util
    import traceback
    import warnings

    def failure(exc: BaseException) -> str:
        return "".join(traceback.format_exception(exc)).strip()

    report: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch
        except BaseException as exc:  # noqa: BLE001 - a broken torch_npu autoload surfaces here
            report["torch_error"] = failure(exc)
            torch = None
        if torch is not None:
            try:
                count = torch.cuda.device_count()
                report["cuda"] = {
                    "available": torch.cuda.is_available(),
                    "device_count": count,
                    "cuda_version": torch.version.cuda,
                    "devices": [
                        {
                            "name": torch.cuda.get_device_name(i),
                            "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                        }
                        for i in range(count)
                    ],
                }
            except BaseException as exc:  # noqa: BLE001
                report["cuda"] = {"error": failure(exc)}
        npu: dict = {"installed": importlib.util.find_spec("torch_npu") is not None}
        if npu["installed"] and torch is not None:
            try:
                import torch_npu  # noqa: F401

                npu["import_ok"] = True
                npu["is_available"] = bool(torch.npu.is_available())
                npu["device_count"] = int(torch.npu.device_count())
                npu["names"] = [torch.npu.get_device_name(i) for i in range(npu["device_count"])]
            except BaseException as exc:  # noqa: BLE001
                npu.setdefault("import_ok", False)
                npu["error"] = failure(exc)
        report["torch_npu"] = npu
    report["warnings"] = [str(w.message) for w in caught]
    print(json.dumps(report))


def probe_accelerators(env: Mapping[str, str]) -> dict:
    """torch.cuda and torch_npu facts from a child interpreter, plus npu-smi."""
    code = "from npuport.env.env_probe import _accelerator_child; _accelerator_child()"
    # The child must import npuport however this process found it (installed, or on sys.path by hand).
    package_root = str(Path(__file__).resolve().parents[1])
    child_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)}
    try:
        done = run_command([sys.executable, "-c", code], CHILD_TIMEOUT_S, child_env)
        lines = done.stdout.strip().splitlines()
        child = json.loads(lines[-1]) if lines else {}
        if not child:
            child = {"error": _unknown(f"probe child exited {done.returncode} without a report")}
        child["stderr"] = _tail(done.stderr, 8000)
    except subprocess.TimeoutExpired:
        child = {"error": _unknown(f"torch/torch_npu probe timed out after {CHILD_TIMEOUT_S} s")}
    except (OSError, json.JSONDecodeError) as exc:
        child = {"error": _unknown(f"torch/torch_npu probe failed: {exc}")}
    return {
        "cuda": child.get("cuda", {"available": False, "reason": child.get("torch_error") or child.get("error")}),
        "torch_npu": child.get("torch_npu", {"installed": None, "reason": child.get("error")}),
        "torch_import_error": child.get("torch_error"),
        "warnings": child.get("warnings", []),
        "stderr": child.get("stderr", ""),
        "npu_smi": _safe("npu-smi", probe_npu_smi, env),
    }


# --------------------------------------------------------------------------------------------------- container


def _no_new_privs() -> bool | str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split()[1] == "1"
    return _unknown("no NoNewPrivs line in /proc/self/status")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return _unknown(f"uid {uid} has no passwd entry")


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
    evidence = _safe("container markers", _container_evidence, env)
    toolkit = {k: cann.get(k) for k in ("home", "real_path", "owner_uid", "owner_matches", "writable")}
    return {
        "user": _user_name(uid),
        "uid": uid,
        "gid": os.getgid(),
        "no_new_privs": _safe("NoNewPrivs", _no_new_privs),
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


# ---------------------------------------------------------------------------------------------- platform choice


def _npu_usable(facts: Mapping) -> bool:
    npu = facts.get("accelerators", {}).get("torch_npu", {})
    return bool(npu.get("is_available")) and (npu.get("device_count") or 0) > 0


def _cuda_count(facts: Mapping) -> int:
    cuda = facts.get("accelerators", {}).get("cuda", {})
    return cuda.get("device_count") or 0 if cuda.get("available") else 0


def decide_platform(facts: Mapping) -> tuple[str, str]:
    """("npu"|"cuda"|"cpu", human device string) for what a vLLM engine run on this host would use."""
    versions = facts.get("versions", {})
    vllm_dist = facts.get("distributions", {}).get("vllm") or ""
    accel = facts.get("accelerators", {})
    if _npu_usable(facts) and versions.get("vllm_ascend", "absent") != "absent":
        npu = accel["torch_npu"]
        smi = (accel.get("npu_smi") or {}).get("parsed") or {}
        model = smi.get("model") or ",".join(sorted(set(npu.get("names") or []))) or "NPU"
        return "npu", f"Ascend {model} x{npu['device_count']} (torch_npu)"
    cuda_count = _cuda_count(facts)
    if cuda_count and versions.get("vllm", "absent") != "absent" and not vllm_dist.endswith("-cpu"):
        devices = accel["cuda"].get("devices") or []
        names = ",".join(sorted({d["name"] for d in devices})) or "CUDA GPU"
        memory = max((d.get("memory_bytes") or 0 for d in devices), default=0) / 2**30
        return "cuda", f"{names} x{cuda_count} ({memory:.0f} GiB each)"
    hw = facts.get("hardware", {})
    total = (hw.get("memory") or {}).get("total_bytes") if isinstance(hw.get("memory"), dict) else None
    ram = f", {total / 2**30:.0f} GiB RAM" if total else ""
    return "cpu", f"CPU {hw.get('cpu_model', 'unknown')} ({hw.get('cpu_usable', '?')} usable cores{ram})"


# -------------------------------------------------------------------------------------------------- diagnostics


def _diag(diag_id: str, severity: str, summary: str, evidence: list[str], fix: str) -> dict:
    return {"id": diag_id, "severity": severity, "summary": summary, "evidence": evidence, "fix": fix}


def _runtime_texts(facts: Mapping) -> list[str]:
    """Error texts the runtime printed: torch/torch_npu import or init failures, the probe child's stderr."""
    accel = facts.get("accelerators", {})
    texts = [accel.get("torch_import_error"), (accel.get("torch_npu") or {}).get("error"), accel.get("stderr")]
    return [t for t in texts if isinstance(t, str) and t]


_VISIBLE_RANGE = re.compile(r"set ASCEND_RT_VISIBLE_DEVICES:(?P<ids>[^ ]+) error, input data rang\[0-(?P<n>\d+)\)")


def _check_visible_devices(facts: Mapping) -> list[dict]:
    value = (facts.get("env_vars") or {}).get("ASCEND_RT_VISIBLE_DEVICES")
    accel = facts.get("accelerators", {})
    npu = accel.get("torch_npu") or {}
    smi = (accel.get("npu_smi") or {}).get("parsed") or {}
    evidence = []
    runtime_range = None
    for text in _runtime_texts(facts):
        for match in _VISIBLE_RANGE.finditer(text):
            runtime_range = int(match["n"])
            evidence.append(f"runtime: {match[0]}")
    if value is not None:
        tokens = [t.strip() for t in value.split(",") if t.strip()]
        bad = [t for t in tokens if not t.isdigit()]
        if bad:
            evidence.append(f"ASCEND_RT_VISIBLE_DEVICES={value!r} has entries that are not integers: {bad}")
        ids = [int(t) for t in tokens if t.isdigit()]
        chips = runtime_range if runtime_range is not None else smi.get("count") or None
        if chips and any(i >= chips for i in ids):
            source = "the runtime" if runtime_range is not None else "npu-smi"
            evidence.append(
                f"ASCEND_RT_VISIBLE_DEVICES={value} names {[i for i in ids if i >= chips]}, but {source} shows "
                f"{chips} device(s) here, so the valid logical ids are 0..{chips - 1}"
            )
        if npu.get("is_available") and npu.get("device_count") == 0:
            evidence.append(
                f"torch_npu is_available() is True but device_count() is 0 with ASCEND_RT_VISIBLE_DEVICES={value}"
            )
    if not evidence:
        return []
    count = runtime_range or smi.get("count")
    ids_hint = f"0..{count - 1}" if count else "0..n-1"
    return [
        _diag(
            "ascend_rt_visible_devices_invalid",
            "error",
            "ASCEND_RT_VISIBLE_DEVICES names devices that do not exist in this container/host",
            evidence,
            "Unset ASCEND_RT_VISIBLE_DEVICES (the container already exposes only its own NPUs), or set it to "
            f"logical ids {ids_hint}; the NPU ids that npu-smi and /dev/davinci* show are physical ids, not the ids "
            "the runtime accepts.",
        )
    ]


_OWNER_WARNING = re.compile(r"Warning: The (?P<path>/\S+) owner does not match the current owner\.")


def _check_cann_owner(facts: Mapping) -> list[dict]:
    toolkit = (facts.get("container") or {}).get("cann_toolkit") or {}
    evidence = []
    if toolkit.get("owner_matches") is False:
        evidence.append(
            f"{toolkit.get('real_path') or toolkit.get('home')} is owned by uid {toolkit.get('owner_uid')}, "
            f"this process runs as uid {(facts.get('container') or {}).get('uid')}"
            + ("" if toolkit.get("writable") else " and cannot write it")
        )
    warnings = list((facts.get("accelerators") or {}).get("warnings") or []) + _runtime_texts(facts)
    for text in warnings:
        evidence += [m[0] for m in _OWNER_WARNING.finditer(text)]
    if not evidence:
        return []
    return [
        _diag(
            "cann_owner_mismatch",
            "warning",
            "The CANN toolkit belongs to another user (torch_npu prints an owner warning)",
            list(dict.fromkeys(evidence)),
            "Harmless: torch_npu only warns (torch_npu/utils/collect_env.py check_path_owner_consistent) and goes "
            "on. No action needed; to silence it, run as the toolkit's owner or install CANN under this user.",
        )
    ]


def stack_for(torch_version: str | None, torch_npu_version: str | None) -> Stack | None:
    """The COMPAT row for the installed torch (or, when torch is unknown, for torch_npu)."""
    wanted = _release(torch_version) or _release(torch_npu_version)
    return next((row for row in COMPAT if row.torch == wanted), None)


def _stack_text(row: Stack | None) -> str:
    if row is None:
        known = "; ".join(f"torch {r.torch} + torch_npu {r.torch_npu}.x + CANN {'/'.join(r.cann)}" for r in COMPAT)
        return f"Install one matching set, e.g. {known}."
    return (
        f"Install the set that belongs together: torch {row.torch} + torch_npu {row.torch_npu} (or its .postN) + "
        f"CANN {' or '.join(row.cann)} with the NNAL (ATB) package of the same CANN version (source: {row.source})."
    )


def _cann_matches(cann: str, row: Stack) -> bool:
    return any(cann.lower().startswith(v.lower()) for v in row.cann)


def _classify_import_error(text: str) -> tuple[str, str]:
    missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    if missing:
        lib = missing[1]
        if lib.startswith("libatb"):
            return f"missing {lib}", "the NNAL (ATB) package is not installed or its set_env.sh was not sourced"
        return f"missing {lib}", "the CANN toolkit is not installed or its set_env.sh was not sourced"
    symbol = re.search(r"(\S+\.so): undefined symbol: (\S+)", text)
    if symbol:
        lib, name = symbol[1].rsplit("/", 1)[-1], symbol[2]
        if "atb" in name or "Mki" in name or "atb" in lib or "tbe_adapter" in lib:
            return f"{lib}: undefined symbol {name}", "torch_npu, CANN and NNAL (ATB) are from different releases"
        return f"{lib}: undefined symbol {name}", "torch and torch_npu are from different releases (C++ ABI mismatch)"
    if re.search(r"version mismatch|does not match", text, re.IGNORECASE):
        return "version mismatch", "the installed Ascend packages are from different releases"
    last = [line for line in text.strip().splitlines() if line.strip()]
    return (last[-1].strip() if last else "unknown error"), "see the error text"


def _check_torch_npu_import(facts: Mapping) -> list[dict]:
    accel = facts.get("accelerators") or {}
    npu = accel.get("torch_npu") or {}
    error = npu.get("error") if npu.get("import_ok") is False else None
    torch_error = accel.get("torch_import_error")
    if not error and torch_error and "torch_npu" in torch_error:
        error = torch_error
    if not error:
        return []
    versions = facts.get("versions") or {}
    what, why = _classify_import_error(error)
    evidence = [what, f"cause: {why}"]
    evidence.append(
        "installed: " + ", ".join(f"{k} {versions.get(k, 'unknown')}" for k in ("torch", "torch_npu", "CANN"))
    )
    return [
        _diag(
            "torch_npu_import_failed",
            "error",
            "torch_npu cannot be imported, so the NPU cannot be used",
            evidence,
            _stack_text(stack_for(versions.get("torch"), versions.get("torch_npu")))
            + " Then `source <CANN>/set_env.sh` and `source <nnal>/atb/set_env.sh` before starting the engine.",
        )
    ]


def _check_stack_versions(facts: Mapping) -> list[dict]:
    versions = facts.get("versions") or {}
    torch_v, npu_v, cann_v = versions.get("torch"), versions.get("torch_npu"), versions.get("CANN")
    if _release(npu_v) is None:
        return []
    row = stack_for(torch_v, npu_v)
    if _release(torch_v) and _release(torch_v) != _release(npu_v):
        return [
            _diag(
                "npu_stack_versions_mismatch",
                "error",
                "torch and torch_npu are from different releases",
                [f"torch {torch_v} with torch_npu {npu_v}, which is built for torch {_release(npu_v)}"],
                _stack_text(row),
            )
        ]
    if row and re.match(r"\d+\.\d+", cann_v or "") and not _cann_matches(cann_v, row):
        return [
            _diag(
                "npu_stack_versions_mismatch",
                "warning",
                "The CANN version is not one published for this torch_npu",
                [f"torch_npu {npu_v} is published with CANN {'/'.join(row.cann)}; this host has CANN {cann_v}"],
                _stack_text(row),
            )
        ]
    return []


def _check_busy(facts: Mapping) -> list[dict]:
    accel = facts.get("accelerators") or {}
    smi = accel.get("npu_smi") or {}
    found = [e for e in smi.get("errors") or [] if e.get("busy")]
    for text in _runtime_texts(facts):
        found += [e for e in npu_smi_errors(text) if e.get("busy")]
    if not found:
        return []
    return [
        _diag(
            "npu_device_busy",
            "error",
            "The NPU is held by another process or container",
            list(dict.fromkeys(f"{e['line']} ({e['meaning']})" for e in found)),
            "Stop the container or process that holds the device, or give this container only free "
            "/dev/davinciN devices: an Ascend device cannot be shared by two non-privileged containers.",
        )
    ]


def _check_npu_smi_state(facts: Mapping) -> list[dict]:
    smi = (facts.get("accelerators") or {}).get("npu_smi") or {}
    parsed = smi.get("parsed") or {}
    found = []
    if parsed.get("processes"):
        found.append(
            _diag(
                "npu_processes_present",
                "warning",
                "Other processes hold NPU memory on this host",
                [
                    f"NPU {p['npu_id']} chip {p['chip_id']}: pid {p['pid']} {p['name']} {p['memory_mb']:g} MB"
                    for p in parsed["processes"]
                ],
                "Measurements share the chips with these processes: stop them or run on chips without processes.",
            )
        )
    if parsed.get("unhealthy"):
        found.append(
            _diag(
                "npu_unhealthy",
                "warning",
                "npu-smi reports chips that are not healthy",
                [f"NPU {c['npu_id']} chip {c['chip_id']} ({c['name']}): {c['health']}" for c in parsed["unhealthy"]],
                "Check `npu-smi info -t health -i <npu>` and the device logs; avoid these chips.",
            )
        )
    failed = smi.get("present") and not parsed.get("count") and not any(e.get("busy") for e in smi.get("errors") or [])
    if failed:
        lines = [e["line"] for e in smi.get("errors") or []] or [smi.get("reason") or (smi.get("raw") or "").strip()]
        found.append(
            _diag(
                "npu_smi_failed",
                "warning",
                "npu-smi is installed but listed no chips",
                [line for line in lines if line][:5] or [f"exit status {smi.get('returncode')}"],
                "Check the driver mounts (/usr/local/Ascend/driver, /dev/davinci*, /dev/davinci_manager, "
                "/dev/devmm_svm, /dev/hisi_hdc) and run `npu-smi info` by hand.",
            )
        )
    return found


def _check_engine(facts: Mapping) -> list[dict]:
    versions = facts.get("versions") or {}
    found = []
    platform_name = facts.get("platform")
    if _npu_usable(facts) and versions.get("vllm_ascend", "absent") == "absent":
        found.append(
            _diag(
                "vllm_ascend_missing",
                "warning",
                "NPUs are usable but vllm-ascend is not installed, so vLLM cannot run on them",
                [
                    f"torch_npu device_count {facts['accelerators']['torch_npu'].get('device_count')}",
                    "vllm_ascend absent",
                ],
                "Install the vllm-ascend release that matches the installed vLLM (envs/ascend.yaml).",
            )
        )
    smi = (facts.get("accelerators") or {}).get("npu_smi") or {}
    chips = (smi.get("parsed") or {}).get("count") or 0
    if chips and versions.get("torch_npu", "absent") == "absent":
        found.append(
            _diag(
                "torch_npu_missing",
                "warning",
                "npu-smi lists NPUs but torch_npu is not installed, so nothing here can use them",
                [f"npu-smi: {chips} chips ({(smi.get('parsed') or {}).get('model')})", "torch_npu absent"],
                "Run the stage in the Ascend environment (envs/ascend.yaml: torch_npu, vllm-ascend).",
            )
        )
    if _cuda_count(facts) and platform_name == "cpu" and versions.get("vllm", "absent") != "absent":
        found.append(
            _diag(
                "engine_cpu_only",
                "info",
                "A CUDA GPU is present but the installed vLLM build runs on the CPU only",
                [
                    f"vllm distribution {facts.get('distributions', {}).get('vllm')}",
                    f"{_cuda_count(facts)} CUDA device(s)",
                ],
                "Use the CUDA environment (envs/cuda.yaml) to run the engine on the GPU.",
            )
        )
    if platform_name == "cpu" and not _npu_usable(facts) and not _cuda_count(facts):
        npu = (facts.get("accelerators") or {}).get("torch_npu") or {}
        smi = (facts.get("accelerators") or {}).get("npu_smi") or {}
        cuda = (facts.get("accelerators") or {}).get("cuda") or {}
        chips = (smi.get("parsed") or {}).get("count", 0)
        evidence = [
            f"torch.cuda: available={cuda.get('available')}, device_count={cuda.get('device_count')}",
            "torch_npu: "
            + ("not installed" if npu.get("installed") is False else f"device_count={npu.get('device_count')}"),
            "npu-smi: " + ("not on PATH" if smi.get("present") is False else f"{chips} chips listed"),
        ]
        found.append(
            _diag(
                "no_accelerator",
                "info",
                "No accelerator is usable here: the run continues on the vLLM CPU backend",
                evidence,
                "Nothing to fix for a CPU run; NPU/GPU results are reported as not measured on this host.",
            )
        )
    return found


RULES = (
    _check_visible_devices,
    _check_cann_owner,
    _check_torch_npu_import,
    _check_stack_versions,
    _check_busy,
    _check_npu_smi_state,
    _check_engine,
)


def diagnose(facts: dict) -> list[dict]:
    """Recognised problems in probed facts: [{id, severity, summary, evidence, fix}], errors first."""
    found = []
    for rule in RULES:
        try:
            found += rule(facts)
        except Exception as exc:  # noqa: BLE001 - a malformed fact must not hide the other diagnostics
            found.append(
                _diag(
                    "diagnostic_rule_failed", "warning", f"{rule.__name__} could not run", [repr(exc)], "Report a bug."
                )
            )
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda d: order.get(d["severity"], 3))


# ------------------------------------------------------------------------------------------------------ the probe


def probe_environment(env: Mapping[str, str] | None = None, packages: Sequence[str] = DEFAULT_PACKAGES) -> dict:
    """The env.json document for this host; `env` is the environment of the engine run (default os.environ)."""
    start = time.monotonic()
    env = dict(os.environ if env is None else env)
    # Names may be import names (vllm_ascend) or distribution names (vllm-ascend); the defaults are always probed.
    packages = list(dict.fromkeys([*DEFAULT_PACKAGES, *(name.lower().replace("-", "_") for name in packages)]))
    versions: dict = {"python": platform.python_version()}
    pkg = _safe("package versions", package_versions, packages)
    distributions = {}
    if isinstance(pkg, tuple):
        versions.update(pkg[0])
        distributions = pkg[1]
    else:
        versions.update({name: pkg for name in packages})
    cann = _safe("CANN toolkit", probe_cann, env)
    cann = cann if isinstance(cann, dict) else {"version": cann}
    versions["CANN"] = cann.get("version", _unknown("CANN probe failed"))
    versions["npu_driver"] = _safe("NPU driver version", driver_version)
    facts = {
        "probed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "versions": versions,
        "distributions": distributions,
        "cann": cann,
        "hardware": _safe("hardware", probe_hardware),
        "accelerators": _safe("accelerators", probe_accelerators, env),
        "container": _safe("container", probe_container, env, cann),
        "env_vars": _safe("environment variables", probe_env_vars, env),
    }
    for key in ("hardware", "accelerators", "container", "env_vars"):
        if not isinstance(facts[key], dict):
            facts[key] = {"error": facts[key]}
    facts["platform"], facts["device"] = decide_platform(facts)
    facts["diagnostics"] = diagnose(facts)
    facts["probe_seconds"] = round(time.monotonic() - start, 3)
    return facts
