"""The config reference (config/README.md) and config/config.yaml agree with the schema, the one source."""

from __future__ import annotations

import yaml
from conftest import REPO

from npuport.core.settings import (
    CONFIG_DOCS_COMMAND,
    CONFIG_README,
    NO_DEFAULT,
    config_keys,
    config_reference_markdown,
    load_schema,
)

# Keys config/config.yaml sets to something else than the schema's default, each with the reason
# (config.yaml says so beside the key too). None today.
DELIBERATELY_DIFFERENT: dict[str, str] = {}


def test_config_readme_is_generated_from_the_schema():
    assert CONFIG_README == REPO / "config" / "README.md"
    assert CONFIG_README.read_text(encoding="utf-8") == config_reference_markdown(), (
        f"config/README.md is out of date with workflow/schemas/config.schema.yaml: run `{CONFIG_DOCS_COMMAND}`"
    )


def test_every_schema_property_has_a_description():
    undescribed = [key.path for key in config_keys() if not key.description]
    assert not undescribed, f"schema properties without a description: {undescribed}"


def test_every_definition_property_is_in_the_reference():
    """So that no definition holds a property the reference (and the description test) never sees."""
    paths = {key.path for key in config_keys()}
    # a definition that is the items of a list is listed under that list's path
    as_items = {"deployment": "deployments.configurations[]"}
    for name, definition in load_schema()["definitions"].items():
        for prop in definition.get("properties", {}):
            where = (f"{name}.{prop}", f"models[].{name}.{prop}", f"{as_items.get(name, name)}.{prop}")
            assert any(w in paths for w in where), f"{name}.{prop}"
        for part in definition.get("allOf", []):  # the source kinds
            for prop in part["then"]["properties"]:
                assert f"models[].{name}.{prop}" in paths, f"{name}.{prop}"


def test_reference_lists_every_key_once_per_group():
    keys = config_keys()
    paths = {key.path for key in keys}
    for expected in ("models[].source.repo_id", "fuse.max_shard_size", "compare.thresholds.max_mean_topk_kl",
                     "serve.startup_timeout_s", "baseline.threads", "generation.prompts"):  # fmt: skip
        assert expected in paths
    groups = [(key.group, key.path) for key in keys]
    assert len(groups) == len(set(groups))
    readme = config_reference_markdown()
    assert "| `serve.startup_timeout_s` | number (> 0) | `300` |" in readme
    assert "| `generation.prompts` | list of string | required |" in readme


def _set_values(config: dict, prefix: str = ""):
    """(dotted key, value) of every leaf config.yaml sets outside the models list."""
    for name, value in config.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            yield from _set_values(value, path)
        elif path != "models":
            yield path, value


def test_config_yaml_values_are_the_schema_defaults():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    defaults = {key.path: key.default for key in config_keys() if key.default is not NO_DEFAULT}
    checked = 0
    for path, value in _set_values(config):
        if path in DELIBERATELY_DIFFERENT or path not in defaults:  # generation.prompts: required, no default
            continue
        assert value == defaults[path], f"config/config.yaml sets {path}: {value!r}, schema default {defaults[path]!r}"
        checked += 1
    for model in config["models"]:
        for name, value in model.items():
            if f"models[].{name}" in defaults:
                assert value == defaults[f"models[].{name}"], f"models[].{name}"
    assert checked >= 30
