"""The pipeline config: its schema (the one source of every key's type, description and default), the typed
settings each stage takes, and the config reference generated from the schema.

The schema is workflow/schemas/config.schema.yaml. Snakemake validates the config against it and fills
its defaults; the library reads the same defaults from it (``schema_defaults``), so that a stage called
outside Snakemake (tests, ``python -m npuport``) runs with exactly the values a pipeline run would use.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from npuport.core.errors import NpuportError

# The package is installed editable from src/: the schema sits in the checkout beside it.
SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_README = SCHEMA_PATH.parents[2] / "config" / "README.md"
CONFIG_DOCS_COMMAND = "python -m npuport config-docs > config/README.md"

# Sections a model entry may override key by key.
OVERRIDABLE = ("fuse", "introspect", "engine", "baseline", "compare", "deployments")

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

    schema = read_yaml(schema_path)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    files = ", ".join(str(f) for f in config_files) or "config"
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise NpuportError(files, f"config fails the schema at {where}: {error.message}")
    check_generation_bounds(config, files)


def check_generation_bounds(config: dict, where: str = "config") -> None:
    """generation.max_tokens must fit every model's engine.max_model_len: nothing could generate more, and the
    reference would otherwise run on where the engine stops."""
    generation = config.get("generation") or {}
    max_tokens = generation.get("max_tokens", schema_defaults("generation").get("max_tokens"))
    for name in model_names(config):
        engine = schema_defaults("engine") | model_section(config, name, "engine")
        if max_tokens is not None and max_tokens >= engine["max_model_len"]:
            raise NpuportError(
                where,
                f"generation.max_tokens {max_tokens} does not fit engine.max_model_len {engine['max_model_len']} "
                f"of model {name!r} (prompt and output share it)",
            )


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


# --- the schema ------------------------------------------------------------------------------------------------


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed config schema (read once per process)."""
    if not SCHEMA_PATH.is_file():
        raise NpuportError(
            SCHEMA_PATH,
            "config schema not found: npuport reads its defaults from the checkout it is installed from "
            "(pip install -e . in the repository)",
        )
    return read_yaml(SCHEMA_PATH)


def read_yaml(path) -> Any:
    """A YAML file, safely loaded, through libyaml where PyYAML was built with it (the same loader as
    ``yaml.safe_load``, several times faster: every stage process and Snakemake run reads the schema)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` replaced by its target (the node's own keys win)."""
    if "$ref" not in node:
        return node
    target: Any = load_schema()
    parts = node["$ref"].removeprefix("#/").split("/")
    for part in parts:
        target = target[part]
    return {**_resolve(target), "x-definition": parts[-1], **{k: v for k, v in node.items() if k != "$ref"}}


def merged_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One view of a schema node: ``$ref`` and ``allOf`` parts folded in, property by property (how the
    top-level sections combine a definition's types and descriptions with their own defaults)."""
    node = _resolve(node)
    parts = [merged_schema(part) for part in node.get("allOf", []) if "if" not in part]
    merged: dict[str, Any] = {}
    for part in [*parts, {k: v for k, v in node.items() if k != "allOf"}]:
        properties = {**merged.get("properties", {})}
        for name, prop in part.get("properties", {}).items():
            properties[name] = {**properties.get(name, {}), **prop}
        merged |= part
        if properties:
            merged["properties"] = properties
    if "properties" in merged:
        merged["properties"] = {name: _resolve(prop) for name, prop in merged["properties"].items()}
    return merged


def section_schema(section: str) -> dict[str, Any]:
    """Merged schema of a config section, by dotted path ("engine", "compare.thresholds")."""
    node: dict[str, Any] = {"properties": load_schema()["properties"]}
    for part in section.split("."):
        properties = merged_schema(node).get("properties", {})
        if part not in properties:
            raise NpuportError(SCHEMA_PATH, f"no config section {section!r} in the schema")
        node = properties[part]
    return merged_schema(node)


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's ``default:`` of every key of ``section`` (nested sections filled key by key)."""
    defaults: dict[str, Any] = {}
    for name, prop in section_schema(section).get("properties", {}).items():
        if "properties" in prop:
            defaults[name] = {**prop.get("default", {}), **schema_defaults(f"{section}.{name}")}
        elif "default" in prop:
            defaults[name] = copy.deepcopy(prop["default"])
    return defaults


def schema_description(section: str, key: str) -> str:
    """The schema's description of ``section.key``."""
    return section_schema(section)["properties"][key].get("description", "")


@functools.cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema())


