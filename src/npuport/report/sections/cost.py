"""Section 10, pipeline cost: wall time, CPU time, peak RSS and I/O per stage, from the benchmark files given."""

from __future__ import annotations

import os

from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code
from npuport.report.pipeline_cost import stage_costs, totals


def cost(r: ReportContext) -> dict:
    """The table (None when no benchmark file exists yet) and where the files lie, as the report names them."""
    paths = r.inputs.benchmarks
    directory = os.path.commonpath([p.parent.as_posix() for p in paths]) if paths else None
    return {
        "table": _table(r),
        "files": code(f"{directory}/<rule>.tsv") if directory else r.t("word.none"),
        "directory": code(f"{directory}/") if directory else r.t("word.none"),
    }


def _table(r: ReportContext) -> Md | None:
    t, f = r.t, r.f
    costs = stage_costs(r.inputs.benchmarks)
    if costs.empty:
        return None
    records = costs.astype(object).where(costs.notna(), None).to_dict("records")
    total = totals(costs)
    records.append({"stage": None, **total})
    columns = [
        ("col.stage", lambda c: t("cost.total") if c["stage"] is None else code(c["stage"])),
        ("col.wall", lambda c: f.seconds(c["wall_s"])),
        ("col.cpu", lambda c: f.seconds(c["cpu_s"])),
        ("col.rss", lambda c: f.mb(c["max_rss_mb"])),
        ("col.io_in", lambda c: "" if c["stage"] is None else f.mb(c["io_in_mb"])),
        ("col.io_out", lambda c: "" if c["stage"] is None else f.mb(c["io_out_mb"])),
        ("col.load", lambda c: "" if c["stage"] is None else f.num(c["mean_load"])),
    ]
    return r.table(records, columns)
