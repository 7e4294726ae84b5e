"""Compare the engine under test with the reference, token by token and logprob by logprob.

Free-running: the first position where the two greedy outputs differ, classified as a benign
near-tie (each side's token in the other's top-k and a small logprob gap, vLLM's
``check_logprobs_close`` convention plus our gap) or a real divergence.
Teacher-forced: the reference scores the engine's exact prompt+output tokens, and at every
position the engine's top-k logprobs are compared with the reference's logprobs of the same tokens.
Full distribution: on the evaluation text the engine's captured logits against the reference's, in
llama.cpp's --kl-divergence statistics (npuport.compare.statistics), per RoPE bucket too.
Every metric is measured twice, for the engine and for the noise floor (npuport.compare.floor), and the
gates are relative to the floor (npuport.compare.gates).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from npuport.compare.deployments import DeploymentScorer
from npuport.compare.floor import (
    Reference,
    engine_dtype,
    evaluate_segments,
    kld_quantiles,
    low_precision_logits,
)
from npuport.compare.gates import gate_checks
from npuport.core.atomic import read_json
from npuport.core.settings import CompareSettings

# Threshold name -> (metric key in the overall metrics, comparison that passes).
THRESHOLD_CHECKS = {
    "min_top1_agreement": ("top1_agreement", ">="),
    "max_mean_abs_logprob_diff": ("mean_abs_logprob_diff", "<="),
    "max_abs_logprob_diff": ("max_abs_logprob_diff", "<="),
    "max_mean_topk_kl": ("mean_topk_kl", "<="),
    "max_perplexity_rel_diff": ("perplexity_rel_diff", "<="),
    "max_text_mean_abs_logprob_diff": ("text_mean_abs_logprob_diff", "<="),
    "max_text_max_abs_logprob_diff": ("text_max_abs_logprob_diff", "<="),
}


def _top(record: dict, position: int) -> dict[int, float]:
    return {int(token): float(lp) for token, lp in record["top_logprobs"][position]}


def first_divergence(engine: dict, reference: dict, window: int | None) -> dict:
    """Tokens compared and matched, and the first mismatch with both tokens and logprobs."""
    e_ids, r_ids = engine["token_ids"], reference["token_ids"]
    compared = max(len(e_ids), len(r_ids))
    if window:
        compared = min(compared, window)
    for pos in range(compared):
        e_tok = e_ids[pos] if pos < len(e_ids) else None
        r_tok = r_ids[pos] if pos < len(r_ids) else None
        if e_tok != r_tok:
            return {"compared": compared, "matched": pos, "divergence": _divergence(engine, reference, pos)}
    return {"compared": compared, "matched": compared, "divergence": None}


def _divergence(engine: dict, reference: dict, pos: int) -> dict:
    sides = {}
    for side, record, other in (("engine", engine, reference), ("reference", reference, engine)):
        has_token = pos < len(record["token_ids"])
        top = _top(record, pos) if has_token else {}
        other_token = other["token_ids"][pos] if pos < len(other["token_ids"]) else None
        sides[side] = {
            "token_id": record["token_ids"][pos] if has_token else None,
            "token_logprob": record["token_logprobs"][pos] if has_token else None,
            "other_token_logprob": top.get(other_token),
            "other_token_in_top_k": other_token in top,
        }
    return {"position": pos, **sides}


def classify(divergence: dict | None, max_gap: float) -> str:
    """identical, benign (mutual top-k containment and a gap under ``max_gap`` on both sides) or real."""
    if divergence is None:
        return "identical"
    gaps = []
    for side in ("engine", "reference"):
        info = divergence[side]
        if not info["other_token_in_top_k"] or info["token_logprob"] is None:
            return "real divergence"
        gaps.append(info["token_logprob"] - info["other_token_logprob"])
    divergence["logprob_gap"] = max(gaps)
    return "benign divergence" if max(gaps) <= max_gap else "real divergence"


def topk_metrics(engine_top: list[dict[int, float]], reference_logprobs: torch.Tensor) -> dict:
    """Per-position comparison of the engine's top-k with the reference's logprobs of the same tokens."""
    diffs, kls, agree = [], [], 0
    for pos, top in enumerate(engine_top):
        ids = torch.tensor(list(top))
        e = torch.tensor(list(top.values()), dtype=torch.float64)
        r = reference_logprobs[pos, ids].double()
        diffs.extend((e - r).abs().tolist())
        p, q = torch.softmax(e, 0), torch.softmax(r, 0)
        kls.append(float((p * (p.log() - q.log())).sum()))
        agree += int(int(reference_logprobs[pos].argmax()) == max(top, key=top.get))
    n = len(engine_top)
    return {
        "positions": n,
        "top1_agreement": agree / n if n else None,
        "mean_abs_logprob_diff": sum(diffs) / len(diffs) if diffs else None,
        "max_abs_logprob_diff": max(diffs) if diffs else None,
        "mean_topk_kl": sum(kls) / n if n else None,
        "max_topk_kl": max(kls) if kls else None,
        "abs_logprob_diff_per_position": [
            max(abs(lp - float(reference_logprobs[i, t])) for t, lp in top.items()) for i, top in enumerate(engine_top)
        ],
    }


def generated_rows(record: dict, rows: torch.Tensor) -> torch.Tensor:
    """The rows of a prompt+output sequence's next-token distributions that predict the output tokens."""
    start = len(record["prompt_token_ids"]) - 1
    return rows[start : start + len(record["token_ids"])]


