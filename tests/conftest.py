"""Shared fixtures: copies of the workflow in temp dirs, run with the real Snakemake."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# What a workflow copy needs; results/, logs/ and .snakemake/ start empty.
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "resources", "profiles", "envs")


def copy_workflow(target: Path) -> Path:
    """A fresh copy of the workflow (no results) in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target / part)
    return target


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, check: bool = True, timeout: int = 1500):
    """Run the real snakemake CLI in ``workdir``; returns the CompletedProcess (stdout+stderr merged)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        env=(os.environ | (env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-6000:]}")
    return result


def planned_rules(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that a dry run of ``report`` would execute ({} when nothing to do)."""
    output = run_snakemake(workdir, "-n", "report", *args).stdout
    if "Nothing to be done" in output:
        return {}
    stats = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if m[1] != "total"}


@pytest.fixture
def workflow_copy(tmp_path):
    return copy_workflow(tmp_path / "wf")
