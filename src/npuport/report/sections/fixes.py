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


HINT_KEYS = ("enforce_eager", "max_num_batched_tokens", "kv_cache_dtype", "tensor_parallel_size", "compilation_config")


def deployment_fix(r: ReportContext, row) -> Md:
    """A deployment configuration that departs from the deployed one: which path carries the fault, and the setting
    that avoids it while it is fixed."""
    differs = ", ".join(row.get("differs") or []) or str(row.part("workload").get("kind"))
    name = code(row.get("name"))
    if row.get("fault_on") == "the deployed configuration":
        gates = ", ".join(g.get("threshold", "?") for g in row.records("gates") if g.get("deployed_passed") is False)
        return r.t("fix.deployment.deployed", gates=code(gates or "?"), name=name, differs=code(differs))
    keys = [d.split("=", 1)[0] for d in row.get("differs") or []]
    kind = row.part("workload").get("kind")
    hint_key = next((k for k in keys if k in HINT_KEYS), kind if kind in ("batch", "prefix_hit") else "other")
    return r.t("fix.deployment.own", differs=code(differs), hint=r.t("fix.deployment.hint." + hint_key))


def diagnostic_fix(fix: object) -> Md:
    """A host diagnostic's own fix (env.json), as text."""
    return text(fix or "")


def fixes(issues) -> list[tuple[Md, Md]]:
    """(issue id, fix) per issue of section 6."""
    return [(code(issue.id), issue.fix) for issue in issues]
