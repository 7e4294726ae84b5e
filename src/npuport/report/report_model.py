"""The `report_model` stage: one model's adaptation report (Markdown), its plots and a summary JSON.

Everything shown comes from the model's artifacts under results/<model>/: report_setup and report_results
turn them into section contexts, templates/report.md.j2 lays the sections out and the message catalogs
(templates/messages.<lang>.yaml) word them. Every value from an artifact is escaped for Markdown
(npuport.report.mdtext); a value no artifact holds renders as "not measured".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

from npuport.core.atomic import atomic_dir, atomic_path, write_json
from npuport.report import plots, sections_results, sections_setup
from npuport.report.artifacts import TEMPLATE_DIR, Inputs, Messages, load_artifacts, status_cell
from npuport.report.mdtext import Md, code, table, text
from npuport.report.mdtext import image as md_image
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS, dig, overall_status, verdicts


def load_tokenizer(model_dir: Path):
    """The fused model's tokenizer (to show divergent tokens as text), or None."""
    path = model_dir / "model" / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - token text is a convenience; the ids are shown regardless
        return None


def _logprob_limit(docs: dict):
    checks = dig(docs, "compare", "checks", default=[])
    return next((c.get("limit") for c in checks if c.get("threshold") == "max_abs_logprob_diff"), None)


def draw_plots(docs: dict, plots_dir: Path) -> dict[str, str]:
    """Draw every plot whose data was measured into ``plots_dir``; plot name -> file name."""
    drawn = {}
    compare, smoke, baseline = (docs.get(key) or {} for key in ("compare", "smoke", "baseline"))
    if plots.logprob_diff_plot(compare, plots_dir / plots.LOGPROB_DIFF, _logprob_limit(docs)):
        drawn["logprob_diff"] = plots.LOGPROB_DIFF
    if plots.speed_plot(smoke, baseline, plots_dir / plots.SPEED):
        drawn["speed"] = plots.SPEED
    return drawn


def build_context(inputs: Inputs, plot_links: dict[str, str]) -> dict[str, Any]:
    """Everything the template shows, section by section."""
    t, docs = inputs.t, inputs.docs
    rows = verdicts(t, docs)
    overall = overall_status(rows)
    missing = [t("check." + v.check) for v in rows if v.status == NOT_MEASURED]
    header = [
        (
            t("head.source"),
            sections_setup.source_text(inputs.doc("manifest")) if docs.get("manifest") else t("word.not_measured"),
        ),
        (t("head.status"), status_cell(t, overall)),
        (t("head.engine"), dig(docs, "smoke", "platform", "device", default=inputs.f.missing)),
        (t("head.reference"), dig(docs, "baseline", "platform", "device", default=inputs.f.missing)),
        (t("head.not_measured"), Md("; ".join(missing)) if missing else t("word.none")),
    ]
    return {
        "model": inputs.model,
        "header": table(header, [t("col.item"), t("col.value")]),
        "verdicts": rows,
        "overall": overall,
        "architecture": sections_setup.architecture(inputs),
        "environment": sections_setup.environment(inputs),
        "adaptation": sections_setup.adaptation(inputs),
        "deployment": sections_setup.deployment(inputs),
        "performance": sections_results.performance(inputs),
        "accuracy": sections_results.accuracy(inputs, load_tokenizer(inputs.directory)),
        "plots": {name: md_image(t("plot." + name), link) for name, link in plot_links.items()},
        "issues": sections_results.issues(inputs),
        "verification": sections_results.verification(inputs),
        "conclusion": sections_results.conclusion_table(inputs, rows),
        "key_measurements": sections_results.key_measurements(inputs),
        "cost": sections_results.cost(inputs),
        "appendix": sections_results.appendix(inputs),
    }


def _environment() -> jinja2.Environment:
    def finalize(value):
        return value if isinstance(value, Md) else text("" if value is None else value)

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=False,  # Markdown, not HTML: `finalize` escapes every value that is not trusted Markdown
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(context: dict[str, Any], t: Messages, template: str = "report.md.j2") -> str:
    return _environment().get_template(template).render(t=t, code=code, **context)


def summary(context: dict[str, Any]) -> dict[str, Any]:
    """report.json: the verdicts as data, for the index and for machines."""
    rows = context["verdicts"]
    return {
        "model": context["model"],
        "status": context["overall"],
        "engine_device": context["deployment"]["platform"],
        "counts": {status: sum(v.status == status for v in rows) for status in SYMBOLS},
        "checks": [
            {"check": v.check, "status": v.status, "detail": str(v.detail), "evidence": v.evidence} for v in rows
        ],  # fmt: skip
    }


def write_report(
    model: str,
    model_dir: str | Path,
    report_path: str | Path,
    plots_dir: str | Path,
    summary_path: str | Path | None = None,
    language: str = "en",
    configfiles: list[str] | None = None,
) -> str:
    """Render results/<model>/report.md, its plots/ and report.json from the artifacts in ``model_dir``.

    ``configfiles``: the run's config files, so that the commands in the report reproduce this run.
    """
    t = Messages(language)
    model_dir, plots_dir = Path(model_dir), Path(plots_dir)
    inputs = Inputs(model, model_dir, load_artifacts(model_dir), t, list(configfiles or []))
    with atomic_dir(plots_dir) as staging:
        drawn = draw_plots(inputs.docs, staging)
    # Links relative to the report, so it renders wherever results/ is copied to.
    base = Path(report_path).resolve().parent
    links = {name: Path(os.path.relpath(plots_dir.resolve() / f, base)).as_posix() for name, f in drawn.items()}
    context = build_context(inputs, links)
    markdown = render(context, t)
    with atomic_path(report_path) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    if summary_path:
        write_json(summary_path, summary(context))
    return markdown
