"""Section 6, runtime issues: the host's diagnostics (env.json), then what the pipeline's own stages found."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code, text
from npuport.report.sections import fixes
from npuport.report.verdicts import gate_detail, gate_label, join

SEVERITY_SYMBOLS = {"error": "❌", "warning": "⚠", "info": "ℹ"}


@dataclass(frozen=True)
class Issue:
    _: KW_ONLY
    id: str
    severity: str  # error | warning | info (anything else is shown as a warning)
    summary: object  # text or trusted Markdown
    evidence: tuple[Md, ...]
    fix: Md  # section 7
    source: str  # artifact: field the issue was found in
    label: Md = Md("")  # "❌ error: summary", in the report's language

    @classmethod
    def found(cls, r: ReportContext, *, id, severity, summary, evidence, fix, source) -> Issue:
        shown = severity if severity in SEVERITY_SYMBOLS else "warning"
        label = Md(f"{SEVERITY_SYMBOLS[shown]} {r.t('severity.' + shown)}: {text(summary)}")
        evidence = tuple(text(e) for e in evidence)
        return cls(id=id, severity=severity, summary=summary, evidence=evidence, fix=fix, source=source, label=label)


def issues(r: ReportContext) -> list[Issue]:
    """Host diagnostics (env.json) first, then what the pipeline's own stages found; each with its fix."""
    found = [_diagnostic(r, d) for d in r.docs.env.records("diagnostics")]
    found += _config_issues(r) + _stage_issues(r) + _threshold_issues(r) + _layer_issues(r)
    return found + _deployment_issues(r)


def _diagnostic(r: ReportContext, d: Doc) -> Issue:
    return Issue.found(
        r,
        id=d.get("id", "?"),
        severity=d.get("severity", "warning"),
        summary=d.get("summary", ""),
        evidence=d.get("evidence") or [],
        fix=fixes.diagnostic_fix(d.get("fix")),
        source="env.json: diagnostics",
    )


def _config_issues(r: ReportContext) -> list[Issue]:
    t, f = r.t, r.f
    repaired = r.docs.repair.get("repaired") or []
    found = []
    for m in r.docs.introspect.records("mismatches"):
        name = m.get("field")
        fixed = name in repaired
        evidence = t("issue.mismatch_evidence", declared=f.value(m.get("declared")), derived=f.value(m.get("derived")))
        issue = Issue.found(
            r,
            id=f"config_mismatch_{name}",
            severity="error" if fixed else "warning",
            summary=t("issue.mismatch", field=code(name)),
            evidence=[evidence],
            fix=fixes.mismatch_fix(r, name, fixed),
            source="introspect.json: mismatches; repair.json: repaired",
        )
        found.append(issue)
    return found


def _stage_issues(r: ReportContext) -> list[Issue]:
    found = []
    for stage in ("smoke", "baseline"):
        doc = getattr(r.docs, stage)
        if doc and doc.get("status") != "ok":
            status = str(doc.get("status", "?"))
            issue = Issue.found(
                r,
                id=f"{stage}_{status.replace(' ', '_')}",
                severity="error",
                summary=r.t("issue.stage", stage=stage, status=status),
                evidence=[doc.get("reason") or "-"],
                fix=fixes.stage_fix(r, stage),
                source=f"{stage}.json: status",
            )
            found.append(issue)
    serve = r.docs.bench.part("serve")
    if serve.get("status") == "failed":
        issue = Issue.found(
            r,
            id="serve_failed",
            severity="error",
            summary=r.t("issue.serve"),
            evidence=[serve.get("reason") or "-"],
            fix=fixes.serve_fix(r),
            source="bench.json: serve.status, serve.reason",
        )
        found.append(issue)
    return found


def _threshold_issues(r: ReportContext) -> list[Issue]:
    found = []
    for c in r.docs.compare.records("checks"):
        if c.get("passed") is False:
            name = str(c.get("threshold"))
            evidence = join(gate_label(r.t, name, c.get("metric")), gate_detail(r.t, dict(c.data)), sep=": ")
            issue = Issue.found(
                r,
                id=f"threshold_{c.get('threshold')}",
                severity="error",
                summary=r.t("issue.threshold", name=code(name)),
                evidence=[evidence],
                fix=fixes.threshold_fix(r),
                source="compare.json: checks",
            )
            found.append(issue)
    return found


def _layer_issues(r: ReportContext) -> list[Issue]:
    """The first capture point outside its gate (layers.json: first_divergent), with a hint by its kind."""
    divergent = r.docs.layers.part("first_divergent")
    if not divergent:
        return []
    issue = Issue.found(
        r,
        id=f"layers_diverge_{divergent.get('point', '?')}",
        severity="error",
        summary=r.t("issue.layers", module=code(divergent.get("module", "?"))),
        evidence=[divergent.get("evidence") or "-"],
        fix=fixes.layers_fix(r, str(divergent.get("kind"))),
        source="layers.json: first_divergent",
    )
    return [issue]


def _deployment_issues(r: ReportContext) -> list[Issue]:
    """Each deployment configuration that departs from the deployed one (compare.json: deployments)."""
    found = []
    for row in r.docs.compare.part("deployments").records("configurations"):
        if row.get("status") != "failed":
            continue
        issue = Issue.found(
            r,
            id=f"deployment_{row.get('name', '?')}",
            severity="error",
            summary=r.t("issue.deployment", name=code(row.get("name", "?"))),
            evidence=[row.get("reason") or "-"],
            fix=fixes.deployment_fix(r, row),
            source=f"compare.json: deployments.configurations[{row.get('name', '?')}]",
        )
        found.append(issue)
    return found