def teacher_forced(reference_logprobs: torch.Tensor, record: dict) -> dict:
    """The engine's top-k at every generated position against the reference's logprobs of the same tokens."""
    if not record["token_ids"]:
        return topk_metrics([], torch.empty(0, 0))
    return topk_metrics([_top(record, i) for i in range(len(record["token_ids"]))], reference_logprobs)


def floor_teacher_forced(reference_logprobs: torch.Tensor, low_logits: torch.Tensor, record: dict) -> dict:
    """The same metrics for the reference at the engine's dtype: its own top-k (as many as the engine gave)."""
    low = torch.log_softmax(low_logits.float(), dim=-1)
    tops = []
    for i in range(len(record["token_ids"])):
        values, ids = low[i].topk(len(record["top_logprobs"][i]))
        tops.append(dict(zip(ids.tolist(), values.tolist(), strict=True)))
    return topk_metrics(tops, reference_logprobs)


def _pooled(per_prompt: list[dict], key: str = "teacher_forced") -> dict:
    """Metrics over all positions of all prompts (weighted by positions)."""
    metrics = [p[key] for p in per_prompt if p[key]["positions"]]
    n = sum(m["positions"] for m in metrics)
    if not n:
        return {}
    weighted = {k: sum(m[k] * m["positions"] for m in metrics) / n for k in ("top1_agreement", "mean_topk_kl")}
    diffs = [d for m in metrics for d in m["abs_logprob_diff_per_position"]]
    return {
        "positions": n,
        **weighted,
        "mean_abs_logprob_diff": sum(m["mean_abs_logprob_diff"] * m["positions"] for m in metrics) / n,
        "max_abs_logprob_diff": max(diffs),
        "max_topk_kl": max(m["max_topk_kl"] for m in metrics),
    }


def threshold_checks(metrics: dict, thresholds: Mapping[str, float]) -> list[dict]:
    """Each configured threshold beside the measured value, with pass/fail."""
    checks = []
    for name, limit in thresholds.items():
        metric, op = THRESHOLD_CHECKS[name]
        value = metrics.get(metric)
        passed = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"threshold": name, "metric": metric, "value": value, "op": op, "limit": limit, "passed": passed})
    return checks


def not_measured(smoke: dict, baseline: dict, settings: Mapping[str, Any]) -> dict:
    """compare.json when either side did not produce outputs; ``settings`` as the document records them."""
    reasons = [
        f"{name} status {doc.get('status')}: {doc.get('reason') or 'no reason given'}"
        for name, doc in (("smoke", smoke), ("baseline", baseline))
        if doc.get("status") != "ok"
    ]
    return {"status": "not measured", "reason": "; ".join(reasons), "settings": settings, "prompts": [], "checks": []}


