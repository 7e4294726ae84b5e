"""The diagnostic rules: recognised problems in probed facts, each with its evidence and its fix."""

from __future__ import annotations

import re
from collections.abc import Mapping

from npuport.env.compatibility import cann_matches, release, stack_for, stack_text
from npuport.env.npu_smi import npu_smi_errors
from npuport.env.platform_choice import cuda_count, npu_usable


def _diag(diag_id: str, severity: str, *, summary: str, evidence: list[str], fix: str) -> dict:
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
            summary="ASCEND_RT_VISIBLE_DEVICES names devices that do not exist in this container/host",
            evidence=evidence,
            fix="Unset ASCEND_RT_VISIBLE_DEVICES (the container already exposes only its own NPUs), or set it to "
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
            summary="The CANN toolkit belongs to another user (torch_npu prints an owner warning)",
            evidence=list(dict.fromkeys(evidence)),
            fix="Harmless: torch_npu only warns (torch_npu/utils/collect_env.py check_path_owner_consistent) and "
            "goes on. No action needed; to silence it, run as the toolkit's owner or install CANN under this user.",
        )
    ]


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
            summary="torch_npu cannot be imported, so the NPU cannot be used",
            evidence=evidence,
            fix=stack_text(stack_for(versions.get("torch"), versions.get("torch_npu")))
            + " Then `source <CANN>/set_env.sh` and `source <nnal>/atb/set_env.sh` before starting the engine.",
        )
    ]


def _check_stack_versions(facts: Mapping) -> list[dict]:
    versions = facts.get("versions") or {}
    torch_v, npu_v, cann_v = versions.get("torch"), versions.get("torch_npu"), versions.get("CANN")
    if release(npu_v) is None:
        return []
    row = stack_for(torch_v, npu_v)
    if release(torch_v) and release(torch_v) != release(npu_v):
        return [
            _diag(
                "npu_stack_versions_mismatch",
                "error",
                summary="torch and torch_npu are from different releases",
                evidence=[f"torch {torch_v} with torch_npu {npu_v}, which is built for torch {release(npu_v)}"],
                fix=stack_text(row),
            )
        ]
    if row and re.match(r"\d+\.\d+", cann_v or "") and not cann_matches(cann_v, row):
        return [
            _diag(
                "npu_stack_versions_mismatch",
                "warning",
                summary="The CANN version is not one published for this torch_npu",
                evidence=[
                    f"torch_npu {npu_v} is published with CANN {'/'.join(row.cann)}; this host has CANN {cann_v}"
                ],
                fix=stack_text(row),
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
            summary="The NPU is held by another process or container",
            evidence=list(dict.fromkeys(f"{e['line']} ({e['meaning']})" for e in found)),
            fix="Stop the container or process that holds the device, or give this container only free "
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
                summary="Other processes hold NPU memory on this host",
                evidence=[
                    f"NPU {p['npu_id']} chip {p['chip_id']}: pid {p['pid']} {p['name']} {p['memory_mb']:g} MB"
                    for p in parsed["processes"]
                ],
                fix="Measurements share the chips with these processes: stop them or run on chips without processes.",
            )
        )
    if parsed.get("unhealthy"):
        found.append(
            _diag(
                "npu_unhealthy",
                "warning",
                summary="npu-smi reports chips that are not healthy",
                evidence=[
                    f"NPU {c['npu_id']} chip {c['chip_id']} ({c['name']}): {c['health']}" for c in parsed["unhealthy"]
                ],
                fix="Check `npu-smi info -t health -i <npu>` and the device logs; avoid these chips.",
            )
        )
    failed = smi.get("present") and not parsed.get("count") and not any(e.get("busy") for e in smi.get("errors") or [])
    if failed:
        lines = [e["line"] for e in smi.get("errors") or []] or [smi.get("reason") or (smi.get("raw") or "").strip()]
        found.append(
            _diag(
                "npu_smi_failed",
                "warning",
                summary="npu-smi is installed but listed no chips",
                evidence=[line for line in lines if line][:5] or [f"exit status {smi.get('returncode')}"],
                fix="Check the driver mounts (/usr/local/Ascend/driver, /dev/davinci*, /dev/davinci_manager, "
                "/dev/devmm_svm, /dev/hisi_hdc) and run `npu-smi info` by hand.",
            )
        )
    return found


