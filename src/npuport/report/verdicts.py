"""The report's conclusion: one verdict per check, each read from a named artifact field."""

# A verdict is ``passed`` or ``failed`` only when an artifact holds the measurement; anything else is
# ``not measured`` with the reason. Nothing is passed on argument alone (an NPU row needs an engine run whose
# platform was the NPU, a GPU row one on CUDA).

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from npuport.compare.gates import GATE_NAMES
from npuport.report.artifacts import Artifacts, dig
from npuport.report.mdtext import Md, code, text

PASSED, FAILED, NOT_MEASURED = "passed", "failed", "not measured"
SYMBOLS = {PASSED: "✅", FAILED: "❌", NOT_MEASURED: "⚠"}
TOKEN_CHECK = "no_real_divergence"
DEPLOYMENT_CHECK = "deployment:"  # + the configuration's name
# Gates on the evaluation text, and those on the positions before / after the RoPE switch (compare.gates).
EVALUATION_GATES = ("eval_",)
SWITCH_GATES = ("before_switch_", "after_switch_")


class Translate(Protocol):
    """A message catalog (npuport.report.messages.Messages): ``t(key, **params)`` and ``t.has(key)``."""

    def __call__(self, key: str, **params: object) -> Md: ...

    def has(self, key: str) -> bool: ...


def join(*parts: object, sep: str = "; ") -> Md:
    """Trusted parts as they are, anything else escaped, joined into one trusted string."""
    return Md(sep.join(text(p) for p in parts if p is not None and p != ""))


@dataclass(frozen=True)
class Verdict:
    check: str  # id; its label is the message "check.<id>"
    status: str  # passed | failed | not measured
    detail: Md  # what was measured, or why nothing was (trusted Markdown)
    evidence: str  # artifact and field(s) the verdict reads
    optional: bool = False  # not measured here leaves the overall status alone (overall_status)
    shown: str | None = None  # the result word the row shows instead of its status's ("measured": nothing judged)


def _stage_not_ok(t: Translate, name: str, doc) -> str:
    if not isinstance(doc, dict):
        return t("why.artifact_missing", artifact=name)
    return t("why.stage_status", artifact=name, status=doc.get("status", "?"), reason=doc.get("reason") or "-")


def config_verdict(t: Translate, repair, smoke) -> Verdict:
    evidence = "repair.json: repaired, transformers_config_class; smoke.json: status"
    if not isinstance(repair, dict):
        return Verdict("config", NOT_MEASURED, t("why.artifact_missing", artifact="repair.json"), evidence)
    loaded = str(repair.get("transformers_config_class") or "")
    repaired = ", ".join(repair.get("repaired") or []) or t("word.none")
    if not loaded or loaded.startswith("not checked"):
        return Verdict("config", NOT_MEASURED, t("detail.config_not_loaded", repaired=repaired, why=loaded), evidence)
    detail = t("detail.config_loaded", repaired=repaired, cls=loaded)
    if dig(smoke, "status") == "ok":
        detail = join(detail, t("detail.config_vllm_loaded"))
    return Verdict("config", PASSED, detail, evidence)


def fusion_verdict(t: Translate, fuse) -> Verdict:
    evidence = "model/fuse.json: all_linears_ternary, linears_ternary, linears_checked"
    if not isinstance(fuse, dict):
        return Verdict("fusion", NOT_MEASURED, t("why.artifact_missing", artifact="model/fuse.json"), evidence)
    ternary, checked = fuse.get("linears_ternary"), fuse.get("linears_checked")
    detail = t("detail.fusion", ternary=ternary, checked=checked, quantized=fuse.get("tensors_quantized"))
    verdict = fuse.get("all_linears_ternary")
    if verdict is None:
        return Verdict("fusion", NOT_MEASURED, t("why.no_quantized_linears"), evidence)
    if fuse.get("ternary_expected") is False:  # not fused (no ternary QAT evidence, mode never): nothing to verify
        return Verdict("fusion", NOT_MEASURED, join(fuse.get("ternary_expected_reason")), evidence, optional=True)
    if dig(fuse, "qat_forward_check", "status") == "failed":  # fused, but not the checkpoint's own QAT forward
        return Verdict("fusion", FAILED, join(detail, fuse["qat_forward_check"].get("reason")), evidence)
    return Verdict("fusion", PASSED if verdict else FAILED, detail, evidence)


