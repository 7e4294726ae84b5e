"""Repair a checkpoint's config.json from what introspection derived from its weights."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from npuport.atomic import write_json
from npuport.errors import NpuportError
from npuport.introspect import DERIVED_FIELDS

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


def check_loads(config: dict, trust_remote_code: bool, code_dir: str | Path | None = None) -> str:
    """Load ``config`` with transformers.AutoConfig; NpuportError when it does not load.

    ``code_dir``: where the checkpoint's own Python modules are, for a config whose auto_map names them."""
    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        write_json(Path(tmp) / "config.json", config)
        # MiniCPM hook: an auto_map config class (configuration_minicpm.py) must sit beside config.json
        if trust_remote_code and code_dir is not None:
            for module in sorted(Path(code_dir).glob("*.py")):
                shutil.copy2(module, tmp)
        try:
            loaded = AutoConfig.from_pretrained(tmp, trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises many types for a bad config
            raise NpuportError("config.json", f"repaired config does not load in transformers: {exc}") from None
    return type(loaded).__name__


def repair(declared_config_path: str | Path, introspection: dict, trust_remote_code: bool = False) -> tuple[dict, dict]:
    """Return (repaired config, repair report) for a downloaded config.json and its introspection."""
    from npuport.atomic import read_json

    path = Path(declared_config_path)
    if not path.exists():
        raise NpuportError(path, "checkpoint has no config.json: model type and rope settings cannot be derived")
    declared = read_json(path)
    if not isinstance(declared, dict):
        raise NpuportError(path, "config.json is not a JSON object")
    table = field_table(declared, introspection["derived"])
    config = repaired_config(declared, table)
    has_remote_code = "auto_map" in config
    if has_remote_code and not trust_remote_code:
        loaded_as = "not checked (config asks for custom code; trust_remote_code is false)"
    else:
        loaded_as = check_loads(config, trust_remote_code, path.parent)
    report = {
        "fields": table,
        "repaired": [r["field"] for r in table if r["status"] == "repaired"],
        "not_derivable": [r["field"] for r in table if r["status"] == "not derivable"],
        "ambiguities": introspection.get("ambiguities", []),
        "transformers_config_class": loaded_as,
    }
    return config, report
