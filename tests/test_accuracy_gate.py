"""The accuracy gate (npuport.accuracy.gate) against answers computed here without it: McNemar's exact one-sided
p-value from binomial coefficients, Wilson's interval from its formula, the minimum detectable drop from Connor's
sample-size equation solved by bisection, and the verdicts at their edges (exactly at alpha, exactly at max_drop, a
failure on the reference's side, tasks missing from one run)."""

from __future__ import annotations

import math

import pytest

from npuport.accuracy.gate import (
    accuracy_check,
    mcnemar_worse,
    minimum_detectable_drop,
    paired,
    score_and_stderr,
    task_verdict,
    wilson_interval,
)

Z_95 = 1.959963984540054  # two-sided 95 %
Z_ALPHA_05 = 1.6448536269514722  # one-sided 5 %
Z_POWER_80 = 0.8416212335729143


def mcnemar_by_hand(worse: int, better: int) -> float:
    """P(X >= worse), X ~ Binomial(worse + better, 1/2), from binomial coefficients."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n if n else 1.0


def wilson_by_hand(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def connor_n(delta: float, psi: float, z_alpha: float = Z_ALPHA_05, z_beta: float = Z_POWER_80) -> float:
    """Connor (1987): pairs needed for McNemar's test to detect a drop ``delta`` with discordant fraction ``psi``."""
    return (z_alpha * math.sqrt(psi) + z_beta * math.sqrt(psi - delta * delta)) ** 2 / delta**2


def mdd_by_bisection(n: int, better: int, z_alpha: float = Z_ALPHA_05, z_beta: float = Z_POWER_80) -> float:
    """The drop at which Connor's n equals ``n``, with psi = delta + 2 x better / n (the noise flips both ways)."""
    low, high = 1e-9, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        psi = min(mid + 2 * better / n, 1.0)
        if connor_n(mid, psi, z_alpha, z_beta) > n:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def record(correct: list[int], status: str = "ok", **fields) -> dict:
    samples = [{"doc_id": i, "correct": c} for i, c in enumerate(correct)]
    return {"status": status, "reason": None, "metric": "acc", "samples": samples, "n": len(samples)} | fields


@pytest.mark.parametrize(("worse", "better"), [(0, 0), (1, 0), (0, 3), (3, 3), (7, 2), (12, 0), (4, 9), (20, 11)])
def test_mcnemar_is_the_upper_binomial_tail(worse, better):
    assert mcnemar_worse(engine_worse=worse, engine_better=better) == pytest.approx(mcnemar_by_hand(worse, better))


@pytest.mark.parametrize(("hits", "n"), [(0, 10), (3, 10), (8, 10), (10, 10), (45, 72), (1, 1)])
def test_wilson_interval_from_its_formula(hits, n):
    assert wilson_interval(hits, n) == pytest.approx(wilson_by_hand(hits, n), abs=1e-12)
    assert wilson_interval(hits, n, confidence=0.9) == pytest.approx(wilson_by_hand(hits, n, 1.6448536269514722))
    assert wilson_interval(0, 0) is None


def test_score_and_its_standard_error():
    assert score_and_stderr([]) == (None, None)
    assert score_and_stderr([1]) == (1.0, 0.0) and score_and_stderr([0]) == (0.0, 0.0)  # one item: no spread
    assert score_and_stderr([1, 0]) == (0.5, 0.5)  # sqrt(0.25 / 1)
    p = 5 / 8
    assert score_and_stderr([1, 1, 1, 0, 1, 0, 1, 0]) == pytest.approx((p, math.sqrt(p * (1 - p) / 7)))


@pytest.mark.parametrize(("n", "better"), [(72, 0), (72, 5), (100, 3), (400, 10), (1000, 0), (100, 45)])
def test_minimum_detectable_drop_solves_connors_equation_with_twice_the_flips_as_noise(n, better):
    expected = mdd_by_bisection(n, better)
    got = minimum_detectable_drop(n=n, engine_better=better)
    assert got == pytest.approx(expected, abs=1e-7)
    # the same equation holds at the answer, with psi = delta + 2c/n, at most 1 (c/n would give another n)
    assert connor_n(got, min(got + 2 * better / n, 1.0)) == pytest.approx(n, rel=1e-5)
    if better:
        assert connor_n(got, min(got + better / n, 1.0)) < 0.95 * n