def qat_forward_verdict(t: Translate, fuse) -> Verdict:
    """The fused model's logits against the checkpoint's own QAT forward (model/fuse.json: qat_forward_check).
    Not run (no trust_remote_code, no bundled QAT code, nothing fused) leaves the overall status alone."""
    evidence = "model/fuse.json: qat_forward_check"
    if not isinstance(fuse, dict):
        return Verdict("qat_forward", NOT_MEASURED, t("why.artifact_missing", artifact="model/fuse.json"), evidence)
    check = fuse.get("qat_forward_check") if isinstance(fuse.get("qat_forward_check"), dict) else {}
    status = check.get("status")
    if status in (PASSED, FAILED):
        detail = t(
            "detail.qat_forward",
            diff=format_value(check.get("max_abs_logit_diff")),
            tolerance=format_value(check.get("tolerance")),
            tokens=check.get("tokens", "?"),
        )
        return Verdict("qat_forward", status, join(detail, check.get("reason") if status == FAILED else None), evidence)
    reason = check.get("reason") or t("why.no_values", names="qat_forward_check")
    return Verdict("qat_forward", NOT_MEASURED, join(reason), evidence, optional=True)


def layers_verdict(t: Translate, layers) -> Verdict:
    """Every capture point of layers.json within its gate, or the first one outside it."""
    evidence = "layers.json: status, summary, first_divergent"
    if not isinstance(layers, dict):
        return Verdict("layers", NOT_MEASURED, t("why.artifact_missing", artifact="layers.json"), evidence)
    status, divergent = layers.get("status"), dig(layers, "first_divergent")
    if status == FAILED or isinstance(divergent, dict):
        where = dig(divergent, "module", default="?")
        detail = t("detail.layers_failed", module=code(where), ratio=format_ratio(dig(divergent, "ratio")))
        return Verdict("layers", FAILED, detail, evidence)
    if status == PASSED:
        points = [p for p in layers.get("points") or [] if isinstance(p, dict)]
        detail = t(
            "detail.layers_passed",
            points=len(points),
            ratio=format_ratio(dig(layers, "summary", "max_ratio_rel_l2")),
            point=code(dig(layers, "summary", "point", default="?")),
        )
        return Verdict("layers", PASSED, detail, evidence)
    return Verdict("layers", NOT_MEASURED, join(layers.get("reason") or t("word.no_reason")), evidence)


def deployment_verdicts(t: Translate, compare) -> list[Verdict]:
    """One row per deployment configuration (compare.json: deployments): passed or failed against the deployed
    configuration, or not measured with the reason. A configuration this host cannot run (smoke.json said "not run",
    e.g. tensor parallel over more devices than it has) leaves the overall status alone, as the NPU and GPU rows do."""
    rows = []
    for row in dig(compare, "deployments", "configurations", default=[]) or []:
        if not isinstance(row, dict):
            continue
        name = str(row.get("name", "?"))
        evidence = f"compare.json: deployments.configurations[{name}]"
        status = row.get("status")
        if status == PASSED:
            gates = [g for g in row.get("gates") or [] if isinstance(g, dict)]
            differential = [g for g in dig(row, "differential", "gates", default=[]) or [] if isinstance(g, dict)]
            greedy = row.get("greedy") or {}
            detail = t(
                "detail.deployment_passed",
                ratio=format_ratio(_largest(g.get("ratio_to_floor") for g in gates)),
                deployed=format_ratio(_largest(_ratio(g.get("deployed_value"), g.get("floor")) for g in gates)),
                spread=format_ratio(_largest(g.get("ratio_to_floor") for g in differential)),
                greedy=f"{greedy.get('identical', '?')}/{greedy.get('compared', '?')}",
            )
            rows.append(Verdict(DEPLOYMENT_CHECK + name, PASSED, detail, evidence))
        elif status == FAILED:
            margin = format_ratio(row.get("margin"))
            detail = t("detail.deployment_failed", reason=row.get("reason") or "?", margin=margin)
            rows.append(Verdict(DEPLOYMENT_CHECK + name, FAILED, detail, evidence))
        else:
            reason = join(row.get("reason") or t("word.no_reason"))
            rows.append(Verdict(DEPLOYMENT_CHECK + name, NOT_MEASURED, reason, evidence, optional=status == "not run"))
    return rows


def _largest(values) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(numbers) if numbers else None


def _ratio(value, floor) -> float | None:
    if not isinstance(value, int | float) or not isinstance(floor, int | float) or floor <= 0:
        return None
    return value / floor


