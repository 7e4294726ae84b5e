"""Section 5, serving under load: vLLM's serving benchmark over the ladder, the efficiency figure against the
bandwidth bound and the regression gate; the capacity within the latency objective, each run's goodput, steady-state
window and the server's /metrics, the knee and the limit reached first (bench.json)."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import is_number, mark, stage_status, status_cell
from npuport.report.mdtext import Md, code, fence
from npuport.report.tables import Verbatim
from npuport.report.verdicts import capacity_text


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


def _percent(r: ReportContext, value) -> str:
    return f"{r.f.num(100 * value)} %" if is_number(value) else r.f.missing


def _slo_latency(r: ReportContext, run: Doc, metric: str) -> str:
    """The objective's percentile of one metric in one run (vLLM's figure; bench.json: objective.<metric>_ms)."""
    value = run.value("objective", f"{metric}_ms")
    return r.f.num(value) if is_number(value) else r.f.missing


def _steady(r: ReportContext, run: Doc) -> str:
    """The steady window: its seconds and requests, ⚠ when AISBench's rule finds it too short."""
    steady = run.part("steady")
    if not is_number(steady.get("window_s")) or not steady.get("window_s"):
        return r.f.missing
    shown = f"{r.f.num(steady.get('window_s'))} s / {steady.get('requests', '?')}"
    return shown if steady.get("long_enough") else f"{shown} ⚠"


def _steady_throughput(r: ReportContext, run: Doc) -> str:
    value = run.value("steady", "output_throughput")
    if not is_number(value):
        return r.f.missing
    return r.f.num(value) if run.value("steady", "long_enough") else f"{r.f.num(value)} ⚠"


NO_SAMPLE = "—"  # no scrape fell while the run's requests were in flight


def _sampled(run: Doc) -> bool:
    """Whether a scrape fell while the run's requests were in flight (a record without the count: assume so)."""
    return run.value("server_metrics", "samples_during_requests") != 0


def _gauge(r: ReportContext, run: Doc, key: str) -> str:
    value = run.value("server_metrics", key, "max")
    if not is_number(value):
        return r.f.missing
    return _count(r, value) if _sampled(run) else NO_SAMPLE


def _kv(r: ReportContext, run: Doc) -> str:
    value = run.value("server_metrics", "kv_cache_usage", "max")
    if not is_number(value):
        return r.f.missing
    if not _sampled(run):
        return NO_SAMPLE
    return "0 %" if value == 0 else _percent(r, value)


def _count(r: ReportContext, value) -> str:
    """A counter's increase (a whole number the text exposition writes as a float)."""
    return r.f.num(int(value)) if is_number(value) and float(value).is_integer() else r.f.num(value)


def load_columns(r: ReportContext, slo: Doc) -> list:
    """The objective, goodput, steady-window and /metrics columns of one run (a ladder point or a probe repeat)."""
    f = r.f
    columns = [("col.within_objective", lambda p: mark(p.value("objective", "met")))]
    for metric in ("ttft", "tpot"):
        if is_number(slo.get(f"{metric}_ms")):
            percentile = slo.get(f"{metric}_percentile")
            word = f"{percentile:g}" if is_number(percentile) else "?"
            columns.append((Verbatim(f"{metric.upper()} p{word} ms"), lambda p, m=metric: _slo_latency(r, p, m)))
    return columns + [
        ("col.goodput", lambda p: f.num(p.get("goodput_req_s"))),
        ("col.share_within", lambda p: _percent(r, p.value("objective", "share_within"))),
        ("col.steady_window", lambda p: _steady(r, p)),
        ("col.steady_tok_s", lambda p: _steady_throughput(r, p)),
        ("col.kv_max", lambda p: _kv(r, p)),
        ("col.running_waiting", lambda p: f"{_gauge(r, p, 'running')} / {_gauge(r, p, 'waiting')}"),
        ("col.preemptions", lambda p: _count(r, p.value("server_metrics", "preemptions"))),
    ]


def load_table(r: ReportContext, points: list[Doc], slo: Doc) -> Md | None:
    """Per ladder point: the objective, vLLM's goodput, the steady window and the server's /metrics."""
    measured = [p for p in points if p.get("objective") or p.get("server_metrics")]
    if not measured:
        return None
    return r.table(measured, [("col.point", lambda p: code(p.get("name", "?"))), *load_columns(r, slo)])