def test_minimum_detectable_drop_follows_alpha_and_power():
    z_01 = 2.3263478740408408  # one-sided 1 %
    z_90 = 1.2815515655446004
    assert minimum_detectable_drop(n=200, alpha=0.01) == pytest.approx(mdd_by_bisection(200, 0, z_01), abs=1e-7)
    assert minimum_detectable_drop(n=200, power=0.9) == pytest.approx(
        mdd_by_bisection(200, 0, Z_ALPHA_05, z_90), abs=1e-7
    )
    assert minimum_detectable_drop(n=0) == 1.0 and minimum_detectable_drop(n=-3) == 1.0
    # losing every item (delta 1, psi 1) needs z_alpha^2 = 2.71 pairs: not detectable with 2, barely with 3
    assert minimum_detectable_drop(n=2) == 1.0
    assert minimum_detectable_drop(n=3) == pytest.approx(mdd_by_bisection(3, 0), abs=1e-7) and Z_ALPHA_05**2 < 3


def test_a_task_verdict_by_hand():
    # 100 items: the reference gets 90, the engine loses 6 of them and gains 2 elsewhere -> 86
    reference = [1] * 90 + [0] * 10
    engine = [0] * 6 + [1] * 84 + [1] * 2 + [0] * 8
    verdict = task_verdict(engine=record(engine), reference=record(reference), alpha=0.05, max_drop=5.0)
    p = mcnemar_by_hand(6, 2)  # 37 / 256 = 0.1445
    mdd = 100 * mdd_by_bisection(100, 2)
    assert verdict["n"] == 100 and verdict["engine_worse"] == 6 and verdict["engine_better"] == 2
    assert verdict["p_value"] == pytest.approx(p) and p == pytest.approx(37 / 256)
    assert verdict["engine"]["score"] == pytest.approx(86.0) and verdict["reference"]["score"] == pytest.approx(90.0)
    assert verdict["engine"]["stderr"] == pytest.approx(100 * math.sqrt(0.86 * 0.14 / 99))
    assert verdict["reference"]["stderr"] == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 99))
    assert verdict["engine"]["wilson95"] == pytest.approx([100 * x for x in wilson_by_hand(86, 100)])
    assert verdict["reference"]["wilson95"] == pytest.approx([100 * x for x in wilson_by_hand(90, 100)])
    assert verdict["difference"] == pytest.approx(-4.0)
    assert verdict["mdd"] == pytest.approx(mdd, abs=1e-5) and verdict["too_small"] is (mdd > 5.0) is True
    assert verdict["status"] == "passed"  # 4 points down, not significant (p 0.14), within 5 points
    assert verdict["reason"].startswith("drop 4.0 points, McNemar p = 0.145 (6 lost, 2 gained)")
    assert "minimum detectable drop at n = 100" in verdict["reason"]
    assert verdict["alpha"] == 0.05 and verdict["max_drop"] == 5.0 and verdict["metric"] == "acc"


def test_significantly_worse_fails_and_exactly_alpha_does_not():
    reference = record([1] * 20)
    five_lost = record([0] * 5 + [1] * 15)  # p = 1/32 exactly
    at_alpha = task_verdict(engine=five_lost, reference=reference, alpha=1 / 32, max_drop=50)
    assert at_alpha["p_value"] == 1 / 32 and at_alpha["status"] == "passed"  # p >= alpha: not significantly worse
    below = task_verdict(engine=five_lost, reference=reference, alpha=0.05, max_drop=50)
    assert below["status"] == "failed" and below["reason"].startswith("significantly worse: McNemar p = 0.0312 < 0.05")


def test_a_drop_exactly_max_drop_passes_and_more_fails():
    reference = record([1] * 10)
    one_lost = record([0] + [1] * 9)  # drop 10.0 points, p = 0.5
    assert task_verdict(engine=one_lost, reference=reference, alpha=0.05, max_drop=10.0)["status"] == "passed"
    failed = task_verdict(engine=one_lost, reference=reference, alpha=0.05, max_drop=9.9)
    assert failed["status"] == "failed" and "drop 10.0 points > 9.9" in failed["reason"]
    gained = task_verdict(engine=record([1] * 10), reference=record([0] + [1] * 9), alpha=0.05, max_drop=0.0)
    assert gained["status"] == "passed" and gained["difference"] == pytest.approx(10.0)  # better is no drop


