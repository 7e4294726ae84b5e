"""results/report.md: one row per configured model with its overall status and a link to its report.

It reads each model's results/<model>/report.json (written with the report, see npuport.report.report_model), so the
status here is the very verdict of the model's own conclusion table.
"""

from __future__ import annotations

from pathlib import Path

from npuport.core.atomic import atomic_path, read_json
from npuport.report.artifacts import Messages, status_cell
from npuport.report.mdtext import Md, link, table, text
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS


def model_row(t: Messages, name: str, results: Path) -> tuple:
    """The index row of one model: link to its report, overall status, engine platform, check counts."""
    report = results / name / "report.md"
    summary_path = results / name / "report.json"
    label = link(name, f"{name}/report.md") if report.is_file() else text(name)
    if not summary_path.is_file():
        return label, status_cell(t, NOT_MEASURED), t("index.no_report"), "", ""
    summary = read_json(summary_path)
    counts = summary.get("counts") or {}
    tally = Md(" ".join(f"{SYMBOLS[s]} {counts.get(s, 0)}" for s in SYMBOLS))
    unmeasured = [t("check." + c["check"]) for c in summary.get("checks") or [] if c.get("status") == NOT_MEASURED]
    status = summary.get("status", NOT_MEASURED)
    return (
        label,
        status_cell(t, status if status in SYMBOLS else NOT_MEASURED),
        summary.get("engine_device") or t("word.not_measured"),
        tally,
        Md("; ".join(unmeasured)) if unmeasured else t("word.none"),
    )


def render_index(models: list[str], results: str | Path, language: str = "en") -> str:
    t = Messages(language)
    rows = [model_row(t, name, Path(results)) for name in models]
    headers = [t("index.model"), t("index.status"), t("index.engine"), t("index.checks"), t("index.not_measured")]
    return f"# {t('index.title')}\n\n{t('index.intro')}\n\n{table(rows, headers)}\n\n{t('head.legend')}\n"


def write_index(models: list[str], results: str | Path, target: str | Path, language: str = "en") -> None:
    """Write the Markdown index over ``models`` (links relative to ``target``, which lives in ``results``)."""
    text_out = render_index(models, results, language)
    with atomic_path(target) as tmp:
        tmp.write_text(text_out, encoding="utf-8")
