"""results/report.md: one row per configured model with what each stage found."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from npuport.atomic import atomic_path, read_json


def _engine_cell(document: dict) -> str:
    if document.get("status") != "ok":
        return f"{document.get('status', 'unknown')}: {document.get('reason') or ''}".strip()
    platform = document.get("platform", {})
    return f"ok on {platform.get('device', platform.get('name', 'unknown device'))}"


def model_row(name: str, results: Path) -> dict:
    """What one model's artifacts say, in a few cells."""
    directory = results / name
    repair = read_json(directory / "repair.json")
    fuse = read_json(directory / "model" / "fuse.json")
    return {
        "model": name,
        "config fields repaired": ", ".join(repair["repaired"]) or "none",
        "fusion": fuse["decision"],
        "engine (smoke)": _engine_cell(read_json(directory / "smoke.json")),
        "reference (baseline)": _engine_cell(read_json(directory / "baseline.json")),
    }


def escape_cell(value: object) -> str:
    """Cell text that cannot break a Markdown table row."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def write_index(models: list[str], results: str | Path, target: str | Path) -> None:
    """Write the Markdown index over ``models``."""
    table = pd.DataFrame([model_row(m, Path(results)) for m in models]).map(escape_cell)
    text = "# npuport: adaptation runs\n\n" + table.to_markdown(index=False) + "\n"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