def test_a_failure_on_the_reference_side_is_not_the_engines():
    ok = record([1, 0, 1])
    reference_failed = task_verdict(engine=ok, reference=record([], status="failed", reason="OOM"), alpha=0.05,
                                    max_drop=5)  # fmt: skip
    assert reference_failed["status"] == "not measured"
    assert reference_failed["reason"] == "failed on the reference: OOM" and reference_failed["n"] == 0
    engine_failed = task_verdict(engine=record([], status="failed", reason="HTTP 500"), reference=ok, alpha=0.05,
                                 max_drop=5)  # fmt: skip
    assert engine_failed["status"] == "failed" and engine_failed["reason"] == "failed on the engine: HTTP 500"
    not_run = task_verdict(engine=record([], status="not run", reason="offline"), reference=ok, alpha=0.05, max_drop=5)
    assert not_run["status"] == "not measured" and not_run["reason"] == "not run on the engine: offline"
    # the whole check: a reference that failed leaves the gate not measured, never failed
    check = accuracy_check(engine_run={"tasks": {"t": ok}},
                           reference_run={"tasks": {"t": record([], status="failed", reason="OOM")}})  # fmt: skip
    assert check["status"] == "not measured" and check["reason"] == "t: failed on the reference: OOM"


def test_pairing_by_doc_id():
    engine = {"samples": [{"doc_id": 2, "correct": 1}, {"doc_id": 0, "correct": 0}, {"doc_id": 1, "correct": 1}]}
    reference = {"samples": [{"doc_id": 0, "correct": 1}, {"doc_id": 1, "correct": 1}, {"doc_id": 2, "correct": 0}]}
    assert paired(engine, reference) == ([(0, 1), (1, 1), (1, 0)], None)
    assert paired({"samples": []}, {"samples": []}) == ([], "no samples")
    repeated = {"samples": [{"doc_id": 0, "correct": 1}, {"doc_id": 0, "correct": 0}]}
    assert paired(repeated, reference)[1] == "the engine's samples repeat doc ids"
    scored = {"metric": "bleu", "samples": [{"doc_id": 0, "score": 0.3}]}
    assert paired(engine, scored)[1] == "the reference's metric bleu is not 0/1 per sample"
    fewer = {"samples": [{"doc_id": 0, "correct": 1}, {"doc_id": 5, "correct": 1}]}
    assert paired(fewer, reference)[1] == (
        "doc ids differ: 1 only on the engine, 2 only on the reference (same --limit?)"
    )


def test_the_check_over_tasks():
    good, bad = record([1] * 30), record([0] * 12 + [1] * 18)
    both = accuracy_check(engine_run={"tasks": {"a": good, "b": bad}}, reference_run={"tasks": {"a": good, "b": good}},
                          max_drop=50)  # fmt: skip
    assert both["status"] == "failed" and both["reason"].startswith("worse on b")  # one failed task fails the check
    assert [t["task"] for t in both["tasks"]] == ["a", "b"]
    assert [t["status"] for t in both["tasks"]] == ["passed", "failed"]
    one_missing = accuracy_check(engine_run={"status": "ok", "tasks": {"a": good}},
                                 reference_run={"tasks": {"a": good, "c": good}}, max_drop=50)  # fmt: skip
    assert one_missing["status"] == "passed"
    assert one_missing["reason"] == "not worse on a; not measured: c"
    assert one_missing["tasks"][1]["reason"] == "not run on the engine: task not in this run"
    none = accuracy_check(engine_run={"status": "failed", "reason": "no server", "tasks": {}},
                          reference_run={"status": "ok", "reason": None, "tasks": {}})  # fmt: skip
    assert none["status"] == "not measured"
    assert none["reason"] == "no task: engine failed (no server), reference ok (None)"
    small = accuracy_check(engine_run={"tasks": {"a": good}}, reference_run={"tasks": {"a": good}}, max_drop=5)
    assert small["status"] == "passed" and small["reason"].endswith("too few items to detect a drop of 5 points: a")
    assert small["alpha"] == 0.05 and small["max_drop"] == 5
