"""Section 9, conclusion: one verdict per check, and the key measurements beside their reference or threshold."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from operator import attrgetter

from npuport.report.context import ReportContext
from npuport.report.formatting import status_cell
from npuport.report.mdtext import Md, code
from npuport.report.sections.accuracy_performance import Speed, kv_capacity, throughput
from npuport.report.verdicts import Verdict


def conclusion_table(r: ReportContext, rows: list[Verdict]) -> Md:
    columns = [
        ("col.check", lambda v: r.t("check." + v.check)),
        ("col.result", lambda v: status_cell(r.t, v.status)),
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
    """The measured numbers a reader asks first, each beside its reference value and its source (as the
    reference report's closing table, but every value read from an artifact)."""
    t, f = r.t, r.f
    smoke, base, compare = r.docs.smoke, r.docs.baseline, r.docs.compare
    s, b = Speed.of(smoke), Speed.of(base)
    prompts = compare.records("prompts")
    matched = f"{sum(p.get('matched') or 0 for p in prompts)} / {sum(p.get('compared') or 0 for p in prompts)}"
    overall = compare.part("overall")
    limits = {c.get("metric"): f"{c.get('op')} {f.value(c.get('limit'))}" for c in compare.records("checks")}
    both = "smoke.json, baseline.json: "
    rows = [
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
        Measurement(
            t("col.mean_diff"),
            f.metric(overall.get("mean_abs_logprob_diff")),
            limits.get("mean_abs_logprob_diff", ""),
            source="compare.json: overall.mean_abs_logprob_diff",
        ),
        Measurement(
            t("key.perplexity"),
            f.metric(overall.get("perplexity_rel_diff")),
            limits.get("perplexity_rel_diff", ""),
            source="compare.json: overall.perplexity_rel_diff",
        ),
    ]
    return r.table(rows, KEY_COLUMNS)