def engine_verdict(t: Translate, smoke) -> Verdict:
    evidence = "smoke.json: status, platform.device"
    status = dig(smoke, "status")
    if status == "ok":
        return Verdict(
            "engine", PASSED, t("detail.engine_ran", device=dig(smoke, "platform", "device", default="?")), evidence
        )
    outcome = FAILED if status == "failed" else NOT_MEASURED
    return Verdict("engine", outcome, _stage_not_ok(t, "smoke.json", smoke), evidence)


def baseline_verdict(t: Translate, baseline) -> Verdict:
    evidence = "baseline.json: status, platform.device"
    status = dig(baseline, "status")
    if status == "ok":
        device = dig(baseline, "platform", "device", default="?")
        return Verdict("baseline", PASSED, t("detail.engine_ran", device=device), evidence)
    outcome = FAILED if status == "failed" else NOT_MEASURED
    return Verdict("baseline", outcome, _stage_not_ok(t, "baseline.json", baseline), evidence)


# Diagnostics (env.json ids) that explain why an accelerator of each kind could not be used.
_KIND_DIAGNOSTICS = {"npu": re.compile(r"npu|ascend|cann"), "gpu": re.compile(r"cuda|gpu|engine_cpu_only")}


def _present(env, kind: str) -> bool:
    """Whether the probe saw hardware of ``kind`` (usable or not)."""
    if kind == "npu":
        chips = dig(env, "accelerators", "npu_smi", "parsed", "count", default=0)
        return bool(chips or dig(env, "accelerators", "torch_npu", "device_count", default=0))
    return bool(dig(env, "accelerators", "cuda", "device_count", default=0))


def accelerator_verdict(t: Translate, check: str, *, platform: str, smoke, env) -> Verdict:
    """✅ only when the engine ran with vLLM's platform ``platform``; ❌ when it was meant to and failed."""
    evidence = "smoke.json: status, platform.name; env.json: platform, accelerators, diagnostics"
    ran_on = dig(smoke, "platform", "name")
    status = dig(smoke, "status")
    if ran_on == platform:
        if status == "ok":
            return Verdict(check, PASSED, t("detail.engine_ran", device=dig(smoke, "platform", "device")), evidence)
        return Verdict(check, FAILED, _stage_not_ok(t, "smoke.json", smoke), evidence)
    if dig(env, "platform") == platform and status != "ok":
        return Verdict(check, FAILED, _stage_not_ok(t, "smoke.json", smoke), evidence)
    if ran_on:
        where = t("why.engine_ran_elsewhere", device=dig(smoke, "platform", "device", default=ran_on))
    else:
        where = _stage_not_ok(t, "smoke.json", smoke)
    kind = t(f"word.{check}")
    related = _KIND_DIAGNOSTICS[check]
    ids = [d.get("id") for d in dig(env, "diagnostics", default=[]) if related.search(str(d.get("id")))]
    if ids:
        detail = t("why.accelerator_unusable", kind=kind, ids=", ".join(ids), where=where)
        return Verdict(check, NOT_MEASURED, detail, evidence)
    key = "why.accelerator_unused" if _present(env, check) else "why.no_accelerator"
    return Verdict(check, NOT_MEASURED, t(key, kind=kind, where=where), evidence)


def serve_verdict(t: Translate, bench) -> Verdict:
    evidence = "bench.json: serve.status, serve.all_text_equal_offline"
    serve = dig(bench, "serve", default={})
    status = serve.get("status")
    if status == "ok":
        prompts = serve.get("prompts") or []
        equal = sum(bool(p.get("text_equal_offline")) for p in prompts)
        detail = t("detail.serve", equal=equal, total=len(prompts), seconds=_seconds(serve.get("startup_seconds")))
        return Verdict("serve", PASSED if equal == len(prompts) and prompts else FAILED, detail, evidence)
    if not isinstance(bench, dict):
        return Verdict("serve", NOT_MEASURED, t("why.artifact_missing", artifact="bench.json"), evidence)
    reason = serve.get("reason") or t("word.no_reason")
    return Verdict(
        "serve", FAILED if status == "failed" else NOT_MEASURED, t("why.serve", status=status, reason=reason), evidence
    )


def _bench_disabled(bench) -> bool:
    return dig(bench, "settings", "bench", "enabled") is False


