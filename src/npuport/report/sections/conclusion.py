"""Section 9, conclusion: one verdict per check, and the key measurements beside their reference or threshold."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from operator import attrgetter

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import is_number, status_cell
from npuport.report.mdtext import Md, code
from npuport.report.sections.accuracy_performance import Speed, kv_capacity, throughput
from npuport.report.verdicts import Verdict, check_label


def conclusion_table(r: ReportContext, rows: list[Verdict]) -> Md:
    columns = [
        ("col.check", lambda v: check_label(r.t, v.check)),
        ("col.result", lambda v: status_cell(r.t, v.status, v.shown)),
        ("col.measured", attrgetter("detail")),
        ("col.evidence", lambda v: code(v.evidence)),
    ]
    return r.table(rows, columns)


@dataclass(frozen=True)
class Measurement:
    label: Md
    measured: str
    basis: str  # the reference's value or the threshold
    _: KW_ONLY
    source: str  # artifact(s): field


KEY_COLUMNS = [
    ("col.metric", attrgetter("label")),
    ("col.measured_value", attrgetter("measured")),
    ("col.basis", attrgetter("basis")),
    ("col.source", lambda m: code(m.source)),
]


def key_measurements(r: ReportContext) -> Md:
    """The measured numbers a reader asks first, each beside its reference value (the noise floor and the gate's
    limit where there is one) and its source; every value read from an artifact."""
    return r.table(_run_measurements(r) + _accuracy_measurements(r) + _bench_measurements(r), KEY_COLUMNS)


def _run_measurements(r: ReportContext) -> list[Measurement]:
    t, f = r.t, r.f
    smoke, base, compare = r.docs.smoke, r.docs.baseline, r.docs.compare
    s, b = Speed.of(smoke), Speed.of(base)
    prompts = compare.records("prompts")
    matched = f"{sum(p.get('matched') or 0 for p in prompts)} / {sum(p.get('compared') or 0 for p in prompts)}"
    both = "smoke.json, baseline.json: "
    return [
        Measurement(
            t("perf.load"),
            f.seconds(smoke.get("load_seconds")),
            f.seconds(base.get("load_seconds")),
            source=both + "load_seconds",
        ),
        Measurement(
            t("perf.single"),
            throughput(r, smoke, "single"),
            throughput(r, base, "single"),
            source=both + "throughput.single",
        ),
        Measurement(t("perf.tpot"), f.ms(s.tpot), f.ms(b.tpot), source=both + "prompts[].tpot_s"),
        Measurement(
            t("key.weights"), f.bytes(r.docs.fuse.get("total_bytes")), "", source="model/fuse.json: total_bytes"
        ),
        Measurement(t("perf.kv"), kv_capacity(r, smoke.part("kv_cache")), "", source="smoke.json: kv_cache"),
        Measurement(
            t("key.tokens"), matched if prompts else f.missing, "", source="compare.json: prompts[].matched, compared"
        ),
    ]


def gate_basis(r: ReportContext, check: Doc) -> str:
    """ "floor F, limit <= L" of a floor gate ("" when compare.json has no such check)."""
    if not check:
        return ""
    limit = f"{check.get('op', '?')} {r.f.metric(check.get('limit'))}"
    return r.t("key.floor_limit", floor=r.f.metric(check.get("floor")), limit=limit)


def _rel_diff(perplexity: Doc) -> float | None:
    base, other = perplexity.get("base"), perplexity.get("other")
    return abs(other - base) / base if is_number(base) and is_number(other) and base else None


def _accuracy_measurements(r: ReportContext) -> list[Measurement]:
    t, f = r.t, r.f
    compare = r.docs.compare
    overall, evaluation = compare.part("overall"), compare.part("evaluation")
    checks = {c.get("threshold"): c for c in compare.records("checks")}
    floor_ppl = evaluation.part("floor", "perplexity")
    same = evaluation.value("engine", "same_top1", "p")
    measured = evaluation.get("status") == "measured"
    return [
        Measurement(
            t("col.mean_diff"),
            f.metric(overall.get("mean_abs_logprob_diff")),
            gate_basis(r, checks.get("prompt_mean_abs_logprob_diff", Doc())),
            source="compare.json: overall.mean_abs_logprob_diff",
        ),
        Measurement(
            t("key.mean_kld"),
            f.metric(evaluation.value("engine", "kld", "mean")),
            gate_basis(r, checks.get("eval_mean_kld", Doc())),
            source="compare.json: evaluation.engine.kld.mean",
        ),
        Measurement(
            t("key.same_top1"),
            f.percent(same),
            t("key.floor", floor=f.percent(evaluation.value("floor", "same_top1", "p"))) if measured else "",
            source="compare.json: evaluation.engine.same_top1.p, evaluation.floor.same_top1.p",
        ),
        Measurement(
            t("key.ppl"),
            f.num(overall.get("perplexity_engine"), 6),
            t(
                "key.reference_floor",
                reference=f.num(overall.get("perplexity_reference"), 6),
                floor=f.num(floor_ppl.get("other"), 6),
            )
            if measured
            else "",
            source="compare.json: overall.perplexity_engine, perplexity_reference; evaluation.floor.perplexity.other",
        ),
        Measurement(
            t("key.perplexity"),
            f.metric(overall.get("perplexity_rel_diff")),
            t("key.floor", floor=f.metric(_rel_diff(floor_ppl))) if measured else "",
            source="compare.json: overall.perplexity_rel_diff; evaluation.floor.perplexity",
        ),
    ]


def _bench_measurements(r: ReportContext) -> list[Measurement]:
    """The efficiency figure and the throughput at the ladder's highest concurrency (bench.json)."""
    t, f = r.t, r.f
    bench = r.docs.bench
    efficiency = bench.part("efficiency")
    done = [p for p in bench.records("points") if p.get("status") == "ok"]
    top = max(done, key=lambda p: (p.get("concurrency") or 0, p.get("input_len") or 0), default=Doc())
    peak = f"{f.num(top.get('output_throughput'))} tok/s" if top else f.missing
    where = f"{top.get('name')}, {bench.value('platform', 'device', default='?')}" if top else ""
    return [
        Measurement(
            t("key.bench_efficiency"),
            f.percent(efficiency.get("percent_of_bound") / 100)
            if is_number(efficiency.get("percent_of_bound"))
            else f.missing,
            efficiency.get("text") or efficiency.get("reason") or "",
            source="bench.json: efficiency.percent_of_bound, text",
        ),  # fmt: skip
        Measurement(t("key.bench_peak"), peak, where, source="bench.json: points[].output_throughput"),
    ]
