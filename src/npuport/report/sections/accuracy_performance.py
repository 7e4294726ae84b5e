"""Section 5, accuracy and performance: engine vs reference speed, token and logprob comparison, gates relative to
the noise floor (the statistics on the evaluation text: sections/statistics.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import KW_ONLY, dataclass
from operator import attrgetter

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import mark, mean, ratio, status_cell
from npuport.report.mdtext import Md, code, text
from npuport.report.tables import Verbatim
from npuport.report.verdicts import NOT_MEASURED, format_ratio, gate_label

log = logging.getLogger(__name__)
CLASS_SYMBOLS = {"identical": "✅", "benign divergence": "✅", "real divergence": "❌"}


@dataclass(frozen=True)
class Speed:
    """Mean latencies over the prompts and the throughputs of one side (smoke.json or baseline.json)."""

    ttft: float | None
    tpot: float | None
    single: float | None
    batch: float | None

    @classmethod
    def of(cls, doc: Doc) -> Speed:
        prompts = doc.records("prompts")
        return cls(
            ttft=mean(p.get("ttft_s") for p in prompts),
            tpot=mean(p.get("tpot_s") for p in prompts),
            single=doc.value("throughput", "single", "tokens_per_s"),
            batch=doc.value("throughput", "batch", "tokens_per_s"),
        )


@dataclass(frozen=True)
class Side:
    """One row of the performance table: a metric of the engine beside the reference's."""

    label: Md
    _: KW_ONLY
    engine: str
    reference: str
    speedup: str
    field: str


PERFORMANCE_COLUMNS = [
    ("col.metric", attrgetter("label")),
    ("col.engine", attrgetter("engine")),
    ("col.baseline", attrgetter("reference")),
    ("col.speedup", attrgetter("speedup")),
    ("col.field", lambda row: code(row.field)),
]


def performance(r: ReportContext) -> dict:
    smoke, base = r.docs.smoke, r.docs.baseline
    s, b = Speed.of(smoke), Speed.of(base)
    return {
        "table": r.table(_performance_rows(r, s, b), PERFORMANCE_COLUMNS),
        "speedup": r.f.speed(ratio(s.single, b.single)) or r.f.missing,
        "per_prompt": _per_prompt(r, smoke, base),
        "timing_method": [(code(k), v) for k, v in smoke.part("timing_method").items()],
        "baseline_method": [(code(k), v) for k, v in base.part("timing_method").items()],
        "kv_source": smoke.value("kv_cache", "gib_source"),
    }


def _performance_rows(r: ReportContext, s: Speed, b: Speed) -> list[Side]:
    t, f = r.t, r.f
    smoke, base = r.docs.smoke, r.docs.baseline

    def both(show, *path) -> dict[str, str]:
        return {"engine": show(smoke.value(*path)), "reference": show(base.value(*path))}

    def device(value):
        return f.missing if value is None else value

    load_e, load_b = smoke.get("load_seconds"), base.get("load_seconds")
    return [
        Side(t("perf.device"), **both(device, "platform", "device"), speedup="", field="platform.device"),
        Side(
            t("perf.load"),
            **both(f.seconds, "load_seconds"),
            speedup=f.speed(ratio(load_b, load_e)),
            field="load_seconds",
        ),
        Side(t("perf.warmup"), **both(f.seconds, "warmup", "latency_s"), speedup="", field="warmup.latency_s"),
        Side(
            t("perf.ttft"),
            engine=f.ms(s.ttft),
            reference=f.ms(b.ttft),
            speedup=f.speed(ratio(b.ttft, s.ttft)),
            field="prompts[].ttft_s",
        ),
        Side(
            t("perf.tpot"),
            engine=f.ms(s.tpot),
            reference=f.ms(b.tpot),
            speedup=f.speed(ratio(b.tpot, s.tpot)),
            field="prompts[].tpot_s",
        ),
        Side(
            t("perf.single"),
            engine=throughput(r, smoke, "single"),
            reference=throughput(r, base, "single"),
            speedup=f.speed(ratio(s.single, b.single)),
            field="throughput.single",
        ),
        Side(
            t("perf.batch"),
            engine=throughput(r, smoke, "batch"),
            reference=throughput(r, base, "batch"),
            speedup=f.speed(ratio(s.batch, b.batch)),
            field="throughput.batch",
        ),
        Side(
            t("perf.kv"),
            engine=kv_capacity(r, smoke.part("kv_cache")),
            reference=t("perf.kv_baseline"),
            speedup="",
            field="kv_cache",
        ),
    ]


