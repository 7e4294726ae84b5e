"""Section 5.5, layer-by-layer comparison (layers.json): every capture point, engine beside the noise floor."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import mark, status_cell
from npuport.report.mdtext import code
from npuport.report.verdicts import NOT_MEASURED, format_ratio


def layers(r: ReportContext) -> dict:
    doc = r.docs.layers
    status = doc.get("status") if doc.get("status") in ("passed", "failed") else NOT_MEASURED
    reason = doc.get("reason") or (None if doc else r.t("why.artifact_missing", artifact="layers.json"))
    points = doc.records("points")
    return {
        "status_cell": status_cell(r.t, status),
        "reason": reason,
        "line": _line(r, doc) if points else None,
        "table": _table(r, points) if points else None,
    }


def _line(r: ReportContext, doc: Doc) -> object:
    gate = doc.part("gate")
    return r.t(
        "layers.line",
        tokens=r.f.num(doc.get("tokens")),
        sequences=len(doc.records("sequences")),
        mode=r.f.value(doc.get("mode")),
        reference=r.f.value(doc.get("reference_dtype")),
        engine=r.f.value(doc.get("engine_dtype")),
        rule=code(gate.get("rule", "?")),
        ratio=r.f.value(gate.get("ratio")),
        epsilon=r.f.value(gate.get("epsilon")),
        gain_rule=code(gate.get("gain_rule", "?")),
        allowance=r.f.value(gate.get("gain_allowance")),
        method=doc.get("method") or r.f.missing,
    )


def _table(r: ReportContext, points: list[Doc]):
    f = r.f
    columns = [
        ("col.point", lambda p: code(p.get("point"))),
        ("col.engine_rel_l2", lambda p: f.metric(p.value("engine", "rel_l2"))),
        ("col.floor_rel_l2", lambda p: f.metric(p.get("floor_rel_l2", p.value("floor", "rel_l2")))),
        ("col.to_floor", lambda p: format_ratio(p.get("ratio_rel_l2")) if p.get("ratio_rel_l2") is not None else "—"),
        ("col.limit", lambda p: f.metric(p.get("limit_rel_l2"))),
        ("col.gain", lambda p: f.metric(p.value("engine", "gain"))),
        ("col.gain_limit", lambda p: f.metric(p.get("limit_gain"))),
        ("col.cosine", lambda p: _cosine(p.value("engine", "cosine"))),
        ("col.max_abs", lambda p: f.metric(p.value("engine", "max_abs"))),
        ("col.passed", lambda p: mark(p.get("passed"))),
    ]
    return r.table(points, columns)


def _cosine(value) -> str:
    return f"{value:.6f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"
