"""The test harness itself: conftest's guard on where npuport comes from, and the .test/ scenarios."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import (
    PER_MODEL_RULES,
    REPO,
    SCENARIOS,
    copy_workflow,
    foreign_import,
    planned_rules,
    scenario_config,
)
from snakemake.utils import update_config

import npuport
from npuport.core.settings import check_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


# --- the import guard ---------------------------------------------------------------------------------------------


def test_guard_accepts_this_checkout():
    assert foreign_import(npuport.__file__, REPO) is None
    assert foreign_import(REPO / "src" / "npuport" / "__init__.py", REPO) is None


def test_guard_accepts_a_symlinked_path_to_this_checkout(tmp_path):
    (tmp_path / "alias").symlink_to(REPO)
    assert foreign_import(tmp_path / "alias" / "src" / "npuport" / "__init__.py", REPO) is None


@pytest.mark.parametrize(
    "elsewhere",
    ["other-clone/src/npuport/__init__.py", "venv/lib/python3.11/site-packages/npuport/__init__.py"],
)
def test_guard_refuses_npuport_from_elsewhere(tmp_path, elsewhere):
    module = tmp_path / elsewhere
    message = foreign_import(module, REPO)
    assert message is not None
    assert f"npuport is imported from {module.parent.resolve()}" in message
    assert f"not from this checkout's {REPO / 'src' / 'npuport'}" in message
    assert f"pip install -e {REPO}" in message


def test_guard_refuses_this_checkout_seen_from_another_clone(tmp_path):
    """The same relative layout in another clone is still another clone."""
    assert foreign_import(REPO / "src" / "npuport" / "__init__.py", tmp_path / "clone") is not None


# --- the .test/ scenarios -----------------------------------------------------------------------------------------


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _merged(name: str) -> dict:
    """The config Snakemake sees: config/config.yaml, then the scenario's file on top."""
    config = copy.deepcopy(_load(REPO / "config" / "config.yaml"))
    update_config(config, _load(scenario_config(name)))
    return config


def test_scenarios_are_present_and_each_has_a_readme_line():
    assert {"default", "slurm", "engine-unavailable", "engine-fails-for-one-model"} <= set(SCENARIOS)
    readme = (REPO / ".test" / "README.md").read_text(encoding="utf-8")
    for name in SCENARIOS:
        assert f"| `{name}` |" in readme, name
        assert f"--configfile .test/{name}/config.yaml" in readme, name


def test_unknown_scenario_is_named():
    with pytest.raises(KeyError, match="no scenario 'nope'.*default"):
        scenario_config("nope")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_config_passes_the_schema(name):
    config = _merged(name)
    check_config(config, str(SCHEMA), [scenario_config(name)])  # raises NpuportError naming the violation
    for model in _load(scenario_config(name))["models"]:
        source = model["source"]
        if source["kind"] == "local":  # relative to the workflow directory, present in the repo
            assert not Path(source["path"]).is_absolute(), (name, source)
            assert (REPO / source["path"] / "config.json").is_file(), (name, source)


def test_default_scenario_is_the_default_config():
    assert _merged("default") == _load(REPO / "config" / "config.yaml")


@pytest.fixture(scope="module")
def scenario_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("scenarios") / "wf")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_dry_run_plans_every_stage_for_every_model(scenario_copy, name):
    """`snakemake -n report --configfile .test/<name>/config.yaml` in a workflow copy, relative path as
    the README gives it."""
    config = scenario_copy / ".test" / name / "config.yaml"
    assert config.is_file() and scenario_config(name, scenario_copy) == config
    models = len(_load(config)["models"])
    plan = planned_rules(scenario_copy, "--configfile", str(config.relative_to(scenario_copy)))
    assert plan == {rule: models for rule in PER_MODEL_RULES} | {"report_index": 1, "report": 1}, plan
