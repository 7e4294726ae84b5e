"""Section 5, serving under load: vLLM's serving benchmark over the ladder, the efficiency figure against the
bandwidth bound and the regression gate (bench.json)."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import is_number, mark, stage_status, status_cell
from npuport.report.mdtext import Md, code, fence
from npuport.report.tables import Verbatim


def _latency(r: ReportContext, point: Doc, metric: str) -> str:
    """mean / p99 of one latency metric (ms)."""
    values = point.part(f"{metric}_ms")
    mean, p99 = values.get("mean"), values.get("p99")
    if not is_number(mean):
        return r.f.missing
    return f"{r.f.num(mean)} / {r.f.num(p99)}" if is_number(p99) else r.f.num(mean)


def _requests(r: ReportContext, point: Doc) -> str:
    """completed / sent, and the failed and truncated ones when there are any."""
    completed = point.get("completed")
    if completed is None:
        return r.f.missing
    shown = f"{completed} / {point.get('num_prompts', '?')}"
    lost = [f"{point.get(k)} {k}" for k in ("failed", "truncated") if point.get(k)]
    return f"{shown} ({', '.join(lost)})" if lost else shown


def points_table(r: ReportContext, points: list[Doc]) -> Md:
    f = r.f
    columns = [
        ("col.point", lambda p: code(p.get("name", "?"))),
        ("col.concurrency", lambda p: f.value(p.get("concurrency"))),
        ("col.status", lambda p: f"{mark({'ok': True, 'failed': False}.get(p.get('status')))} {p.get('status')}"),
        ("col.requests", lambda p: _requests(r, p)),
        ("col.req_s", lambda p: f.num(p.get("request_throughput"))),
        ("col.out_tok_s", lambda p: f.num(p.get("output_throughput"))),
        ("col.total_tok_s", lambda p: f.num(p.get("total_token_throughput"))),
        (Verbatim("TTFT ms mean / p99"), lambda p: _latency(r, p, "ttft")),
        (Verbatim("TPOT ms mean / p99"), lambda p: _latency(r, p, "tpot")),
        (Verbatim("ITL ms mean / p99"), lambda p: _latency(r, p, "itl")),
        (Verbatim("E2EL ms mean / p99"), lambda p: _latency(r, p, "e2el")),
    ]
    return r.table(points, columns)


def regression_table(r: ReportContext, regression: Doc) -> Md | None:
    rows = regression.records("points")
    if not rows:
        return None
    f = r.f
    columns = [
        ("col.point", lambda p: code(p.get("point", "?"))),
        ("col.out_tok_s", lambda p: f.num(p.get("output_throughput"))),
        ("col.baseline_tok_s", lambda p: f.num(p.get("baseline_output_throughput"))),
        ("col.ratio", lambda p: f.num(p.get("ratio"))),
        ("col.passed", lambda p: mark(p.get("passed"))),
    ]
    return r.table(rows, columns)


def serving(r: ReportContext) -> dict:
    bench = r.docs.bench
    points = bench.records("points")
    held, efficiency, regression = bench.part("held"), bench.part("efficiency"), bench.part("regression")
    first = next((p.get("command") for p in points if p.get("command")), None)
    method = bench.part("benchmark")
    return {
        "status_cell": status_cell(r.t, stage_status(bench)),
        "reason": bench.get("reason") if bench else r.t("why.artifact_missing", artifact=r.inputs.bench.name),
        "platform": bench.value("platform", "device"),
        "method": [(code(k), v) for k, v in method.items()],
        "command": fence(first, "bash") if first else None,
        "table": points_table(r, points) if points else None,
        "held_cell": status_cell(r.t, held.get("status") or "not measured"),
        "held_reason": held.get("reason"),
        "efficiency": efficiency.get("text"),
        "efficiency_reason": efficiency.get("reason"),
        "efficiency_note": efficiency.get("note"),
        "bandwidth": _bandwidth(r, efficiency.part("bandwidth")),
        "regression_cell": status_cell(r.t, regression.get("status") or "not measured"),
        "regression_reason": regression.get("reason"),
        "regression_table": regression_table(r, regression),
        "baseline": regression.get("baseline"),
    }


def _bandwidth(r: ReportContext, bandwidth: Doc) -> str | None:
    """Which bandwidth the bound used and where it comes from."""
    if not bandwidth.get("kind"):
        return None
    gb_s = bandwidth.get("bytes_per_s") / 1e9 if is_number(bandwidth.get("bytes_per_s")) else None
    return r.t("s5.bench_bandwidth", kind=bandwidth.get("kind"), gb_s=r.f.num(gb_s),
               source=bandwidth.get("source") or bandwidth.get("method") or "-")  # fmt: skip
