"""The `report_index` stage: one row per configured model with its overall status and a link to its report."""

# It reads the summaries (report.json) the rule declares as inputs, written with each report (see
# npuport.report.report_model), so the status here is the very verdict of the model's own conclusion table.

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from npuport.core.atomic import atomic_path, read_json
from npuport.core.errors import NpuportError
from npuport.report.formatting import status_cell
from npuport.report.mdtext import Md, link, table, text
from npuport.report.messages import Messages
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS, check_label


def model_row(t: Messages, name: str, *, report: Path, summary_path: Path, base: Path) -> tuple:
    """The index row of one model: link to its report (relative to ``base``), overall status, engine platform,
    check counts."""
    target = Path(os.path.relpath(report.resolve(), base.resolve())).as_posix()
    label = link(name, target) if report.is_file() else text(name)
    if not summary_path.is_file():
        return label, status_cell(t, NOT_MEASURED), t("index.no_report"), "", ""
    summary = read_json(summary_path)
    counts = summary.get("counts") or {}
    tally = Md(" ".join(f"{SYMBOLS[s]} {counts.get(s, 0)}" for s in SYMBOLS))
    checks = summary.get("checks") or []
    unmeasured = [check_label(t, str(c.get("check"))) for c in checks if c.get("status") == NOT_MEASURED]
    status = summary.get("status", NOT_MEASURED)
    return (
        label,
        status_cell(t, status if status in SYMBOLS else NOT_MEASURED),
        summary.get("engine_device") or t("word.not_measured"),
        tally,
        Md("; ".join(unmeasured)) if unmeasured else t("word.none"),
    )


def render_index(
    target: str | Path,
    *,
    models: Sequence[str],
    reports: Sequence[str | Path],
    summaries: Sequence[str | Path],
    language: str = "en",
) -> str:
    """The index Markdown; ``reports`` and ``summaries`` are the models' files, in the order of ``models``."""
    if not len(models) == len(reports) == len(summaries):
        raise NpuportError(
            "report_index", f"{len(models)} models but {len(reports)} reports, {len(summaries)} summaries"
        )
    t = Messages(language)
    base = Path(target).parent
    rows = [
        model_row(t, name, report=Path(report), summary_path=Path(summary), base=base)
        for name, report, summary in zip(models, reports, summaries, strict=True)
    ]
    headers = [t("index.model"), t("index.status"), t("index.engine"), t("index.checks"), t("index.not_measured")]
    return f"# {t('index.title')}\n\n{t('index.intro')}\n\n{table(rows, headers)}\n\n{t('head.legend')}\n"


def write_index(
    target: str | Path,
    *,
    models: Sequence[str],
    reports: Sequence[str | Path],
    summaries: Sequence[str | Path],
    language: str = "en",
) -> None:
    """Write the Markdown index of ``models`` to ``target``; its links are relative to ``target``'s directory."""
    text_out = render_index(target, models=models, reports=reports, summaries=summaries, language=language)
    with atomic_path(target) as tmp:
        tmp.write_text(text_out, encoding="utf-8")