def throughput(r: ReportContext, doc: Doc, kind: str) -> str:
    """``N tok/s (tokens tok / seconds)`` of one side's single or batch run."""
    f = r.f
    measured = doc.part("throughput", kind)
    if measured.get("tokens_per_s") is None:
        return f.missing
    count, seconds = f.value(measured.get("tokens")), f.seconds(measured.get("seconds"))
    return f"{f.num(measured['tokens_per_s'])} tok/s ({count} tok / {seconds})"


def kv_capacity(r: ReportContext, kv: Doc):
    if not kv.get("tokens"):
        return r.f.missing
    gib = kv.get("gib")
    return r.t("perf.kv_value", tokens=r.f.num(kv["tokens"]), gib=f"{r.f.num(gib)} GiB" if gib else r.f.missing)


def _per_prompt(r: ReportContext, smoke: Doc, base: Doc) -> Md | None:
    """Per prompt: tokens of both sides, then TTFT, TPOT and latency of the engine and of the reference."""
    f = r.f
    engine = smoke.records("prompts")
    reference = {p.get("prompt"): p for p in base.records("prompts")}
    prompts = [p.get("prompt") for p in engine] or list(reference)
    if not prompts:
        return None
    by_prompt = {p.get("prompt"): p for p in engine}
    rows = [(i, by_prompt.get(prompt, Doc()), reference.get(prompt, Doc())) for i, prompt in enumerate(prompts, 1)]

    def tokens(row) -> str:
        return " / ".join(f.value(side.get("num_tokens")) if side else f.missing for side in row[1:])

    columns = [
        (Verbatim("#"), lambda row: row[0]),
        ("col.tokens_both", tokens),
        ("col.e_ttft", lambda row: f.ms(row[1].get("ttft_s"))),
        ("col.e_tpot", lambda row: f.ms(row[1].get("tpot_s"))),
        ("col.e_latency", lambda row: f.seconds(row[1].get("latency_s"))),
        ("col.b_ttft", lambda row: f.ms(row[2].get("ttft_s"))),
        ("col.b_tpot", lambda row: f.ms(row[2].get("tpot_s"))),
        ("col.b_latency", lambda row: f.seconds(row[2].get("latency_s"))),
    ]
    return r.table(rows, columns)


# -- 5.2-5.4 accuracy -----------------------------------------------------------------------------------------


def load_tokenizer(r: ReportContext):
    """The fused model's tokenizer (to show divergent tokens as text), or None."""
    path = r.inputs.tokenizer
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - token text is a convenience; the ids are shown regardless
        log.info("token ids shown without text: %s does not load (%s)", path, exc)
        return None


def accuracy(r: ReportContext, tokenizer=None) -> dict:
    t = r.t
    compare = r.docs.compare
    status = {"passed": "passed", "failed": "failed"}.get(compare.get("status"), NOT_MEASURED)
    missing = t("why.artifact_missing", artifact=r.inputs.compare.name)
    return {
        "status_cell": status_cell(t, status),
        "reason": compare.get("reason") or (None if compare else missing),
        "settings": _settings(r, compare) if compare else None,
        "table": _comparison(r, compare.records("prompts"), tokenizer),
        "checks": _checks(r, compare.records("checks")),
        "gates_legend": t("s5.gates_legend", ratio=r.f.value(compare.value("settings", "floor_ratio"))),
    }


def _settings(r: ReportContext, compare: Doc) -> Md:
    t, f = r.t, r.f
    settings = compare.part("settings")
    return t(
        "acc.settings",
        window=f.value(settings["window"]) if settings.get("window") else t("acc.whole_output"),
        gap=f.value(settings.get("benign_logprob_gap")),
        dtype=f.value(settings.get("reference_dtype")),
        floor_dtype=f.value(compare.value("floor", "engine_dtype")),
        ratio=f.value(settings.get("floor_ratio")),
        gate_ratios=f.value(settings.get("gate_ratio")) if settings.get("gate_ratio") else t("word.none"),
        engine=compare.value("engine", "smoke", "device", default="?"),
        reference=compare.value("engine", "baseline", "device", default="?"),
    )


