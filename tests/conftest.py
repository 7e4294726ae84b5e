"""Shared fixtures: copies of the workflow in temp dirs, run with the real Snakemake.

Before anything runs, the session checks that ``npuport`` is this checkout's ``src/npuport``: an
editable install of another clone in the same environment would otherwise test that clone's code.
"""

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

# Three pytest workers share two cores, and the torch in each test process (and in the engines, servers and Snakemake
# stages the tests start, which inherit this) runs OpenMP threads that spin while they wait for work, on the core
# another process needs. Waiting passively halves the wall and CPU time of two engine test files run side by side
# (benchmarks/README.md, "the test suite"); no test measures speed. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The KV cache of the tests' engines (engine.kv_cache_memory_bytes): the same on every host. A share of host RAM
# (gpu_memory_utilization) less the test process's own memory comes out negative on a host with less memory.
TEST_KV_CACHE_BYTES = 64 * 2**20
# The eager engine of the tests that inject faults as forward hooks (which fire only outside compiled graphs) and
# capture layers: engine settings as config.yaml's `engine` section takes them.
EAGER_TEST_ENGINE = {"max_num_seqs": 4, "kv_cache_memory_bytes": TEST_KV_CACHE_BYTES, "enforce_eager": True}
# What a workflow copy needs; results/, logs/ and .snakemake/ start empty.
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "resources", "profiles", "envs", ".test")
# Integration scenarios (.test/<name>/config.yaml, see .test/README.md).
SCENARIOS = tuple(sorted(p.parent.name for p in (REPO / ".test").glob("*/config.yaml")))
# The rules with one job per model (report_index and report: one per run).
PER_MODEL_RULES = frozenset(
    ("download", "introspect", "repair_config", "fuse", "env_probe", "smoke", "baseline", "compare", "layers",
     "bench", "accuracy_reference", "accuracy", "report_model")
)  # fmt: skip


def foreign_import(module_file: str | Path, repo: Path) -> str | None:
    """Why ``npuport`` imported from ``module_file`` (its ``__init__.py``) is not ``repo``'s
    ``src/npuport``; None when it is."""
    expected = (Path(repo) / "src" / "npuport").resolve()
    found = Path(module_file).resolve().parent
    if found == expected:
        return None
    return (
        f"npuport is imported from {found}, not from this checkout's {expected}: the tests would run "
        f"another copy's code (an editable install of another clone?). Install this one: "
        f"{sys.executable} -m pip install -e {Path(repo).resolve()}"
    )


def pytest_sessionstart(session):
    import npuport

    problem = foreign_import(npuport.__file__, REPO)
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


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


def scenario_config(name: str, root: Path = REPO) -> Path:
    """``.test/<name>/config.yaml`` under ``root`` (the repo, or a workflow copy: its paths are relative
    to the workflow directory either way)."""
    if name not in SCENARIOS:
        raise KeyError(f"no scenario {name!r} in {REPO / '.test'} (known: {', '.join(SCENARIOS)})")
    return Path(root) / ".test" / name / "config.yaml"


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


def planned_rules(workdir: Path, *args: str, env: dict | None = None) -> dict[str, int]:
    """Rule -> job count that a dry run of ``report`` would execute ({} when nothing to do)."""
    output = run_snakemake(workdir, "-n", "report", *args, env=env).stdout
    if "Nothing to be done" in output:
        return {}
    stats = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if m[1] != "total"}


@pytest.fixture
def workflow_copy(tmp_path):
    return copy_workflow(tmp_path / "wf")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """One full `snakemake report` on the default config: the suite's one pipeline engine start.
    Every test that needs the default run's artifacts shares this one, across pytest-xdist workers too:
    the first to ask runs it under a file lock, the others wait for it and read the same directory.
    Tests read it only (a test that runs Snakemake for real works in a copy)."""
    from filelock import FileLock

    reuse = os.environ.get("NPUPORT_TEST_DEFAULT_RUN")  # a developer's completed run of this tree (never set in CI)
    if reuse:
        return Path(reuse)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above every worker's own
    workdir, done = root / "default-run" / "wf", root / "default-run" / "complete"
    with FileLock(root / "default-run.lock"):
        if not done.exists():
            if workdir.exists():  # a worker that failed half-way (this session made it)
                shutil.rmtree(workdir)
            run_snakemake(copy_workflow(workdir), "report")
            done.touch()
    return workdir


# The files the workers take first, in this order (`make test`: pytest-xdist, whole files per worker, a worker taking
# the next file when its own is nearly done). Longest first, so that no long file starts last: the SLURM run (mostly
# waiting on the scheduler), the file whose first test starts the default run, the longest file that does not need
# that run, the files that need it once it is there, then the other engine and end-to-end files. Every other file
# follows in collection order, those with engine or end-to-end tests first.
FIRST = (
    "test_slurm.py",
    "test_workflow.py",
    "test_save_pretrained.py",
    "test_deployments_engine.py",
    "test_bench.py",
    "test_layers.py",
    "test_trained_stats_engine.py",
    "test_minicpm.py",
    "test_sensitivity.py",
    "test_accuracy.py",
    "test_sources_hf.py",
    "test_report.py",
)


def pytest_collection_modifyitems(config, items):
    """Files in the order of FIRST, then the others (see FIRST); a file's tests stay in their order."""
    rank = {name: index for index, name in enumerate(FIRST)}
    slow = {item.path.name for item in items if _slow(item)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(FIRST)), item.path.name not in slow))


def _slow(item) -> bool:
    return any(item.get_closest_marker(mark) for mark in ("e2e", "engine"))