def compare(
    smoke: dict,
    baseline: dict,
    model_dir: str | Path,
    settings: CompareSettings,
    *,
    capture_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """The compare.json document: ``smoke`` (smoke.json) against ``baseline`` (baseline.json), the reference
    model in ``model_dir`` scoring the engine's tokens at full precision and at the engine's dtype (the floor);
    ``capture_dir`` holds the engine's logits on the evaluation text (smoke's capture)."""
    recorded = settings.as_dict()
    if smoke.get("status") != "ok" or baseline.get("status") != "ok":
        return not_measured(smoke, baseline, recorded)
    config = read_json(Path(model_dir) / "config.json")
    low_dtype = engine_dtype(smoke["settings"]["engine"]["dtype"], config)
    records = smoke["prompts"]
    evaluation = smoke.get("evaluation") or {}
    segments = evaluation.get("segments") or [] if capture_dir else []

    def reference(dtype: str) -> Reference:
        return Reference(model_dir, dtype, trust_remote_code)

    low = reference(low_dtype)
    low_prompts = low_precision_logits(low, [r["prompt_token_ids"] + r["token_ids"] for r in records])
    low_segments = low_precision_logits(low, segments)
    low.close()
    matrix = DeploymentScorer(smoke, capture_dir, segments)
    if matrix.wanted:
        matrix.spread_pass(Path(model_dir), low_dtype, low.attn_implementation, trust_remote_code)
    full = reference(settings.reference_dtype)
    prompts = _prompt_comparisons(full, records, baseline, low_prompts, settings)

    def also(index: int, base: torch.Tensor, engine: torch.Tensor) -> None:
        matrix.add(index, base, engine, low_segments[index])

    accumulators = evaluate_segments(full, segments, low_logits=low_segments,
                                     engine_logits=lambda i: _engine_logits(capture_dir, evaluation, i),
                                     also=also)  # fmt: skip
    full.close()
    sides = {
        "engine": {"prompts": _pooled(prompts, "teacher_forced")},
        "floor": {"prompts": _pooled(prompts, "floor_teacher_forced")},
    }
    evaluation_doc = _evaluation(evaluation, accumulators, sides) if segments else _no_evaluation(evaluation)
    overall = sides["engine"]["prompts"] | _text_metrics(sides["engine"].get("evaluation"))
    checks = gate_checks(sides["engine"], sides["floor"], ratio=settings.floor_ratio, ratios=settings.gate_ratio)
    checks += threshold_checks(overall, {k: v for k, v in recorded["thresholds"].items() if v is not None})
    checks.append(_divergence_check(prompts))
    failed = [c["threshold"] for c in checks if c["passed"] is False]
    return {
        "status": "failed" if failed else "passed",
        "reason": "failed: " + ", ".join(failed) if failed else None,
        "settings": recorded,
        "engine": {"smoke": smoke.get("platform"), "baseline": baseline.get("platform")},
        "floor": {
            "reference_dtype": settings.reference_dtype,
            "engine_dtype": low_dtype,
            "method": FLOOR_METHOD,
            "prompts": sides["floor"]["prompts"],
        },  # fmt: skip
        "prompts": prompts,
        "overall": overall,
        "evaluation": evaluation_doc,
        "checks": checks,
        "deployments": matrix.document(ratio=settings.floor_ratio, ratios=settings.gate_ratio),
    }


FLOOR_METHOD = (
    "transformers at the engine's dtype against transformers at reference_dtype, on exactly the tokens the "
    "engine saw (prompts + its outputs, and the evaluation segments)"
)


def _prompt_comparisons(full: Reference, records: list[dict], baseline: dict, low: list, settings) -> list[dict]:
    references = {r["prompt"]: r for r in baseline["prompts"]}
    prompts = []
    for record, low_logits in zip(records, low, strict=True):
        free = first_divergence(record, references[record["prompt"]], settings.window)
        free["classification"] = classify(free["divergence"], settings.benign_logprob_gap)
        reference = generated_rows(record, full.logprobs(record["prompt_token_ids"] + record["token_ids"]))
        prompts.append({
            "prompt": record["prompt"], **free, "teacher_forced": teacher_forced(reference, record),
            "floor_teacher_forced": floor_teacher_forced(reference, generated_rows(record, low_logits), record),
        })  # fmt: skip
    return prompts


def _engine_logits(capture_dir: str | Path | None, evaluation: dict, index: int) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(capture_dir) / evaluation["capture"]["files"][index]))["logits"]


def _evaluation(evaluation: dict, accumulators: dict, sides: dict) -> dict:
    """compare.json's evaluation part: both sides' statistics (whole text and RoPE buckets), the KLD CDFs."""
    switch = evaluation.get("rope_switch") or {}
    for side, accumulator in accumulators.items():
        sides[side]["evaluation"] = accumulator.summary()
        if switch.get("position") is not None:
            sides[side] |= accumulator.bucket_summaries(switch["position"])
    buckets = None
    if switch.get("position") is not None:
        buckets = {b: {s: sides[s][b] for s in sides} for b in ("before", "after")}
    return {
        "status": "measured",
        "text_tokens": evaluation.get("text_tokens"),
        "segments": len(evaluation.get("segments") or []),
        "segment_length": evaluation.get("segment_length"),
        "rope_switch": switch,
        "full_vocabulary": True,
        "method": STATISTICS_METHOD,
        "engine": sides["engine"]["evaluation"],
        "floor": sides["floor"]["evaluation"],
        "buckets": buckets,
        "kld_quantiles": {side: kld_quantiles(accumulator) for side, accumulator in accumulators.items()},
    }


STATISTICS_METHOD = (
    "llama.cpp --kl-divergence statistics over the full vocabulary at every position: base = transformers at "
    "reference_dtype; engine = the engine's own logits captured in its workers; floor = transformers at the "
    "engine's dtype"
)


def _no_evaluation(evaluation: dict) -> dict:
    reason = evaluation.get("reason") or "the engine captured no logits on the evaluation text"
    return {"status": "not measured", "reason": reason, "full_vocabulary": False}


def _text_metrics(statistics: dict | None) -> dict:
    """The evaluation text's summary in the names the optional absolute thresholds use."""
    if not statistics or not statistics.get("n"):
        return {}
    ppl = statistics["perplexity"]
    return {
        "perplexity_engine": ppl["other"],
        "perplexity_reference": ppl["base"],
        "perplexity_rel_diff": abs(ppl["other"] - ppl["base"]) / ppl["base"],
        "text_tokens": statistics["n"],
        "text_mean_abs_logprob_diff": statistics["abs_delta_logprob"]["mean"],
        "text_max_abs_logprob_diff": statistics["abs_delta_logprob"]["max"],
    }


def _divergence_check(prompts: list[dict]) -> dict:
    real = [p["prompt"] for p in prompts if p["classification"] == "real divergence"]
    return {"threshold": "no_real_divergence", "kind": "tokens", "metric": "real divergences", "value": len(real),
            "op": "==", "limit": 0, "passed": not real}  # fmt: skip
