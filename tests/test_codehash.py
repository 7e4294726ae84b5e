"""Code hashes come from the import closure of each stage's script, not from hand-kept lists."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from npuport.core import codehash
from npuport.core.codehash import code_hash, import_closure

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
PACKAGE = ROOT / "src" / "npuport"


def _relative(paths):
    return {p.relative_to(PACKAGE).as_posix() for p in paths}


def test_closure_follows_imports_at_any_depth_and_inside_functions():
    reached = _relative(import_closure(SCRIPTS / "repair_config.py"))
    # the runner every script calls, and what it imports
    assert {"core/stage.py", "core/errors.py", "__init__.py", "core/__init__.py"} <= reached
    # reached only through other modules (repair_config -> introspect -> checkpoint / ternary / minicpm)
    assert {"weights/introspect.py", "weights/checkpoint.py", "weights/ternary.py", "weights/minicpm.py"} <= reached
    # stages the script never reaches
    assert not reached & {"engines/smoke.py", "report/report_model.py", "compare/compare.py"}


def test_download_reaches_every_source_and_the_worker():
    reached = _relative(import_closure(SCRIPTS / "download.py"))
    assert {f"download/sources/{m}.py" for m in ("common", "hf", "git", "modelscope", "worker")} <= reached
    assert "download/manifest.py" in reached


def test_every_script_reaches_the_stage_runner():
    for script in SCRIPTS.glob("*.py"):
        assert "core/stage.py" in _relative(import_closure(script)), script.name


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package, with the hash computed over it."""
    copy = tmp_path / "npuport"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PACKAGE_DIR", copy)
    return copy