def check_section(section: str, values: Mapping[str, Any]) -> None:
    """One-line NpuportError when ``values`` break the schema of ``section`` (dotted path)."""
    import jsonschema

    node: dict[str, Any] = {"properties": load_schema()["properties"]}
    for part in section.split("."):
        node = node["properties"][part]
    error = jsonschema.exceptions.best_match(_validator().evolve(schema=node).iter_errors(dict(values)))
    if error is not None:
        where = ".".join([section, *map(str, error.absolute_path)])
        raise NpuportError(None, f"{where}: {' '.join(error.message.split())}")


# --- typed settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """One config section as a stage takes it. Built with ``from_config`` (never field by field), which
    fills every key the mapping leaves out from the schema's defaults."""

    SECTION: ClassVar[str]  # dotted path of the section in the config
    NESTED: ClassVar[dict[str, type[Settings]]] = {}

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None) -> Self:
        """Settings from a config section: missing keys from the schema's defaults, unknown keys refused
        (a typo would otherwise be ignored), values checked against the schema."""
        given = dict(mapping or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise NpuportError(
                None, f"{cls.SECTION} settings: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        values = schema_defaults(cls.SECTION) | given
        for name, nested in cls.NESTED.items():
            values[name] = nested.from_config(given.get(name))
        required = section_schema(cls.SECTION).get("required", [])
        missing = [name for name in required if name not in values]
        if missing:
            raise NpuportError(None, f"{cls.SECTION} settings: missing key(s) {', '.join(missing)}")
        check_section(cls.SECTION, {k: v.as_dict() if isinstance(v, Settings) else v for k, v in values.items()})
        return cls(**{name: _frozen(values.get(name)) for name in names})

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready section as documents record it; keys the config left unset (no schema default)
        are left out."""
        defaults = schema_defaults(self.SECTION)
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name not in defaults:
                continue
            out[field.name] = value.as_dict() if isinstance(value, Settings) else _thawed(value)
        return out


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class FuseSettings(Settings):
    SECTION: ClassVar[str] = "fuse"
    mode: str
    group_size: int
    max_shard_size: int | str
    dtype: str
    minicpm: str

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


@dataclass(frozen=True)
class IntrospectSettings(Settings):
    SECTION: ClassVar[str] = "introspect"
    sample_rows: int


@dataclass(frozen=True)
class EngineSettings(Settings):
    SECTION: ClassVar[str] = "engine"
    dtype: str
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_cache_memory_bytes: int | None
    enforce_eager: bool
    max_num_batched_tokens: int | None
    enable_prefix_caching: bool | None
    enable_chunked_prefill: bool | None
    kv_cache_dtype: str
    aot_compile: bool | str  # "auto", or vLLM's VLLM_USE_AOT_COMPILE (npuport.engines.vllm_env)
    compilation_config: dict[str, Any] | None
    additional_config: dict[str, Any] | None
    tensor_parallel_size: int
    in_process: bool
    seed: int

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> EngineSettings:
        """These settings with ``overrides`` (engine keys) applied: a deployment configuration's engine."""
        return EngineSettings.from_config(self.as_dict() | dict(overrides or {}))


@dataclass(frozen=True)
class BaselineSettings(Settings):
    SECTION: ClassVar[str] = "baseline"
    device: str
    dtype: str
    threads: int | None  # None: every usable core (Snakemake sets the stage's threads)


@dataclass(frozen=True)
class GenerationSettings(Settings):
    SECTION: ClassVar[str] = "generation"
    prompts: tuple[str, ...]
    temperature: float
    seed: int
    max_tokens: int
    top_logprobs: int
    chat_template: bool


@dataclass(frozen=True)
class ServeSettings(Settings):
    SECTION: ClassVar[str] = "serve"
    enabled: bool
    host: str
    startup_timeout_s: float
    request_timeout_s: float


@dataclass(frozen=True)
class ThresholdSettings(Settings):
    """Optional fixed limits; None: not checked (the floor-relative gates always are)."""

    SECTION: ClassVar[str] = "compare.thresholds"
    min_top1_agreement: float | None
    max_mean_abs_logprob_diff: float | None
    max_abs_logprob_diff: float | None
    max_mean_topk_kl: float | None
    max_perplexity_rel_diff: float | None
    max_text_mean_abs_logprob_diff: float | None
    max_text_max_abs_logprob_diff: float | None


@dataclass(frozen=True)
class CompareSettings(Settings):
    SECTION: ClassVar[str] = "compare"
    NESTED: ClassVar[dict[str, type[Settings]]] = {"thresholds": ThresholdSettings}
    window: int | None
    benign_logprob_gap: float
    reference_dtype: str
    floor_ratio: float
    gate_ratio: dict[str, float]
    thresholds: ThresholdSettings


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    SECTION: ClassVar[str] = "evaluation"
    text: str
    segment_tokens: int
    max_tokens: int


# --- the config reference (config/README.md) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigKey:
    """One key of the config as the reference lists it."""

    path: str  # dotted, "[]" for the items of a list
    type: str
    default: Any  # NO_DEFAULT when the schema has none
    required: bool
    description: str
    group: str  # the table it belongs to: a top-level section or a source kind


NO_DEFAULT = object()


def _type_text(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " / ".join(_value_text(v) for v in node["enum"])
    if "x-definition" in node and node.get("type") != "object":
        return f"{node['x-definition']}: {_resolve({'$ref': '#/definitions/' + node['x-definition']})['description']}"
    kind = node.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and "items" in node:
        text = f"list of {_type_text(_resolve(node['items']))}"
    bounds = [f"{op} {node[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
              if key in node]  # fmt: skip
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _keys(node: dict[str, Any], path: str, group: str) -> Iterator[ConfigKey]:
    """Every key under ``node``; a model's override sections point at the top-level ones instead."""
    node = merged_schema(node)
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        view = merged_schema(prop)
        default = view.get("default", NO_DEFAULT)
        yield ConfigKey(key, _type_text(view), default, name in required, view.get("description", ""), group)
        if path.startswith("models") and name in OVERRIDABLE:
            continue
        if "properties" in view:
            yield from _keys(view, key, group)
        if view.get("type") == "array" and "properties" in _resolve(view.get("items", {})):
            yield from _keys(_resolve(view["items"]), f"{key}[]", group)
        if name == "source":
            yield from _source_kinds(prop, key)


def _source_kinds(source: dict[str, Any], path: str) -> Iterator[ConfigKey]:
    """The keys of each source kind (the ``if kind is X then ...`` parts of the source schema); ``kind``
    itself is listed with the source."""
    for part in _resolve(source).get("allOf", []):
        kind = part["if"]["properties"]["kind"]["const"]
        then = {**part["then"], "properties": {n: p for n, p in part["then"]["properties"].items() if n != "kind"}}
        yield from _keys(then, path, f"{path} kind: {kind}")


def config_keys() -> list[ConfigKey]:
    """Every key of the pipeline config, in schema order."""
    return list(_keys(load_schema(), "", ""))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def config_reference_markdown() -> str:
    """config/README.md: every config key with its type, default and description, from the schema."""
    schema = load_schema()
    lines = [
        "# Pipeline configuration",
        "",
        f"<!-- Generated from workflow/schemas/config.schema.yaml by `{CONFIG_DOCS_COMMAND}`. -->",
        "<!-- Edit the schema, then regenerate; tests/test_config_docs.py fails while this file differs. -->",
        "",
        "Every key of the pipeline config: its type, its default and what it does. `config/config.yaml`",
        "is the default run; `--configfile FILE` adds a file over it (a file that sets `models` replaces the",
        "list whole). A model entry may set `fuse`, `introspect`, `engine` and `baseline` keys of its own,",
        "which apply to that model over the top-level ones. The defaults come from the schema alone:",
        "Snakemake fills them into the config and the library reads the same ones (`npuport.core.settings`).",
    ]
    groups: dict[str, list[ConfigKey]] = {}
    for key in config_keys():
        group = key.group or key.path.split(".")[0].removesuffix("[]")
        groups.setdefault(group, []).append(key)
    for group, keys in groups.items():
        top = schema["properties"].get(group)
        if top:
            required = " (required)" if group in schema.get("required", []) else ""
            heading, description = f"## `{group}`{required}", merged_schema(top).get("description", "")
        else:  # a source kind
            source, kind = group.split(" kind: ")
            heading, description = f"### `{source}` of kind `{kind}`", _kind_description(kind)
        lines += ["", heading, "", _cell(description), ""]
        lines += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
        for key in keys:
            if key.path == group:
                continue
            default = "required" if key.required else "" if key.default is NO_DEFAULT else _value_text(key.default)
            default = f"`{default}`" if default not in ("", "required") else default or "—"
            lines.append(f"| `{key.path}` | {_cell(key.type)} | {_cell(default)} | {_cell(key.description)} |")
    return "\n".join(lines) + "\n"


def _kind_description(kind: str) -> str:
    for part in load_schema()["definitions"]["source"]["allOf"]:
        if part["if"]["properties"]["kind"]["const"] == kind:
            return part["then"].get("description", "")
    return ""
