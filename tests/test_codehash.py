"""Code hashes come from the import closure of each stage's script, not from hand-kept lists."""

from __future__ import annotations

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