def bench_held_verdict(t: Translate, bench) -> Verdict:
    """Every point of the load ladder ran, and no request failed or came back truncated (bench.json: held).
    A ladder switched off in the config (bench.enabled) leaves the overall status alone."""
    evidence = "bench.json: held, points[].completed, failed, truncated"
    if not isinstance(bench, dict):
        return Verdict("bench_held", NOT_MEASURED, t("why.artifact_missing", artifact="bench.json"), evidence)
    held = dig(bench, "held", default={})
    status = held.get("status")
    points = [p for p in bench.get("points") or [] if isinstance(p, dict)]
    if status in (PASSED, FAILED):
        detail = t("detail.bench_held", points=len(points), requests=sum(p.get("completed") or 0 for p in points),
                   failed=held.get("failed_requests", 0), truncated=held.get("truncated_requests", 0))  # fmt: skip
        return Verdict("bench_held", status, join(detail, held.get("reason") if status == FAILED else None), evidence)
    reason = held.get("reason") or bench.get("reason") or t("word.no_reason")
    return Verdict("bench_held", NOT_MEASURED, join(reason), evidence, optional=_bench_disabled(bench))


def bench_regression_verdict(t: Translate, bench) -> Verdict:
    """Each point's output throughput >= bench.min_ratio x an earlier run's (bench.json: regression). Without a
    baseline there is nothing to regress against: not measured, and the overall status is left alone."""
    evidence = "bench.json: regression"
    regression = dig(bench, "regression", default={})
    status = regression.get("status")
    if status in (PASSED, FAILED):
        ratios = [p["ratio"] for p in regression.get("points") or [] if isinstance(p, dict) and p.get("ratio")]
        detail = t(
            "detail.bench_regression",
            lowest=format_ratio(min(ratios) if ratios else None),
            min_ratio=format_ratio(regression.get("min_ratio")),
            baseline=code(regression.get("baseline")),
        )
        return Verdict("bench_regression", status, join(detail, regression.get("reason")), evidence)
    reason = regression.get("reason") or t("word.no_reason")
    optional = not regression.get("baseline") or _bench_disabled(bench)
    return Verdict("bench_regression", NOT_MEASURED, join(reason), evidence, optional=optional)


def capacity_text(t: Translate, capacity: dict) -> Md | None:
    """The capacity search's outcome in words (bench.json: capacity): the number with its interval, the top of the
    searched range, no load meeting the objective, or where the repeats disagreed; None when no search ran."""
    status = capacity.get("status")
    unit = t("unit." + str(capacity.get("variable") or "concurrency"))
    interval = capacity.get("interval") or {}
    value, below = capacity.get("capacity"), interval.get("below")
    low, high = capacity.get("low"), capacity.get("high")
    if status == "measured" and capacity.get("top_of_range"):
        return t("capacity.top", value=_g(value), unit=unit, low=_g(low), high=_g(high))
    if status == "measured" and capacity.get("exact"):
        return t("capacity.exact", value=_g(value), unit=unit, below=_g(below))
    if status == "measured" and below is not None:
        return t("capacity.between", value=_g(value), below=_g(below), unit=unit, why=capacity.get("stopped_by") or "-")
    if status == "measured":
        return t("capacity.at_least", value=_g(value), unit=unit, why=capacity.get("stopped_by") or "-")
    if status == "none meets it":
        repeats = dig(capacity, "settings", "repeats", default="?")
        return t("capacity.none", low=_g(low), high=_g(high), unit=unit, repeats=repeats)
    if status == "indeterminate" and capacity.get("disagreed_at") is not None:
        probe = next((p for p in capacity.get("probes") or [] if p.get("value") == capacity["disagreed_at"]), {})
        return t("capacity.indeterminate", value=_g(capacity["disagreed_at"]), unit=unit, met=probe.get("met", "?"),
                 repeats=probe.get("repeats", "?"))  # fmt: skip
    return None


