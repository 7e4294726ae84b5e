"""Accelerator probes: `npu-smi info`, and torch.cuda / torch_npu facts from a child interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import npuport
from npuport.env import accelerator_child
from npuport.env.npu_smi import npu_smi_errors, parse_npu_smi_info
from npuport.env.probe_tools import run_command, safe, tail, unknown

NPU_SMI_TIMEOUT_S = 30
CHILD_TIMEOUT_S = 120


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
        "raw": tail(text),
    }


def _run_child(env: Mapping[str, str]) -> dict:
    """The child's report plus its stderr, or {"error": ...} when it hung, crashed or printed no report."""
    # The child must import npuport however this process found it (installed, or on sys.path by hand).
    source_root = str(Path(npuport.__file__).resolve().parents[1])
    child_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)}
    try:
        done = run_command([sys.executable, "-m", accelerator_child.__name__], CHILD_TIMEOUT_S, child_env)
        lines = done.stdout.strip().splitlines()
        child = json.loads(lines[-1]) if lines else {}
        if not child:
            child = {"error": unknown(f"probe child exited {done.returncode} without a report")}
        child["stderr"] = tail(done.stderr, 8000)
    except subprocess.TimeoutExpired:
        child = {"error": unknown(f"torch/torch_npu probe timed out after {CHILD_TIMEOUT_S} s")}
    except (OSError, json.JSONDecodeError) as exc:
        child = {"error": unknown(f"torch/torch_npu probe failed: {exc}")}
    return child


def probe_accelerators(env: Mapping[str, str]) -> dict:
    """torch.cuda and torch_npu facts from a child interpreter, plus npu-smi."""
    # A child, because with torch_npu installed `import torch` itself loads torch_npu (torch's device-backend
    # autoload), and a broken CANN can fail or hang there.
    child = _run_child(env)
    return {
        "cuda": child.get("cuda", {"available": False, "reason": child.get("torch_error") or child.get("error")}),
        "torch_npu": child.get("torch_npu", {"installed": None, "reason": child.get("error")}),
        "torch_import_error": child.get("torch_error"),
        "warnings": child.get("warnings", []),
        "stderr": child.get("stderr", ""),
        "npu_smi": safe("npu-smi", probe_npu_smi, env),
    }
