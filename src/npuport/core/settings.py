"""Resolve the pipeline config into the settings one model's stages use."""

from __future__ import annotations

import copy
import re

from npuport.core.errors import NpuportError

# Sections a model entry may override key by key.
OVERRIDABLE = ("fuse", "introspect", "engine", "baseline")

_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def model_names(config: dict) -> list[str]:
    """Names of the configured models; duplicate names are an error."""
    names = [m["name"] for m in config["models"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NpuportError("config", f"model names must be unique, repeated: {', '.join(duplicates)}")
    return names


def model_entry(config: dict, name: str) -> dict:
    """The config entry of model ``name``; an unknown name lists the known ones."""
    for entry in config["models"]:
        if entry["name"] == name:
            return entry
    raise NpuportError("config", f"unknown model {name!r}; configured models: {', '.join(model_names(config))}")


def model_section(config: dict, name: str, section: str) -> dict:
    """Top-level defaults of ``section`` with the model's own overrides applied."""
    merged = copy.deepcopy(config.get(section, {}))
    merged.update(model_entry(config, name).get(section, {}))
    return merged


def parse_size(size: int | str) -> int:
    """Bytes in a size given as an int or a string like '2GB' or '512 MiB'."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*", size)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise NpuportError("config", f"not a size: {size!r} (use e.g. 2GB, 500MB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def check_config(config: dict, schema_path: str, config_files: list) -> None:
    """One-line NpuportError naming the config file(s) and the first schema violation."""
    import jsonschema
    import yaml

    with open(schema_path, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    files = ", ".join(str(f) for f in config_files) or "config"
    raise NpuportError(files, f"config fails the schema at {where}: {error.message}")


def require_utf8(*paths) -> None:
    """One-line NpuportError naming the first config file that is not valid UTF-8."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                fh.read()
        except UnicodeDecodeError as exc:
            raise NpuportError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        except FileNotFoundError:
            continue
