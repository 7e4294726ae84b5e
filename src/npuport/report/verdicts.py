"""The report's conclusion: one verdict per check, each read from a named artifact field."""

# A verdict is ``passed`` or ``failed`` only when an artifact holds the measurement; anything else is
# ``not measured`` with the reason. Nothing is passed on argument alone (an NPU row needs an engine run whose
# platform was the NPU, a GPU row one on CUDA).

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from npuport.report.artifacts import Artifacts, dig
from npuport.report.mdtext import Md, text

PASSED, FAILED, NOT_MEASURED = "passed", "failed", "not measured"
SYMBOLS = {PASSED: "✅", FAILED: "❌", NOT_MEASURED: "⚠"}
TOKEN_CHECK = "no_real_divergence"


def is_text_check(name: str) -> bool:
    """compare.json checks on the fixed perplexity text (perplexity, per-token logprobs along the text)."""
    return "perplexity" in name or name.startswith(("max_text_", "min_text_"))


def is_teacher_forced_check(name: str) -> bool:
    """Every other threshold check: the teacher-forced comparison on the prompts' outputs (new thresholds land
    here, so none is ever left out of the conclusion)."""
    return name != TOKEN_CHECK and not is_text_check(name)


Translate = Callable[..., Md]


def join(*parts: object, sep: str = "; ") -> Md:
    """Trusted parts as they are, anything else escaped, joined into one trusted string."""
    return Md(sep.join(text(p) for p in parts if p is not None and p != ""))


@dataclass(frozen=True)
class Verdict:
    check: str  # id; its label is the message "check.<id>"
    status: str  # passed | failed | not measured
    detail: Md  # what was measured, or why nothing was (trusted Markdown)
    evidence: str  # artifact and field(s) the verdict reads


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
    return Verdict("fusion", PASSED if verdict else FAILED, detail, evidence)


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


def serve_verdict(t: Translate, smoke) -> Verdict:
    evidence = "smoke.json: serve.status, serve.all_text_equal_offline"
    serve = dig(smoke, "serve", default={})
    status = serve.get("status")
    if status == "ok":
        prompts = serve.get("prompts") or []
        equal = sum(bool(p.get("text_equal_offline")) for p in prompts)
        detail = t("detail.serve", equal=equal, total=len(prompts), seconds=_seconds(serve.get("startup_seconds")))
        return Verdict("serve", PASSED if equal == len(prompts) and prompts else FAILED, detail, evidence)
    reason = serve.get("reason") or t("word.no_reason")
    return Verdict(
        "serve", FAILED if status == "failed" else NOT_MEASURED, t("why.serve", status=status, reason=reason), evidence
    )


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


def _checks_verdict(t: Translate, check: str, compare, *, selected, evidence: str) -> Verdict:
    missing = _compare_not_measured(t, check, compare, evidence)
    if missing:
        return missing
    found = [c for c in compare.get("checks") or [] if selected(str(c.get("threshold")))]
    measured = [c for c in found if c.get("passed") is not None]
    if not measured:
        names = ", ".join(str(c.get("threshold")) for c in found) or t("word.none")
        return Verdict(check, NOT_MEASURED, t("why.no_values", names=names), evidence)
    unmeasured = [str(c.get("threshold")) for c in found if c.get("passed") is None]
    detail = join(
        *(f"{c.get('metric')} {format_value(c.get('value'))} {c.get('op')} {c.get('limit')}" for c in measured),
        t("why.no_values", names=", ".join(unmeasured)) if unmeasured else None,
    )
    return Verdict(check, FAILED if any(c["passed"] is False for c in measured) else PASSED, detail, evidence)


def teacher_forced_verdict(t: Translate, compare) -> Verdict:
    evidence = "compare.json: overall, checks[] on the prompts' outputs"
    return _checks_verdict(t, "teacher_forced", compare, selected=is_teacher_forced_check, evidence=evidence)


def perplexity_verdict(t: Translate, compare) -> Verdict:
    evidence = "compare.json: overall.perplexity_*, text_*, checks[] on the fixed text"
    verdict = _checks_verdict(t, "perplexity", compare, selected=is_text_check, evidence=evidence)
    overall = dig(compare, "overall", default={})
    if verdict.status != NOT_MEASURED:
        extra = t(
            "detail.perplexity",
            engine=format_value(overall.get("perplexity_engine")),
            reference=format_value(overall.get("perplexity_reference")),
        )
        return Verdict(verdict.check, verdict.status, join(extra, verdict.detail), verdict.evidence)
    return verdict


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
    smoke, env, compare = docs["smoke"], docs["env"], docs["compare"]
    return [
        config_verdict(t, docs["repair"], smoke),
        fusion_verdict(t, docs["fuse"]),
        engine_verdict(t, smoke),
        accelerator_verdict(t, "npu", platform="npu", smoke=smoke, env=env),
        accelerator_verdict(t, "gpu", platform="cuda", smoke=smoke, env=env),
        serve_verdict(t, smoke),
        baseline_verdict(t, docs["baseline"]),
        tokens_verdict(t, compare),
        teacher_forced_verdict(t, compare),
        perplexity_verdict(t, compare),
    ]


def overall_status(rows: list[Verdict], optional: tuple[str, ...] = ("npu", "gpu")) -> str:
    """failed when any row failed; not measured when a row other than ``optional`` ones was not measured;
    else passed. The NPU and GPU rows are optional: a run can only be on one platform, and the header and
    index list them as not measured beside the status."""
    if any(row.status == FAILED for row in rows):
        return FAILED
    if any(row.status == NOT_MEASURED for row in rows if row.check not in optional):
        return NOT_MEASURED
    return PASSED if any(row.status == PASSED for row in rows) else NOT_MEASURED