def probes_table(r: ReportContext, capacity: Doc, slo: Doc) -> Md | None:
    """One row per probe repeat of the capacity search, in the order they ran."""
    runs = [(probe, run) for probe in capacity.records("probes") for run in probe.records("runs")]
    if not runs:
        return None

    def verdict(probe: Doc) -> str:
        return f"{probe.get('verdict', '?')} ({probe.get('met', '?')}/{probe.get('repeats', '?')})"

    columns = [
        ("col.capacity_load", lambda pr: r.f.value(pr[0].get("value"))),
        ("col.verdict", lambda pr: verdict(pr[0])),
        ("col.point", lambda pr: code(pr[1].get("name", "?"))),
        ("col.requests", lambda pr: _requests(r, pr[1])),
        *[(key, (lambda pr, cell=cell: cell(pr[1]))) for key, cell in load_columns(r, slo)],
    ]
    return r.table(runs, columns)


def knee_lines(r: ReportContext, limits: Doc) -> list[Md]:
    lines = []
    for k in limits.records("knees"):
        if is_number(k.get("concurrency")):
            lines.append(r.t("s5.knee", series=code(k.get("series", "?")), concurrency=k.get("concurrency"),
                             tok_s=r.f.num(k.get("output_throughput")), peak=r.f.num(k.get("peak"))))  # fmt: skip
        else:
            lines.append(r.t("s5.knee_none", series=code(k.get("series", "?")), reason=k.get("reason") or "-"))
    return lines


def limits_lines(r: ReportContext, limits: Doc) -> list[Md]:
    """The limit reached first, then each limit at the lowest concurrency that showed it (or not reached)."""
    if not limits or limits.get("highest_concurrency") is None:  # no concurrency-driven run measured anything
        return []
    reached, first = limits.part("reached"), limits.array("first")
    if first:
        names = ", ".join(str(r.t("limit." + k)) for k in first)
        lines = [r.t("s5.limits_first", limits=names, concurrency=limits.get("first_concurrency"))]
    else:
        lines = [r.t("s5.limits_none", concurrency=limits.get("highest_concurrency", "?"))]
    for kind in ("objective", "kv_cache", "batch_slots", "compute"):
        at, name = reached.part(kind), r.t("limit." + kind)
        if at:
            lines.append(r.t("s5.limit_at", limit=name, concurrency=at.get("concurrency"), evidence=at.get("evidence")))
        else:
            lines.append(r.t("s5.limit_not_reached", limit=name))
    return lines


def capacity_part(r: ReportContext, bench: Doc) -> dict:
    capacity = bench.part("capacity")
    slo = bench.part("settings", "bench", "slo")
    outcome = capacity_text(r.t, dict(capacity.data)) if capacity else None
    lengths = capacity.part("lengths")
    search = None
    if capacity.records("probes"):
        search = r.t("s5.capacity_search", variable=code(capacity.value("settings", "variable") or "?"),
                     low=r.f.value(capacity.get("low")), high=r.f.value(capacity.get("high")),
                     repeats=capacity.value("settings", "repeats", default="?"), probes=len(capacity.records("probes")),
                     runs=capacity.get("run_count", 0), input_len=lengths.get("input_len", "?"),
                     output_len=lengths.get("output_len", "?"), seconds=r.f.num(capacity.get("seconds")))  # fmt: skip
    return {
        "capacity_line": outcome,
        "capacity_reason": None if outcome and capacity.get("status") != "indeterminate" else capacity.get("reason"),
        "capacity_status": capacity.get("status") or "not run",
        "objective": capacity.get("objective"),
        "capacity_search": search,
        "probes_table": probes_table(r, capacity, slo),
        "load_table": load_table(r, bench.records("points"), slo),
        "knees": knee_lines(r, bench.part("limits")),
        "limits": limits_lines(r, bench.part("limits")),
    }


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
        "command": fence(r.portable(first), "bash") if isinstance(first, str) else None,
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
        **capacity_part(r, bench),
    }


def _bandwidth(r: ReportContext, bandwidth: Doc) -> str | None:
    """Which bandwidth the bound used and where it comes from."""
    if not bandwidth.get("kind"):
        return None
    gb_s = bandwidth.get("bytes_per_s") / 1e9 if is_number(bandwidth.get("bytes_per_s")) else None
    return r.t("s5.bench_bandwidth", kind=bandwidth.get("kind"), gb_s=r.f.num(gb_s),
               source=bandwidth.get("source") or bandwidth.get("method") or "-")  # fmt: skip
