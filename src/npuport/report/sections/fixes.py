"""Section 7, fixes: what fixes each runtime issue of section 6, in the same order."""

from __future__ import annotations

from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code, text


def mismatch_fix(r: ReportContext, field: str, repaired: bool) -> Md:
    """A config field that contradicts the weights: repaired by the pipeline, or left to the reader."""
    return r.t("fix.repaired" if repaired else "fix.not_repaired", field=code(field))


def stage_fix(r: ReportContext, stage: str) -> Md:
    """A stage that did not complete: its log, and the command that reruns it once the cause is fixed."""
    rerun = code(r.snakemake(getattr(r.inputs, stage), "--forcerun", stage))
    return r.t("fix.stage", log=code(f"logs/{r.model}/{stage}.log"), command=rerun)


def serve_fix(r: ReportContext) -> Md:
    return r.t("fix.serve")


def threshold_fix(r: ReportContext) -> Md:
    return r.t("fix.threshold")


LAYER_KINDS = ("embed", "attention", "mlp", "layer", "norm", "logits")


def layers_fix(r: ReportContext, kind: str) -> Md:
    """Where to look for the first divergent point, by its kind; a pure scale bug only shows in relative L2."""
    hint = r.t("fix.layers." + kind) if kind in LAYER_KINDS else r.t("fix.layers.other")
    return Md(f"{hint} {r.t('fix.layers_scale')}")


def diagnostic_fix(fix: object) -> Md:
    """A host diagnostic's own fix (env.json), as text."""
    return text(fix or "")


def fixes(issues) -> list[tuple[Md, Md]]:
    """(issue id, fix) per issue of section 6."""
    return [(code(issue.id), issue.fix) for issue in issues]
