"""The `report_model` stage: one model's adaptation report (Markdown), its plots and a summary JSON."""

# Everything shown comes from the artifacts the rule declares as inputs: the modules of sections/ turn them into
# section contexts, templates/report.md.j2 lays the sections out and the message catalogs
# (templates/messages.<lang>.yaml) word them. Every value from an artifact is escaped for Markdown
# (npuport.report.mdtext); a value no artifact holds renders as "not measured".

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from npuport.core.atomic import atomic_dir, atomic_path, write_json
from npuport.report import plots
from npuport.report.artifacts import Artifacts, Doc, load_artifacts
from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code, text
from npuport.report.mdtext import image as md_image
from npuport.report.messages import TEMPLATE_DIR, Messages
from npuport.report.paths import ReportInputs, ReportOutputs
from npuport.report.sections import (
    accuracy_performance,
    adaptation,
    appendix,
    architecture,
    conclusion,
    cost,
    deployment,
    deployments,
    environment,
    fixes,
    header,
    layers,
    runtime_issues,
    serving,
    statistics,
    task_accuracy,
    verification,
)
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS, overall_status, verdicts

log = logging.getLogger(__name__)


def template_context(r: ReportContext, plot_links: dict[str, str]) -> dict[str, Any]:
    """Everything the template shows, section by section."""
    rows = verdicts(r.t, r.docs)
    overall = overall_status(rows)
    issues = runtime_issues.issues(r)
    return {
        "model": r.model,
        "artifact_dir": r.inputs.directory(),
        "header": header.header(r, rows, overall),
        "verdicts": rows,
        "overall": overall,
        "architecture": architecture.architecture(r),
        "environment": environment.environment(r),
        "adaptation": adaptation.adaptation(r),
        "deployment": deployment.deployment(r),
        "deployments": deployments.deployments(r),
        "performance": accuracy_performance.performance(r),
        "accuracy": accuracy_performance.accuracy(r, accuracy_performance.load_tokenizer(r)),
        "statistics": statistics.statistics(r),
        "layers": layers.layers(r),
        "serving": serving.serving(r),
        "task_accuracy": task_accuracy.task_accuracy(r),
        "plots": {name: md_image(r.t("plot." + name), link) for name, link in plot_links.items()},
        "issues": issues,
        "fixes": fixes.fixes(issues),
        "verification": verification.verification(r),
        "conclusion": conclusion.conclusion_table(r, rows),
        "key_measurements": conclusion.key_measurements(r),
        "cost": cost.cost(r),
        "appendix": appendix.appendix(r),
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


def summary(context: dict[str, Any], docs: Artifacts | None = None) -> dict[str, Any]:
    """report.json: the verdicts as data, for the index and for machines; with ``docs``, the gates beside their
    noise floor and the evaluation text's headline numbers too."""
    rows = context["verdicts"]
    checks = [{"check": v.check, "status": v.status, "detail": str(v.detail), "evidence": v.evidence} for v in rows]
    return {
        "model": context["model"],
        "status": context["overall"],
        "engine_device": context["deployment"]["platform"],
        "counts": {status: sum(v.status == status for v in rows) for status in SYMBOLS},
        "checks": checks,
        **(gate_summary(docs.compare) if docs else {}),
    }


GATE_FIELDS = ("kind", "value", "floor", "ratio", "epsilon", "op", "limit", "passed", "ratio_to_floor")


def gate_summary(compare: Doc) -> dict[str, Any]:
    """report.json's ``gates`` (every check of compare.json, its numbers as measured) and ``evaluation``."""
    evaluation = compare.part("evaluation")
    sides = {side: evaluation.part(side) for side in ("engine", "floor")}
    gates = [{"gate": c.get("threshold"), **{k: c.get(k) for k in GATE_FIELDS}} for c in compare.records("checks")]
    return {
        "gates": gates,
        "evaluation": {
            "status": evaluation.get("status", NOT_MEASURED),
            "reason": evaluation.get("reason"),
            "rope_switch": evaluation.value("rope_switch", "position"),
            "perplexity_reference": sides["engine"].value("perplexity", "base"),
            **{f"perplexity_{side}": doc.value("perplexity", "other") for side, doc in sides.items()},
            **{f"mean_kld_{side}": doc.value("kld", "mean") for side, doc in sides.items()},
            **{f"same_top1_{side}": doc.value("same_top1", "p") for side, doc in sides.items()},
        },
    }


def write_report(
    model: str,
    *,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    language: str = "en",
    configfiles: Iterable[str] = (),
    stage_targets: Iterable[tuple[str, str]] = (),
) -> str:
    """Render the report, its plots and its summary from exactly the declared ``inputs`` into ``outputs``.

    ``inputs``/``outputs``: the rule's named inputs and outputs (``snakemake.input``/``output`` as dicts).
    ``configfiles``: the run's config files, so that the commands in the report reproduce this run.
    ``stage_targets``: (artifact, rule) per stage output, for the table of commands that rebuild each artifact.
    """
    paths, out = ReportInputs.from_mapping(inputs), ReportOutputs.from_mapping(outputs)
    t = Messages(language)
    r = ReportContext(
        model,
        inputs=paths,
        outputs=out,
        docs=load_artifacts(paths),
        t=t,
        configfiles=tuple(configfiles),
        stage_targets=tuple(stage_targets),
    )
    with atomic_dir(out.plots) as staging:
        drawn = plots.draw(r.docs, staging, previous=out.plots)
    # Links relative to the report, so it renders wherever the results are copied to.
    base = out.report.resolve().parent
    links = {name: Path(os.path.relpath(out.plots.resolve() / f, base)).as_posix() for name, f in drawn.items()}
    context = template_context(r, links)
    markdown = render(context, t)
    with atomic_path(out.report) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    if out.summary:
        write_json(out.summary, summary(context, r.docs))
    log.info("report of %s: %s (%s)", model, out.report, context["overall"])
    return markdown
