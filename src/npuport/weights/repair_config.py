"""Repair a checkpoint's config.json from what introspection derived from its weights."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

from npuport.core.atomic import write_json
from npuport.core.errors import NpuportError
from npuport.core.paths import SKIP_DIRS, contained, regular_file, source_files
from npuport.download.manifest import MANIFEST_NAME
from npuport.weights.introspect import DERIVED_FIELDS, read_config
from npuport.weights.qat_evidence import declaration_keys, qat_code_files, qat_of

# Config fields that introspection derives from tensor shapes (its dtype is reported, not repaired).
DERIVABLE_FIELDS = tuple(field for field in DERIVED_FIELDS if field != "dtype")
# Fields that shapes cannot tell; reported so the table shows what was taken on trust.
UNDERIVABLE_FIELDS = ("max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act")


def field_table(declared_config: dict, derived: dict) -> list[dict]:
    """One row per field: declared value, derived value and status ok / repaired / not derivable."""
    rows = []
    for field in DERIVABLE_FIELDS:
        declared, value = declared_config.get(field), derived.get(field)
        if value is None:
            status = "not derivable"
        elif declared == value:
            status = "ok"
        else:
            status = "repaired"
        rows.append({"field": field, "declared": declared, "derived": value, "status": status})
    for field in UNDERIVABLE_FIELDS:
        declared = declared_config.get(field)
        rows.append({"field": field, "declared": declared, "derived": None, "status": "not derivable"})
    return rows


def repaired_config(declared_config: dict, table: list[dict]) -> dict:
    """``declared_config`` with every repaired field set to its derived value."""
    config = copy.deepcopy(declared_config)
    for row in table:
        if row["status"] == "repaired":
            config[row["field"]] = row["derived"]
    return config


def plain_config(config: dict, qat: dict) -> tuple[dict, list[dict]]:
    """The config of the plain model the pipeline serves, and what was removed or changed to get it (repair.json:
    removed). Ternary QAT declarations that were evidence (npuport.weights.qat_evidence) go: the served weights are
    plain (fused, or left as they are). For a Llama checkpoint whose auto_map code is its ternary QAT forward, auto_map
    goes too (its AutoTokenizer entry stays) and the architecture is LlamaForCausalLM: the fused model is a stock
    Llama and needs no remote code. Other auto_map code (MiniCPM) stays; the MiniCPM fold drops it in fuse."""
    plain, removed = copy.deepcopy(config), []
    for key in declaration_keys(qat):
        if key in plain:
            reason = "ternary QAT declaration: the served model is plain"
            removed.append({"key": key, "value": plain.pop(key), "reason": reason})
    code = sorted(set(qat_code_files(qat)))
    auto_map = plain.get("auto_map")
    if code and isinstance(auto_map, dict) and plain.get("model_type") == "llama":
        tokenizer = {k: v for k, v in auto_map.items() if k == "AutoTokenizer"}
        if tokenizer != auto_map:
            reason = f"loads the ternary QAT forward ({', '.join(code)}); the fused model is a stock LlamaForCausalLM"
            value = {k: v for k, v in auto_map.items() if k != "AutoTokenizer"}
            removed.append({"key": "auto_map", "value": value, "reason": reason})
            if tokenizer:
                plain["auto_map"] = tokenizer
            else:
                del plain["auto_map"]
        if plain.get("architectures") and plain["architectures"] != ["LlamaForCausalLM"]:
            reason = "the QAT model class is replaced by the stock LlamaForCausalLM"
            removed.append({"key": "architectures", "value": plain.get("architectures"), "reason": reason})
            plain["architectures"] = ["LlamaForCausalLM"]
    return plain, removed


@contextlib.contextmanager
def repaired_view(checkpoint_dir: str | Path, config: dict, trust_remote_code: bool):
    """A scratch directory that reads as the checkpoint with its repaired config: links to the checkpoint's files
    (its own Python modules and tokenizer included; not its config.json or manifest) beside ``config`` as
    config.json. A config that asks for remote code which is not trusted (a MiniCPM download) is left out:
    transformers would try to parse it."""
    with tempfile.TemporaryDirectory(prefix="npuport-repaired-") as scratch:
        for path in sorted(Path(checkpoint_dir).iterdir()):
            if path.name not in ("config.json", MANIFEST_NAME) and path.name not in SKIP_DIRS:
                (Path(scratch) / path.name).symlink_to(_checked(checkpoint_dir, path))
        if trust_remote_code or "auto_map" not in config:
            write_json(Path(scratch) / "config.json", config)
        yield Path(scratch)


def _checked(checkpoint_dir: str | Path, path: Path) -> Path:
    """The real path of a top-level entry of the checkpoint, refused unless it is a regular file or a directory
    inside it whose files all are (tokenizer files are read by transformers through this view)."""
    real = contained(checkpoint_dir, path.name)
    if real.is_dir():
        source_files(path)
        return real
    return regular_file(checkpoint_dir, path.name)


def check_loads(config: dict, checkpoint_dir: str | Path, trust_remote_code: bool) -> str:
    """Load ``config`` with transformers.AutoConfig beside the checkpoint's files (an auto_map config class such
    as MiniCPM's configuration_minicpm.py must sit beside config.json); NpuportError when it does not load."""
    from transformers import AutoConfig

    with repaired_view(checkpoint_dir, config, trust_remote_code) as view:
        try:
            loaded = AutoConfig.from_pretrained(view, trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises many types for a bad config
            raise NpuportError("config.json", f"repaired config does not load in transformers: {exc}") from None
    return type(loaded).__name__


def repair(declared_config_path: str | Path, introspection: dict, trust_remote_code: bool = False) -> tuple[dict, dict]:
    """Return (repaired config, repair report) for a downloaded config.json and its introspection."""
    path = Path(declared_config_path)
    declared = read_config(path.parent, path.name)
    if declared is None:
        raise NpuportError(path, "checkpoint has no config.json: model type and rope settings cannot be derived")
    table = field_table(declared, introspection["derived"])
    config, removed = plain_config(repaired_config(declared, table), qat_of(introspection))
    has_remote_code = "auto_map" in config
    if has_remote_code and not trust_remote_code:
        loaded_as = "not checked (config asks for custom code; trust_remote_code is false)"
    else:
        loaded_as = check_loads(config, path.parent, trust_remote_code)
    report = {
        "fields": table,
        "repaired": [r["field"] for r in table if r["status"] == "repaired"],
        "not_derivable": [r["field"] for r in table if r["status"] == "not derivable"],
        "removed": removed,
        "ambiguities": introspection.get("ambiguities", []),
        "transformers_config_class": loaded_as,
    }
    return config, report