def _comparison(r: ReportContext, prompts: list[Doc], tokenizer) -> Md | None:
    """Per prompt: greedy tokens compared and matched, the first divergence, the teacher-forced metrics."""
    if not prompts:
        return None
    f = r.f

    def tf(key: str, show, side: str = "teacher_forced"):
        return lambda row: show(row[1].value(side, key))

    columns = [
        (Verbatim("#"), lambda row: row[0]),
        ("col.prompt", lambda row: row[1].get("prompt")),
        ("col.compared", lambda row: f.value(row[1].get("compared"))),
        ("col.matched", lambda row: f.value(row[1].get("matched"))),
        ("col.classification", lambda row: _classification(r, row[1].get("classification"))),
        ("col.divergence", lambda row: _divergence(r, row[1].get("divergence"), tokenizer)),
        ("col.positions", tf("positions", f.value)),
        ("col.top1", tf("top1_agreement", f.metric)),
        ("col.mean_diff", tf("mean_abs_logprob_diff", f.metric)),
        ("col.max_diff", tf("max_abs_logprob_diff", f.metric)),
        ("col.kl", tf("mean_topk_kl", f.metric)),
        ("col.floor_mean_diff", tf("mean_abs_logprob_diff", f.metric, "floor_teacher_forced")),
        ("col.floor_kl", tf("mean_topk_kl", f.metric, "floor_teacher_forced")),
    ]
    return r.table(enumerate(prompts, 1), columns)


def _classification(r: ReportContext, value):
    if value is None:
        return r.f.missing
    key = "class." + str(value).replace(" ", "_")
    label = r.t(key) if r.t.has(key) else text(value)
    return Md(f"{CLASS_SYMBOLS.get(value, '⚠')} {label}")


def token_text(token_id, tokenizer) -> str:
    """``id "text"`` when the model's tokenizer is at hand, else the id."""
    if tokenizer is None or not isinstance(token_id, int):
        return str(token_id)
    try:
        return f"{token_id} {json.dumps(tokenizer.decode([token_id]), ensure_ascii=False)}"
    except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode is shown as the id
        return str(token_id)


def _divergence(r: ReportContext, divergence, tokenizer):
    if not isinstance(divergence, dict):
        return "—"
    e, ref = Doc.of(divergence.get("engine")), Doc.of(divergence.get("reference"))

    def side(info: Doc):
        return r.t("acc.no_token") if info.get("token_id") is None else token_text(info["token_id"], tokenizer)

    return r.t(
        "acc.divergence",
        pos=divergence.get("position"),
        e_tok=side(e),
        e_lp=r.f.metric(e.get("token_logprob")),
        r_tok=side(ref),
        r_lp=r.f.metric(ref.get("token_logprob")),
        gap=r.f.metric(divergence.get("logprob_gap")),
    )


def _checks(r: ReportContext, checks: list[Doc]) -> Md | None:
    """compare.json's checks, one row each: the gate's metric, the engine's value beside the noise floor's, the
    ratio and epsilon that make the limit, the result; a fixed threshold says "fixed" where a gate has its floor."""
    f, t = r.f, r.t

    def by_kind(floor_gate, fixed, token="—"):
        def cell(c: Doc):
            kind = c.get("kind")
            return floor_gate(c) if kind == "floor" else (token if kind == "tokens" else fixed)

        return cell

    columns = [
        ("col.gate", lambda c: gate_label(t, str(c.get("threshold")), c.get("metric"))),
        ("col.threshold", lambda c: code(c.get("threshold"))),
        ("col.gate_engine", lambda c: f.metric(c.get("value"))),
        ("col.floor", by_kind(lambda c: f.metric(c.get("floor")), t("word.fixed"))),
        ("col.ratio", by_kind(lambda c: f.value(c.get("ratio")), t("word.fixed"))),
        ("col.epsilon", by_kind(lambda c: _epsilon(c.get("epsilon")), "—")),
        ("col.limit", lambda c: f"{c.get('op', '?')} {f.metric(c.get('limit'))}"),
        ("col.to_floor", by_kind(lambda c: _to_floor(c), "—")),
        ("col.result", lambda c: mark(c.get("passed"))),
    ]
    return r.table(checks, columns) if checks else None


def _epsilon(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _to_floor(check: Doc) -> str:
    """The engine's value over the floor's ("—" when the floor is 0: only epsilon makes the limit)."""
    return "—" if check.get("ratio_to_floor") is None else format_ratio(check["ratio_to_floor"])
