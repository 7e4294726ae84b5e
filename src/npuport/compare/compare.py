"""Compare the engine under test with the reference, token by token and logprob by logprob.

Free-running: the first position where the two greedy outputs differ, classified as a benign
near-tie (each side's token in the other's top-k and a small logprob gap, vLLM's
``check_logprobs_close`` convention plus our gap) or a real divergence.
Teacher-forced: the reference scores the engine's exact prompt+output tokens, and at every
position the engine's top-k logprobs are compared with the reference's logprobs of the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

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


class Reference:
    """The reference model (transformers) that scores token sequences."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).eval()

    @torch.no_grad()
    def logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """log_softmax (float32) of the next-token logits at every position of ``token_ids``."""
        logits = self.model(torch.tensor([token_ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)


def teacher_forced(reference: Reference, record: dict) -> dict:
    """Score the engine's prompt+output with the reference; compare at every generated position."""
    prompt, output = record["prompt_token_ids"], record["token_ids"]
    if not output:
        return topk_metrics([], torch.empty(0, 0))
    logprobs = reference.logprobs(prompt + output)
    generated = logprobs[len(prompt) - 1 : len(prompt) - 1 + len(output)]
    return topk_metrics([_top(record, i) for i in range(len(output))], generated)


def perplexity(token_ids: list[int], token_logprobs: list[float | None]) -> float:
    """exp(-mean logprob) over the positions that have a logprob (the first token has none)."""
    scored = [lp for lp in token_logprobs if lp is not None]
    return math.exp(-sum(scored) / len(scored))


def _pooled(per_prompt: list[dict]) -> dict:
    """Metrics over all positions of all prompts (weighted by positions)."""
    metrics = [p["teacher_forced"] for p in per_prompt if p["teacher_forced"]["positions"]]
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
    smoke: dict, baseline: dict, model_dir: str | Path, settings: CompareSettings, *, trust_remote_code: bool = False
) -> dict:
    """The compare.json document: ``smoke`` (smoke.json) against ``baseline`` (baseline.json), the reference
    model in ``model_dir`` scoring the engine's tokens."""
    recorded = settings.as_dict()
    if smoke.get("status") != "ok" or baseline.get("status") != "ok":
        return not_measured(smoke, baseline, recorded)
    reference = Reference(model_dir, settings.reference_dtype, trust_remote_code)
    references = {r["prompt"]: r for r in baseline["prompts"]}
    prompts = []
    for record in smoke["prompts"]:
        free = first_divergence(record, references[record["prompt"]], settings.window)
        free["classification"] = classify(free["divergence"], settings.benign_logprob_gap)
        prompts.append({"prompt": record["prompt"], **free, "teacher_forced": teacher_forced(reference, record)})
    overall = _pooled(prompts)
    overall |= _perplexities(smoke, reference)
    checks = threshold_checks(overall, recorded["thresholds"])
    real = [p["prompt"] for p in prompts if p["classification"] == "real divergence"]
    checks.append(
        {"threshold": "no_real_divergence", "metric": "real divergences", "value": len(real), "op": "==", "limit": 0}
        | {"passed": not real}
    )
    failed = [c["threshold"] for c in checks if c["passed"] is False]
    return {
        "status": "failed" if failed else "passed",
        "reason": "failed: " + ", ".join(failed) if failed else None,
        "settings": recorded,
        "engine": {"smoke": smoke.get("platform"), "baseline": baseline.get("platform")},
        "prompts": prompts,
        "overall": overall,
        "checks": checks,
    }


def _perplexities(smoke: dict, reference: Reference) -> dict:
    """Perplexity of both sides on the fixed text, and the per-token logprob difference along it.

    The text is scored teacher-forced by both (the engine through prompt logprobs), so unlike the
    model's confident answers it compares the two where the next token is uncertain.
    """
    ppl = smoke.get("perplexity") or {}
    if not ppl.get("token_ids"):
        keys = ("perplexity_engine", "perplexity_reference", "perplexity_rel_diff", "text_tokens")
        return dict.fromkeys(keys + ("text_mean_abs_logprob_diff", "text_max_abs_logprob_diff"))
    ids, engine_lps = ppl["token_ids"], ppl["token_logprobs"]
    logprobs = reference.logprobs(ids)
    reference_lps = [None] + [float(logprobs[i - 1, t]) for i, t in enumerate(ids) if i > 0]
    diffs = [abs(e - r) for e, r in zip(engine_lps, reference_lps, strict=True) if e is not None and r is not None]
    engine, ref = perplexity(ids, engine_lps), perplexity(ids, reference_lps)
    return {
        "perplexity_engine": engine,
        "perplexity_reference": ref,
        "perplexity_rel_diff": abs(engine - ref) / ref,
        "text_tokens": len(ids),
        "text_mean_abs_logprob_diff": sum(diffs) / len(diffs),
        "text_max_abs_logprob_diff": max(diffs),
    }