def _vllm_ascend_missing(facts: Mapping) -> list[dict]:
    if not npu_usable(facts) or (facts.get("versions") or {}).get("vllm_ascend", "absent") != "absent":
        return []
    return [
        _diag(
            "vllm_ascend_missing",
            "warning",
            summary="NPUs are usable but vllm-ascend is not installed, so vLLM cannot run on them",
            evidence=[
                f"torch_npu device_count {facts['accelerators']['torch_npu'].get('device_count')}",
                "vllm_ascend absent",
            ],
            fix="Install the vllm-ascend release that matches the installed vLLM (envs/ascend.yaml).",
        )
    ]


def _torch_npu_missing(facts: Mapping) -> list[dict]:
    parsed = ((facts.get("accelerators") or {}).get("npu_smi") or {}).get("parsed") or {}
    chips = parsed.get("count") or 0
    if not chips or (facts.get("versions") or {}).get("torch_npu", "absent") != "absent":
        return []
    return [
        _diag(
            "torch_npu_missing",
            "warning",
            summary="npu-smi lists NPUs but torch_npu is not installed, so nothing here can use them",
            evidence=[f"npu-smi: {chips} chips ({parsed.get('model')})", "torch_npu absent"],
            fix="Run the stage in the Ascend environment (envs/ascend.yaml: torch_npu, vllm-ascend).",
        )
    ]


def _engine_cpu_only(facts: Mapping) -> list[dict]:
    versions = facts.get("versions") or {}
    if not (cuda_count(facts) and facts.get("platform") == "cpu" and versions.get("vllm", "absent") != "absent"):
        return []
    return [
        _diag(
            "engine_cpu_only",
            "info",
            summary="A CUDA GPU is present but the installed vLLM build runs on the CPU only",
            evidence=[
                f"vllm distribution {facts.get('distributions', {}).get('vllm')}",
                f"{cuda_count(facts)} CUDA device(s)",
            ],
            fix="Use the CUDA environment (envs/cuda.yaml) to run the engine on the GPU.",
        )
    ]


def _no_accelerator(facts: Mapping) -> list[dict]:
    if facts.get("platform") != "cpu" or npu_usable(facts) or cuda_count(facts):
        return []
    accel = facts.get("accelerators") or {}
    npu, smi, cuda = accel.get("torch_npu") or {}, accel.get("npu_smi") or {}, accel.get("cuda") or {}
    chips = (smi.get("parsed") or {}).get("count", 0)
    evidence = [
        f"torch.cuda: available={cuda.get('available')}, device_count={cuda.get('device_count')}",
        "torch_npu: "
        + ("not installed" if npu.get("installed") is False else f"device_count={npu.get('device_count')}"),
        "npu-smi: " + ("not on PATH" if smi.get("present") is False else f"{chips} chips listed"),
    ]
    return [
        _diag(
            "no_accelerator",
            "info",
            summary="No accelerator is usable here: the run continues on the vLLM CPU backend",
            evidence=evidence,
            fix="Nothing to fix for a CPU run; NPU/GPU results are reported as not measured on this host.",
        )
    ]


def _check_engine(facts: Mapping) -> list[dict]:
    return [
        *_vllm_ascend_missing(facts),
        *_torch_npu_missing(facts),
        *_engine_cpu_only(facts),
        *_no_accelerator(facts),
    ]


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
                    "diagnostic_rule_failed",
                    "warning",
                    summary=f"{rule.__name__} could not run",
                    evidence=[repr(exc)],
                    fix="Report a bug.",
                )
            )
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda d: order.get(d["severity"], 3))