def _g(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def bench_capacity_verdict(t: Translate, bench) -> Verdict:
    """The capacity within the objective (bench.json: capacity): ✅ measured, with its number or with "no load of the
    searched range meets it". There is no target capacity to judge it against: it never fails, and not measured
    (switched off, indeterminate, no server) it leaves the overall status alone."""
    evidence = "bench.json: capacity.status, capacity, interval, probes[]"
    if not isinstance(bench, dict):
        detail = t("why.artifact_missing", artifact="bench.json")
        return Verdict("bench_capacity", NOT_MEASURED, detail, evidence, optional=True)
    capacity = dig(bench, "capacity", default={})
    outcome = capacity_text(t, capacity)
    if capacity.get("status") in ("measured", "none meets it") and outcome is not None:
        device = dig(bench, "platform", "device", default="?")
        detail = t("detail.bench_capacity", capacity=outcome, objective=capacity.get("objective") or "?",
                   runs=capacity.get("run_count", "?"), device=device)  # fmt: skip
        return Verdict("bench_capacity", PASSED, detail, evidence, shown="measured")
    reason = join(outcome, capacity.get("reason") or bench.get("reason") or t("word.no_reason"))
    return Verdict("bench_capacity", NOT_MEASURED, reason, evidence, optional=True)


def accuracy_verdict(t: Translate, accuracy) -> Verdict:
    """The lm-eval tasks: the engine not significantly worse than the reference and within accuracy.max_drop
    (accuracy.json: check). Switched off in the config, it leaves the overall status alone."""
    evidence = "accuracy.json: check.status, check.tasks[]"
    if not isinstance(accuracy, dict):
        return Verdict("accuracy", NOT_MEASURED, t("why.artifact_missing", artifact="accuracy.json"), evidence)
    check = dig(accuracy, "check", default={})
    status = check.get("status")
    tasks = [v for v in check.get("tasks") or [] if isinstance(v, dict)]
    if status in (PASSED, FAILED):
        shown = Md("; ".join(  # trusted: catalog messages, so join() does not escape their code spans again
            t("detail.accuracy_task", task=code(v.get("task")), engine=format_value(dig(v, "engine", "score")),
              reference=format_value(dig(v, "reference", "score")), n=v.get("n", "?"))
            for v in tasks if v.get("status") in (PASSED, FAILED)
        ))  # fmt: skip
        return Verdict("accuracy", status, join(shown, check.get("reason")), evidence)
    reason = check.get("reason") or accuracy.get("reason") or t("word.no_reason")
    disabled = dig(accuracy, "settings", "enabled") is False
    return Verdict("accuracy", NOT_MEASURED, join(reason), evidence, optional=disabled)


def _seconds(value) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "?"


def _compare_not_measured(t: Translate, check: str, compare, evidence: str) -> Verdict | None:
    status = dig(compare, "status")
    if status in ("passed", "failed"):
        return None
    if not isinstance(compare, dict):
        return Verdict(check, NOT_MEASURED, t("why.artifact_missing", artifact="compare.json"), evidence)
    return Verdict(check, NOT_MEASURED, t("why.compare", status=status, reason=compare.get("reason") or "-"), evidence)


def tokens_verdict(t: Translate, compare) -> Verdict:
    evidence = "compare.json: prompts[].compared, matched, classification; checks[no_real_divergence]"
    missing = _compare_not_measured(t, "tokens", compare, evidence)
    if missing:
        return missing
    prompts = compare.get("prompts") or []
    if not prompts:
        return Verdict("tokens", NOT_MEASURED, t("why.no_prompts"), evidence)
    counts = {c: sum(p.get("classification") == c for p in prompts) for c in ("identical", "benign divergence")}
    detail = t(
        "detail.tokens",
        matched=sum(p.get("matched") or 0 for p in prompts),
        compared=sum(p.get("compared") or 0 for p in prompts),
        identical=counts["identical"],
        benign=counts["benign divergence"],
        total=len(prompts),
    )
    real = len(prompts) - counts["identical"] - counts["benign divergence"]
    return Verdict("tokens", FAILED if real else PASSED, detail, evidence)


def gate_label(t: Translate, name: str, metric: object = None) -> Md:
    """A gate's (or fixed threshold's) metric in the report's language; compare.json's own text otherwise."""
    if t.has("gate." + name):
        return t("gate." + name)
    return text(metric) if metric else code(name)


def check_label(t: Translate, check: str) -> Md:
    """The name of a conclusion row: its catalog label, a gate's or a fixed threshold's from its metric."""
    if check.startswith(DEPLOYMENT_CHECK):
        return t("check.deployment", name=code(check.removeprefix(DEPLOYMENT_CHECK)))
    if check in GATE_NAMES:
        return t("check.gate", gate=gate_label(t, check))
    if t.has("check." + check):
        return t("check." + check)
    return t("check.threshold", gate=gate_label(t, check))


def format_ratio(value) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def gate_detail(t: Translate, check: dict) -> Md:
    """engine X vs limit Y (ratio R to floor F) for a floor gate; value, condition and limit for a fixed one."""
    value, limit = format_value(check.get("value")), format_value(check.get("limit"))
    if check.get("kind") != "floor":
        return t("detail.threshold", value=value, op=check.get("op", "?"), limit=limit)
    to_floor, floor = check.get("ratio_to_floor"), format_value(check.get("floor"))
    if to_floor is None:
        return t("detail.gate_zero_floor", value=value, limit=limit, floor=floor)
    return t("detail.gate", value=value, limit=limit, ratio=format_ratio(to_floor), floor=floor)


def _no_switch(compare) -> bool:
    """The evaluation was measured and has no RoPE switch inside it: its bucket gates do not apply."""
    return (
        dig(compare, "evaluation", "status") == "measured"
        and dig(compare, "evaluation", "rope_switch", "position") is None
    )


def _why_no_gate(t: Translate, name: str, compare) -> Md:
    on_text = name.startswith(EVALUATION_GATES + SWITCH_GATES)
    if on_text and dig(compare, "evaluation", "status") != "measured":
        return t("why.evaluation", reason=dig(compare, "evaluation", "reason", default=t("word.no_reason")))
    if name.startswith(SWITCH_GATES) and _no_switch(compare):
        return t("why.no_switch", source=dig(compare, "evaluation", "rope_switch", "source", default="-"))
    return t("why.no_values", names=name)


def _gate_verdict(t: Translate, name: str, check: dict | None, compare) -> Verdict:
    evidence = f"compare.json: checks[{name}]"
    optional = name.startswith(SWITCH_GATES) and _no_switch(compare)
    missing = _compare_not_measured(t, name, compare, evidence)
    if missing:
        return missing
    if check is None or check.get("passed") is None:
        return Verdict(name, NOT_MEASURED, _why_no_gate(t, name, compare), evidence, optional)
    return Verdict(name, PASSED if check["passed"] else FAILED, gate_detail(t, check), evidence)


def gate_verdicts(t: Translate, compare) -> list[Verdict]:
    """One row per gate relative to the noise floor (every gate compare knows, measured or not), then one per
    other check compare.json holds (the optional fixed thresholds); the token check has its own row."""
    checks = [c for c in dig(compare, "checks", default=[]) if isinstance(c, dict)]
    by_name = {str(c.get("threshold")): c for c in checks}
    rows = [_gate_verdict(t, name, by_name.get(name), compare) for name in GATE_NAMES]
    others = [name for name in by_name if name not in GATE_NAMES and name != TOKEN_CHECK]
    return rows + [_gate_verdict(t, name, by_name[name], compare) for name in others]


def format_value(value) -> str:
    """A metric value with 4 significant digits; '?' when missing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?" if value is None else str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def verdicts(t: Translate, artifacts: Artifacts) -> list[Verdict]:
    """Every conclusion row, in report order, from the loaded artifacts (an absent one reads as None)."""
    docs = artifacts.raw()
    smoke, env, compare, bench = docs["smoke"], docs["env"], docs["compare"], docs["bench"]
    return [
        config_verdict(t, docs["repair"], smoke),
        fusion_verdict(t, docs["fuse"]),
        qat_forward_verdict(t, docs["fuse"]),
        engine_verdict(t, smoke),
        accelerator_verdict(t, "npu", platform="npu", smoke=smoke, env=env),
        accelerator_verdict(t, "gpu", platform="cuda", smoke=smoke, env=env),
        serve_verdict(t, bench),
        baseline_verdict(t, docs["baseline"]),
        tokens_verdict(t, compare),
        *gate_verdicts(t, compare),
        layers_verdict(t, docs["layers"]),
        *deployment_verdicts(t, compare),
        bench_held_verdict(t, bench),
        bench_regression_verdict(t, bench),
        bench_capacity_verdict(t, bench),
        accuracy_verdict(t, docs["accuracy"]),
    ]


def overall_status(rows: list[Verdict], optional: tuple[str, ...] = ("npu", "gpu")) -> str:
    """failed when any row failed; not measured when a row other than ``optional`` ones was not measured;
    else passed. The NPU and GPU rows are optional: a run can only be on one platform, and the header and
    index list them as not measured beside the status; so are the RoPE bucket gates of a model whose
    evaluation text has no switch in it (``Verdict.optional``)."""
    if any(row.status == FAILED for row in rows):
        return FAILED
    if any(row.status == NOT_MEASURED for row in rows if row.check not in optional and not row.optional):
        return NOT_MEASURED
    return PASSED if any(row.status == PASSED for row in rows) else NOT_MEASURED
