"""Section 5, task accuracy: the lm-eval tasks on the engine and on the reference, and the paired gate
(accuracy.json)."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import is_number, status_cell
from npuport.report.mdtext import Md, code, fence
from npuport.report.verdicts import NOT_MEASURED


def _score(r: ReportContext, side: Doc) -> str:
    """score ± stderr (points)."""
    score, stderr = side.get("score"), side.get("stderr")
    if not is_number(score):
        return r.f.missing
    return f"{r.f.num(score)} ± {r.f.num(stderr)}" if is_number(stderr) else r.f.num(score)


def tasks_table(r: ReportContext, tasks: list[Doc]) -> Md:
    f = r.f
    columns = [
        ("col.task", lambda v: code(v.get("task", "?"))),
        ("col.metric", lambda v: f.value(v.get("metric"))),
        ("col.n", lambda v: f.value(v.get("n"))),
        ("col.acc_engine", lambda v: _score(r, v.part("engine"))),
        ("col.acc_reference", lambda v: _score(r, v.part("reference"))),
        ("col.difference", lambda v: f.num(v.get("difference"))),
        ("col.lost_gained", lambda v: f"{v.get('engine_worse', '?')} / {v.get('engine_better', '?')}"
         if "engine_worse" in v else f.missing),
        ("col.p_value", lambda v: f.metric(v.get("p_value"))),
        ("col.mdd", lambda v: f.num(v.get("mdd"))),
        ("col.result", lambda v: status_cell(r.t, v.get("status") or NOT_MEASURED)),
        ("col.measured", lambda v: v.get("reason") or ""),
    ]  # fmt: skip
    return r.table(tasks, columns)


def task_accuracy(r: ReportContext) -> dict:
    accuracy = r.docs.accuracy
    check = accuracy.part("check")
    tasks = check.records("tasks")
    engine, reference = accuracy.part("engine"), accuracy.part("reference")
    return {
        "status_cell": status_cell(r.t, accuracy.get("status") or NOT_MEASURED),
        "reason": accuracy.get("reason") if accuracy else r.t("why.artifact_missing", artifact=r.inputs.accuracy.name),
        "table": tasks_table(r, tasks) if tasks else None,
        "alpha": check.get("alpha"),
        "max_drop": check.get("max_drop"),
        "commands": [
            (side, fence(r.portable(doc["command"]), "bash"))
            for side, doc in (("engine", engine), ("reference", reference))
            if isinstance(doc.get("command"), str)
        ],  # fmt: skip
        "versions": engine.get("lm_eval_version") or reference.get("lm_eval_version"),
    }