def _touch(path: Path):
    path.write_text(path.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")


def test_hash_changes_with_an_indirectly_reached_module(package_copy):
    before = code_hash(SCRIPTS / "fuse.py")
    _touch(package_copy / "weights" / "ternary.py")
    assert code_hash(SCRIPTS / "fuse.py") != before


def test_hash_ignores_modules_the_script_does_not_reach(package_copy):
    before = code_hash(SCRIPTS / "fuse.py")
    _touch(package_copy / "report" / "plots.py")
    assert code_hash(SCRIPTS / "fuse.py") == before


def test_report_hash_follows_its_templates(package_copy):
    before = code_hash(SCRIPTS / "report.py")
    _touch(package_copy / "report" / "templates" / "report.md.j2")
    assert code_hash(SCRIPTS / "report.py") != before
    assert code_hash(SCRIPTS / "fuse.py") == code_hash(SCRIPTS / "fuse.py")


# -- in a copy of a recorded run: what `snakemake -n` plans after an edit ------------------------------------------


def _params_changed(workdir, src) -> set[str]:
    """Rules whose dry-run reason names changed params, with npuport imported from ``src``."""
    from conftest import run_snakemake

    plan = run_snakemake(workdir, "-n", "report", env={"PYTHONPATH": str(src)}).stdout
    rules = set()
    for job in plan.split("\nrule ")[1:]:
        name = job.split(":", 1)[0]
        if "Params have changed since last execution" in job:
            rules.add(name)
    return rules


def _planned_outputs(workdir, env: dict) -> set[str]:
    """Every output and benchmark file a dry run of ``report`` lists, as written in the plan."""
    from conftest import run_snakemake

    plan = run_snakemake(workdir, "-n", "report", env=env).stdout
    return {name for m in re.finditer(r"^    (?:output|benchmark): (.+)$", plan, re.M) for name in m[1].split(", ")}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A workflow copy, with a copy of the library source beside it, where Snakemake has recorded every job of
    ``report`` as done without running a stage: each output a placeholder (an empty directory for a name without a
    suffix: the workflow's directory() outputs; an empty file otherwise), then ``snakemake --touch --forceall report``,
    which records each job's metadata, its params and so its code hashes among them, as a finished run does. What the
    tests below check is what Snakemake plans from those records after an edit; no stage's output enters that, so
    none has to run (they used a copy of the default run, which took 271 s to make). Every Snakemake call imports
    npuport from the copy (``PYTHONPATH``), so the records and the edits meet the same source."""
    from conftest import copy_workflow, run_snakemake

    workdir = copy_workflow(tmp_path_factory.mktemp("codehash") / "wf")
    src = workdir / "src"  # beside the copy's workflow/: npuport reads its schema from the checkout it comes from
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {"PYTHONPATH": str(src)}
    outputs = _planned_outputs(workdir, env)
    assert {"results/tiny-bitcpm/model", "results/tiny-bitcpm/benchmarks/fuse.tsv", "results/report.md"} <= outputs
    for name in outputs:
        path = workdir / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    run_snakemake(workdir, "--touch", "--forceall", "report", env=env)  # every job, also those with nothing newer
    plan = run_snakemake(workdir, "-n", "report", env=env).stdout
    assert "Nothing to be done" in plan, plan[-3000:]  # a complete record: nothing missing, nothing stale
    return workdir


@pytest.fixture
def run_copy(recorded_run, tmp_path):
    """A copy of the recorded run: placeholders, Snakemake's metadata and the library source it was recorded with."""
    workdir = tmp_path / "wf"
    shutil.copytree(recorded_run, workdir, symlinks=True)
    return workdir, workdir / "src"


@pytest.mark.e2e
def test_editing_an_indirectly_reached_module_reruns_exactly_the_stages_that_reach_it(run_copy):
    workdir, src = run_copy
    assert _params_changed(workdir, src) == set()
    # compare/statistics.py is imported by no script: compare and layers reach it through compare/compare.py
    # and compare/layers.py. (A stage downstream of another rerunning stage is planned for its updated input,
    # and Snakemake then names that reason only, so the module is one no upstream stage reaches.)
    module = PACKAGE / "compare" / "statistics.py"
    reaching = {script.stem for script in SCRIPTS.glob("*.py") if module in import_closure(script)}
    assert "compare" in reaching
    assert not reaching & {"download", "introspect", "repair_config", "fuse", "env_probe", "smoke", "baseline"}
    _touch(src / "npuport" / "compare" / "statistics.py")
    assert _params_changed(workdir, src) == reaching


@pytest.mark.e2e
def test_editing_the_errors_module_reruns_every_stage(run_copy):
    from conftest import PER_MODEL_RULES, planned_rules

    workdir, src = run_copy
    _touch(src / "npuport" / "core" / "errors.py")  # reached by every script through the stage runner
    stages = PER_MODEL_RULES - {"report_model"}
    assert set(planned_rules(workdir, env={"PYTHONPATH": str(src)})) == stages | {
        "report_model",
        "report_index",
        "report",
    }
    # the stages no other stage feeds rerun for their code hash
    assert {"download", "env_probe"} <= _params_changed(workdir, src)


@pytest.mark.e2e
def test_editing_a_module_no_stage_reaches_reruns_nothing(run_copy):
    from conftest import run_snakemake

    workdir, src = run_copy
    _touch(src / "npuport" / "__main__.py")  # the command line only
    plan = run_snakemake(workdir, "-n", "report", env={"PYTHONPATH": str(src)}).stdout
    assert "Nothing to be done" in plan


def _module_graph() -> dict[str, set[str]]:
    """npuport module -> the npuport modules it imports (at any depth, as the code hash reads them; a package's
    ``__init__`` passed through on the way is left out: it imports nothing here but its own modules' names)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts or path.name == "__init__.py":
            continue
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        targets = {codehash._module_file(name) for name in codehash._imported_names(path)}
        graph[module] = {".".join(t.relative_to(PACKAGE).with_suffix("").parts) for t in targets
                         if t is not None and t.name != "__init__.py" and t != path}  # fmt: skip
    return graph


def test_the_package_imports_form_no_cycle_and_compare_reaches_no_stage_above_it():
    graph = _module_graph()
    assert "download.sources.registry" in graph["download.sources.worker"]  # the scan sees the imports
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            assert state.get(target) != "open", " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    # the comparison, the weights and the downloads are libraries of the stages: none reaches the engines or the report
    for module, targets in graph.items():
        if module.split(".")[0] in ("compare", "weights", "download", "core"):
            assert not {t for t in targets if t.split(".")[0] in ("engines", "report")}, (module, targets)
