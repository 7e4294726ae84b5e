"""What every report section uses: the loaded artifacts, the message catalog and the number formatting."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError
from npuport.report.mdtext import Md, code, table, text
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS, format_value

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
LANGUAGES = ("en", "zh")
DEFAULT_CONFIGFILE = "config/config.yaml"
# Artifact key -> path under results/<model>/.
ARTIFACTS = {
    "manifest": "download/manifest.json",
    "introspect": "introspect.json",
    "config": "config.json",
    "repair": "repair.json",
    "fuse": "model/fuse.json",
    "env": "env.json",
    "smoke": "smoke.json",
    "baseline": "baseline.json",
    "compare": "compare.json",
}


class Messages:
    """The message catalog of one language: ``t(key, **params)`` gives trusted Markdown, params escaped."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise NpuportError("report.language", f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        self.language = language
        self.catalog = load_catalog(language)

    def __call__(self, key: str, **params: Any) -> Md:
        try:
            message = self.catalog[key]
        except KeyError:
            raise NpuportError(f"messages.{self.language}.yaml", f"no message {key!r}") from None
        return Md(message.format(**{name: text(value) for name, value in params.items()}))

    def has(self, key: str) -> bool:
        return key in self.catalog


def load_catalog(language: str) -> dict[str, str]:
    with open(TEMPLATE_DIR / f"messages.{language}.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mean(values) -> float | None:
    numbers = [v for v in values if is_number(v)]
    return sum(numbers) / len(numbers) if numbers else None


def ratio(a, b) -> float | None:
    return a / b if is_number(a) and is_number(b) and b else None


def mark(passed: bool | None) -> str:
    return {True: "✅", False: "❌"}.get(passed, "⚠")


class Formatter:
    """Numbers and facts as cell text; a value an artifact does not hold is the catalog's "not measured"."""

    def __init__(self, t: Messages):
        self.t = t
        self.missing = t("word.not_measured")

    def num(self, value, digits: int = 3) -> str:
        """Integers with thousands separators; floats with ``digits`` significant digits (tiny ones as 1.2e-05)."""
        if not is_number(value):
            return self.missing
        if isinstance(value, int):
            return f"{value:,}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        whole = len(str(int(abs(value)))) if abs(value) >= 1 else 0
        return f"{value:,.{max(digits - whole, 0)}f}"

    def seconds(self, value) -> str:
        return f"{self.num(value)} s" if is_number(value) else self.missing

    def ms(self, value) -> str:
        return f"{self.num(value * 1000)} ms" if is_number(value) else self.missing

    def mb(self, value) -> str:
        return f"{self.num(value)} MB" if is_number(value) else self.missing

    def bytes(self, value) -> str:
        if not is_number(value):
            return self.missing
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{self.num(value / size)} {unit} ({value:,} B)"
        return f"{value:,} B"

    def value(self, value) -> str:
        """A config or JSON value: absent, true/false, numbers readable, anything else as JSON."""
        if value is None:
            return self.t("word.absent")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{int(value):,}" if value.is_integer() and abs(value) < 1e15 else format_value(value)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def metric(self, value) -> str:
        return format_value(value) if is_number(value) else self.missing

    def yes_no(self, value) -> str:
        if isinstance(value, bool):
            return self.t("word.yes") if value else self.t("word.no")
        return self.missing if value is None else str(value)

    def speed(self, engine_advantage) -> str:
        """How much faster (or slower) the engine is than the reference."""
        if not is_number(engine_advantage) or engine_advantage <= 0:
            return ""
        if engine_advantage >= 1:
            return self.t("perf.faster", x=self.num(engine_advantage))
        return self.t("perf.slower", x=self.num(1 / engine_advantage))


def status_cell(t: Messages, status: str) -> Md:
    """✅ passed / ❌ failed / ⚠ not measured, in the report's language."""
    return Md(f"{SYMBOLS.get(status, SYMBOLS[NOT_MEASURED])} {t('status.' + status.replace(' ', '_'))}")


def stage_status(doc: dict) -> str:
    """A smoke/baseline/serve status as a verdict status (ok passed, failed failed, anything else not measured)."""
    return {"ok": "passed", "failed": "failed"}.get(doc.get("status"), NOT_MEASURED)


@dataclass
class Inputs:
    """One model's artifacts and what the sections need to word and format them."""

    model: str
    directory: Path
    docs: dict[str, Any]
    t: Messages
    configfiles: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.f = Formatter(self.t)
        self.configfiles = [c for c in self.configfiles if c != DEFAULT_CONFIGFILE]

    def doc(self, key: str) -> dict:
        """An artifact as a dict; {} when it is missing, so every lookup in it can fall back to not measured."""
        value = self.docs.get(key)
        return value if isinstance(value, dict) else {}

    def snakemake(self, *args: str) -> str:
        """A snakemake command line for this run (extra config files of the run appended)."""
        extra = [arg for c in self.configfiles for arg in ("--configfile", c)]
        return shlex.join(["snakemake", "--cores", "4", *args, *extra])

    def facts(self, rows, first: str = "col.property") -> Md:
        """A (label, value, source) table; the source column is the artifact field the value comes from."""
        t = self.t
        return table([(a, b, code(c)) for a, b, c in rows], [t(first), t("col.value"), t("col.source")])


def load_artifacts(model_dir: str | Path) -> dict[str, Any]:
    """Every artifact JSON of one model; None where the file is absent."""
    model_dir = Path(model_dir)
    return {key: read_json(model_dir / rel) if (model_dir / rel).is_file() else None for key, rel in ARTIFACTS.items()}
