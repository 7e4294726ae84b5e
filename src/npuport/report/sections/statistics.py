"""Section 5.3: the engine and the noise floor over the full vocabulary on the evaluation text (compare.json:
evaluation), in llama.cpp's ``llama-perplexity --kl-divergence`` conventions, and per RoPE bucket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import Formatter
from npuport.report.mdtext import Md, code

SIDES = ("engine", "floor")


@dataclass(frozen=True)
class Statistic:
    """One row of the statistics table: its label, how one side's statistics show, the fields it reads."""

    label: str  # message key
    show: Callable[[Formatter, Doc], str]
    fields: str  # under evaluation.<side>.


def _metric(*path: str) -> Callable[[Formatter, Doc], str]:
    return lambda f, side: f.metric(side.value(*path))


def _large(*path: str) -> Callable[[Formatter, Doc], str]:
    """A perplexity: six significant digits, no exponent (201,054)."""
    return lambda f, side: f.num(side.value(*path), 6)


def _pm(group: str, mean: str, se: str, *, percent: bool = False) -> Callable[[Formatter, Doc], str]:
    scale, unit = (100.0, " %") if percent else (1.0, "")
    return lambda f, side: f.plus_minus(side.value(group, mean), side.value(group, se), scale=scale, unit=unit)


def _pair(group: str, first: str, second: str, *, percent: bool = False) -> Callable[[Formatter, Doc], str]:
    def show(f: Formatter, side: Doc) -> str:
        values = (side.value(group, first), side.value(group, second))
        return " / ".join(f.percent(v, 3) if percent else f.metric(v) for v in values)

    return show


STATISTICS = [
    Statistic("stat.positions", lambda f, side: f.value(side.get("n")), "n"),
    Statistic("stat.mean_kld", _pm("kld", "mean", "se"), "kld.mean, kld.se"),
    Statistic("stat.median_kld", _metric("kld", "median"), "kld.median"),
    Statistic("stat.p90_kld", _metric("kld", "p90"), "kld.p90"),
    Statistic("stat.p99_kld", _metric("kld", "p99"), "kld.p99"),
    Statistic("stat.p99_9_kld", _metric("kld", "p99_9"), "kld.p99_9"),
    Statistic("stat.max_kld", _metric("kld", "max"), "kld.max"),
    Statistic("stat.same_top1", _pm("same_top1", "p", "se", percent=True), "same_top1.p, same_top1.se"),
    Statistic("stat.mean_dp", _pm("delta_p", "mean", "se", percent=True), "delta_p.mean, delta_p.se"),
    Statistic("stat.rms_dp", _pm("delta_p", "rms", "rms_se", percent=True), "delta_p.rms, delta_p.rms_se"),
    Statistic("stat.dp_p1_p99", _pair("delta_p", "p1", "p99", percent=True), "delta_p.p1, delta_p.p99"),
    Statistic("stat.abs_dlogprob", _pair("abs_delta_logprob", "mean", "max"), "abs_delta_logprob.mean, max"),
    Statistic("stat.ppl_reference", _large("perplexity", "base"), "perplexity.base"),
    Statistic("stat.ppl_side", _large("perplexity", "other"), "perplexity.other"),
    Statistic("stat.ln_ratio", _pm("perplexity", "ln_ratio", "ln_ratio_se"), "perplexity.ln_ratio, ln_ratio_se"),
]


def statistics(r: ReportContext) -> dict:
    """§5.3: the statistics of both sides, the RoPE buckets (or why there are none); or why nothing was measured."""
    compare = r.docs.compare
    evaluation = compare.part("evaluation")
    if evaluation.get("status") != "measured":
        return {"reason": _not_measured(r, compare, evaluation)}
    switch = evaluation.part("rope_switch")
    buckets = evaluation.part("buckets") if switch.get("position") is not None else Doc()
    return {
        "reason": None,
        "intro": _intro(r, evaluation),
        "method": evaluation.get("method") or r.f.missing,
        "table": _table(r, evaluation),
        "switch": _switch(r, switch, bool(buckets)),
        "buckets": _buckets(r, buckets) if buckets else None,
    }


def _not_measured(r: ReportContext, compare: Doc, evaluation: Doc) -> Md:
    if evaluation.get("reason"):
        return r.t("stat.not_measured", reason=evaluation["reason"])
    if not compare:
        return r.t("why.artifact_missing", artifact=r.inputs.compare.name)
    return r.t("why.compare", status=compare.get("status", "?"), reason=compare.get("reason") or "-")


def _intro(r: ReportContext, evaluation: Doc) -> Md:
    f, floor = r.f, r.docs.compare.part("floor")
    return r.t(
        "stat.intro",
        tokens=f.value(evaluation.get("text_tokens")),
        segments=f.value(evaluation.get("segments")),
        length=f.value(evaluation.get("segment_length")),
        positions=f.value(evaluation.value("engine", "n")),
        reference_dtype=floor.get("reference_dtype") or "?",
        engine_dtype=floor.get("engine_dtype") or "?",
    )


def _table(r: ReportContext, evaluation: Doc) -> Md:
    sides = {side: evaluation.part(side) for side in SIDES}
    columns = [
        ("col.statistic", lambda s: r.t(s.label)),
        ("col.gate_engine", lambda s: s.show(r.f, sides["engine"])),
        ("col.floor", lambda s: s.show(r.f, sides["floor"])),
        ("col.source", lambda s: code(f"evaluation.{{engine,floor}}.{s.fields}")),
    ]
    return r.table(STATISTICS, columns)


def _switch(r: ReportContext, switch: Doc, bucketed: bool) -> Md:
    f = r.f
    rope_type, source = f.value(switch.get("rope_type")), switch.get("source") or r.t("word.no_reason")
    if bucketed:
        return r.t("stat.switch", position=f.value(switch.get("position")), rope_type=rope_type, source=source)
    return r.t("stat.no_switch", rope_type=rope_type, source=source)


def _buckets(r: ReportContext, buckets: Doc) -> Md:
    """Per bucket (before / from the switch on): positions, mean KLD, KLD p99 and same top-1 of both sides."""
    f = r.f
    rows = [(name, buckets.part(name, "engine"), buckets.part(name, "floor")) for name in ("before", "after")]
    kld, p99, same = _pm("kld", "mean", "se"), _metric("kld", "p99"), _pm("same_top1", "p", "se", percent=True)
    columns = [
        ("col.bucket", lambda row: r.t(f"stat.bucket_{row[0]}", positions=row[1].get("positions") or "?")),
        ("col.positions_n", lambda row: f.value(row[1].get("n"))),
        ("col.engine_mean_kld", lambda row: kld(f, row[1])),
        ("col.floor_mean_kld", lambda row: kld(f, row[2])),
        ("col.engine_p99_kld", lambda row: p99(f, row[1])),
        ("col.floor_p99_kld", lambda row: p99(f, row[2])),
        ("col.engine_same_top1", lambda row: same(f, row[1])),
        ("col.floor_same_top1", lambda row: same(f, row[2])),
    ]
    return r.table(rows, columns)
