"""The accuracy gate: is the engine's task accuracy significantly worse than the reference's, or worse by too much?

Per task, from the two runs' per-sample 0/1 correctness matched by doc_id (``harness.run_tasks`` records):

- each side's score p = k/n ± its standard error sqrt(p (1 - p) / (n - 1)) (the sample standard deviation over
  sqrt(n), as lm-eval reports it) and its Wilson 95 % interval;
- the difference engine - reference in points (1 point = 1 % of the items);
- the exact McNemar test, one-sided for "engine worse": of the b + c discordant items, b that only the reference
  got right and c that only the engine got right, p = P(X >= b), X ~ Binomial(b + c, 1/2) (1 when b + c = 0);
- ``passed`` when p >= alpha (not significantly worse) and the drop reference - engine <= max_drop points;
- the minimum detectable drop (MDD) at this n, one-sided alpha and power 0.8 (beta = 0.2), from the normal
  approximation of McNemar's test (Connor 1987): n = [z_alpha sqrt(psi) + z_beta sqrt(psi - delta^2)]^2 /
  delta^2, solved for the drop delta, with the discordant fraction psi = delta + 2 c / n (a drop delta on top of
  the flips both ways that the engine-better count c shows as noise); ``too_small`` when MDD > max_drop: then a
  pass does not rule out a drop of max_drop.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from scipy import optimize, stats

log = logging.getLogger(__name__)

POWER = 0.8
CONFIDENCE = 0.95


def score_and_stderr(correct: list[int]) -> tuple[float | None, float | None]:
    """Mean and sample-std / sqrt(n) (lm-eval's stderr of a mean); (None, None) when empty."""
    n = len(correct)
    if n == 0:
        return None, None
    p = sum(correct) / n
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def wilson_interval(hits: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (scipy's binomtest ``proportion_ci(method="wilson")``)."""
    if n == 0:
        return None
    ci = stats.binomtest(hits, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_worse(*, engine_worse: int, engine_better: int) -> float:
    """Exact one-sided McNemar p-value for "engine worse": P(X >= engine_worse), X ~ Bin(discordant, 1/2)."""
    discordant = engine_worse + engine_better
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(engine_worse, discordant, 0.5, alternative="greater").pvalue)


def minimum_detectable_drop(*, n: int, engine_better: int = 0, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest drop (fraction of items) that the one-sided McNemar test at ``alpha`` detects with ``power``
    on ``n`` paired items, with ``engine_better`` flips the other way as noise (module docstring); 1.0 when
    not even a drop of every item is detectable."""
    if n <= 0:
        return 1.0
    z_alpha, z_beta = stats.norm.ppf(1 - alpha), stats.norm.ppf(power)
    noise = 2 * engine_better / n

    def needed_minus_n(delta: float) -> float:
        psi = min(delta + noise, 1.0)
        return (z_alpha * math.sqrt(psi) + z_beta * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / delta**2 - n

    if needed_minus_n(1.0) > 0:
        return 1.0
    return float(optimize.brentq(needed_minus_n, 1e-9, 1.0, xtol=1e-9))


def paired(engine: dict[str, Any], reference: dict[str, Any]) -> tuple[list[tuple[int, int]], str | None]:
    """(engine, reference) correctness per doc_id, in doc_id order; or why the two cannot be paired."""
    sides = {}
    for side, record in (("engine", engine), ("reference", reference)):
        samples = record.get("samples") or []
        if any("correct" not in s for s in samples):
            return [], f"the {side}'s metric {record.get('metric')} is not 0/1 per sample"
        by_id = {int(s["doc_id"]): int(s["correct"]) for s in samples}
        if len(by_id) != len(samples):
            return [], f"the {side}'s samples repeat doc ids"
        sides[side] = by_id
    if sides["engine"].keys() != sides["reference"].keys():
        only_e = len(sides["engine"].keys() - sides["reference"].keys())
        only_r = len(sides["reference"].keys() - sides["engine"].keys())
        return [], f"doc ids differ: {only_e} only on the engine, {only_r} only on the reference (same --limit?)"
    if not sides["engine"]:
        return [], "no samples"
    return [(sides["engine"][i], sides["reference"][i]) for i in sorted(sides["engine"])], None


def task_verdict(*, engine: dict[str, Any], reference: dict[str, Any], alpha: float, max_drop: float) -> dict[str, Any]:
    """One task's verdict from the two sides' task records (``run_tasks(...)["tasks"][task]``); ``max_drop`` in
    points. Returns {"status": passed | failed | not measured, "reason", "n", "engine"/"reference": {"score",
    "stderr", "wilson95"} (in points), "difference", "engine_worse", "engine_better", "p_value", "mdd",
    "too_small", "alpha", "max_drop"}."""
    verdict: dict[str, Any] = {"status": "not measured", "reason": None, "metric": reference.get("metric"),
                               "n": 0, "alpha": alpha, "max_drop": max_drop}  # fmt: skip
    for side, record in (("reference", reference), ("engine", engine)):
        if record.get("status") != "ok":
            failed = side == "engine" and record.get("status") == "failed"
            status = "failed" if failed else "not measured"
            return verdict | {
                "status": status,
                "reason": f"{record.get('status')} on the {side}: {record.get('reason')}",
            }
    pairs, problem = paired(engine, reference)
    if problem:
        return verdict | {"reason": problem}
    n = len(pairs)
    worse = sum(1 for e, r in pairs if r and not e)
    better = sum(1 for e, r in pairs if e and not r)
    sides = {name: _side([pair[i] for pair in pairs]) for i, name in enumerate(("engine", "reference"))}
    difference = sides["engine"]["score"] - sides["reference"]["score"]
    drop = 0.0 - difference  # 0.0 -: no "-0.0" in the reason
    p_value = mcnemar_worse(engine_worse=worse, engine_better=better)
    mdd = 100 * minimum_detectable_drop(n=n, engine_better=better, alpha=alpha)
    reasons = []
    if p_value < alpha:
        reasons.append(f"significantly worse: McNemar p = {p_value:.3g} < {alpha} ({worse} lost, {better} gained)")
    if drop > max_drop:
        reasons.append(f"drop {drop:.1f} points > {max_drop}")
    status = "failed" if reasons else "passed"
    if not reasons:
        reasons.append(f"drop {drop:.1f} points, McNemar p = {p_value:.3g} ({worse} lost, {better} gained)")
    if mdd > max_drop:
        reasons.append(f"too few items: the minimum detectable drop at n = {n} is {mdd:.1f} points > {max_drop}")
    return verdict | {
        "status": status, "reason": "; ".join(reasons), "n": n, **sides, "difference": round(difference, 6),
        "engine_worse": worse, "engine_better": better, "p_value": p_value, "mdd": round(mdd, 6),
        "too_small": mdd > max_drop,
    }  # fmt: skip


def _side(correct: list[int]) -> dict[str, Any]:
    """Score, stderr and Wilson 95 % interval, in points."""
    score, stderr = score_and_stderr(correct)
    low, high = wilson_interval(sum(correct), len(correct))
    return {"score": 100 * score, "stderr": 100 * stderr, "wilson95": [100 * low, 100 * high]}


def accuracy_check(
    *, engine_run: dict[str, Any], reference_run: dict[str, Any], alpha: float = 0.05, max_drop: float = 10.0
) -> dict[str, Any]:
    """The gate over every task of either run (``harness.run_tasks`` documents): failed when a task failed,
    passed when at least one passed and none failed (tasks not measured are named in the reason), not measured
    otherwise."""
    names = sorted(set(engine_run.get("tasks", {})) | set(reference_run.get("tasks", {})))
    verdicts = []
    for name in names:
        engine = engine_run.get("tasks", {}).get(name) or _absent(engine_run)
        reference = reference_run.get("tasks", {}).get(name) or _absent(reference_run)
        verdicts.append({"task": name} | task_verdict(engine=engine, reference=reference, alpha=alpha,
                                                      max_drop=max_drop))  # fmt: skip
    by_status = {s: [v["task"] for v in verdicts if v["status"] == s] for s in ("failed", "passed", "not measured")}
    if by_status["failed"]:
        status, reason = "failed", f"worse on {', '.join(by_status['failed'])}"
    elif by_status["passed"]:
        status, reason = "passed", f"not worse on {', '.join(by_status['passed'])}"
    else:
        status = "not measured"
        reason = "; ".join(f"{v['task']}: {v['reason']}" for v in verdicts) or _run_reason(engine_run, reference_run)
    if by_status["not measured"] and status != "not measured":
        reason += f"; not measured: {', '.join(by_status['not measured'])}"
    if any(v.get("too_small") for v in verdicts):
        reason += f"; too few items to detect a drop of {max_drop} points: " + ", ".join(
            v["task"] for v in verdicts if v.get("too_small")
        )
    log.info("accuracy gate: %s (%s)", status, reason)
    return {"status": status, "reason": reason, "alpha": alpha, "max_drop": max_drop, "tasks": verdicts}


def _absent(run: dict[str, Any]) -> dict[str, Any]:
    return {"status": "not run", "reason": run.get("reason") or "task not in this run"}


def _run_reason(engine_run: dict[str, Any], reference_run: dict[str, Any]) -> str:
    return (
        f"no task: engine {engine_run.get('status')} ({engine_run.get('reason')}), reference "
        f"{reference_run.get('status')} ({reference_run.get('reason')})"
    )
