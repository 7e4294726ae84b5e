import json

import pytest
import torch

from npuport.compare.compare import (
    classify,
    compare,
    first_divergence,
    floor_teacher_forced,
    threshold_checks,
    topk_metrics,
)
from npuport.compare.gates import GATE_NAMES, gate_checks, margin
from npuport.core.settings import CompareSettings


def record(tokens, tops):
    """A per-prompt record: greedy tokens, their logprobs, and top-k lists per position."""
    return {
        "token_ids": tokens,
        "token_logprobs": [dict(top)[t] for t, top in zip(tokens, tops, strict=True)],
        "top_logprobs": [sorted(top, key=lambda x: -x[1]) for top in tops],
    }


TOP_A = [(5, -0.1), (6, -2.5), (7, -3.0)]


def test_identical_outputs():
    engine = record([5, 5], [TOP_A, TOP_A])
    free = first_divergence(engine, record([5, 5], [TOP_A, TOP_A]), window=None)
    assert free == {"compared": 2, "matched": 2, "divergence": None}
    assert classify(free["divergence"], 0.5) == "identical"


def test_benign_near_tie():
    # the engine picks 5 by 0.02 nats, the reference picks 6 by 0.03: each in the other's top-k
    engine = record([5, 5], [TOP_A, [(5, -0.70), (6, -0.72), (7, -3.0)]])
    reference = record([5, 6], [TOP_A, [(6, -0.69), (5, -0.72), (7, -3.0)]])
    free = first_divergence(engine, reference, window=None)
    assert free["matched"] == 1
    assert free["divergence"]["position"] == 1
    assert free["divergence"]["engine"]["token_id"] == 5
    assert free["divergence"]["reference"]["token_id"] == 6
    assert classify(free["divergence"], max_gap=0.5) == "benign divergence"
    assert free["divergence"]["logprob_gap"] == pytest.approx(0.03)


def test_near_tie_with_too_large_gap_is_real():
    engine = record([5], [[(5, -0.1), (6, -2.0)]])
    reference = record([6], [[(6, -0.1), (5, -2.0)]])
    free = first_divergence(engine, reference, window=None)
    assert classify(free["divergence"], max_gap=0.5) == "real divergence"


def test_token_outside_top_k_is_real():
    engine = record([5], [[(5, -0.1), (6, -2.0)]])
    reference = record([9], [[(9, -0.1), (5, -0.2)]])
    free = first_divergence(engine, reference, window=None)
    assert free["divergence"]["engine"]["other_token_in_top_k"] is False
    assert classify(free["divergence"], max_gap=10) == "real divergence"


def test_window_limits_comparison_and_length_mismatch_counts():
    engine = record([5, 5, 5], [TOP_A] * 3)
    assert first_divergence(engine, record([5, 5], [TOP_A] * 2), window=2)["divergence"] is None
    free = first_divergence(engine, record([5, 5], [TOP_A] * 2), window=None)
    assert free["matched"] == 2 and free["divergence"]["reference"]["token_id"] is None
    assert classify(free["divergence"], 0.5) == "real divergence"


def test_topk_metrics_against_reference_logprobs():
    ref = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.0]]), dim=-1)
    same = [{0: float(ref[0, 0]), 1: float(ref[0, 1])}, {1: float(ref[1, 1]), 2: float(ref[1, 2])}]
    metrics = topk_metrics(same, ref)
    assert metrics["top1_agreement"] == 1.0
    assert metrics["max_abs_logprob_diff"] == pytest.approx(0, abs=1e-6)
    assert metrics["mean_topk_kl"] == pytest.approx(0, abs=1e-9)
    shifted = [{0: float(ref[0, 0]) - 0.3, 1: float(ref[0, 1])}, {2: float(ref[1, 2]) + 2, 1: float(ref[1, 1])}]
    metrics = topk_metrics(shifted, ref)
    assert metrics["top1_agreement"] == 0.5  # at position 1 the engine's top-1 is token 2, the reference's 1
    assert metrics["max_abs_logprob_diff"] == pytest.approx(2.0, abs=1e-6)
    assert metrics["mean_topk_kl"] > 0.01


def test_threshold_checks_store_limit_beside_value():
    checks = threshold_checks(
        {"top1_agreement": 0.9, "max_abs_logprob_diff": 0.2, "perplexity_rel_diff": None},
        {"min_top1_agreement": 0.95, "max_abs_logprob_diff": 0.5, "max_perplexity_rel_diff": 0.1},
    )
    by_name = {c["threshold"]: c for c in checks}
    assert by_name["min_top1_agreement"] | {} == {
        "threshold": "min_top1_agreement",
        "metric": "top1_agreement",
        "value": 0.9,
        "op": ">=",
        "limit": 0.95,
        "passed": False,
    }
    assert by_name["max_abs_logprob_diff"]["passed"] is True
    assert by_name["max_perplexity_rel_diff"]["passed"] is None  # not measured, not passed


def test_gates_limit_is_ratio_times_floor_plus_epsilon():
    engine = {"evaluation": {"kld": {"mean": 3e-4, "p99": 1e-3}, "same_top1": {"p": 0.99}},
              "prompts": {"top1_agreement": 1.0}}  # fmt: skip
    floor = {"evaluation": {"kld": {"mean": 1e-4, "p99": 1e-3}, "same_top1": {"p": 0.995}},
             "prompts": {"top1_agreement": 1.0}}  # fmt: skip
    checks = {c["threshold"]: c for c in gate_checks(engine, floor, ratio=2.0, ratios={"eval_p99_kld": 0.5})}
    mean = checks["eval_mean_kld"]
    assert mean["limit"] == pytest.approx(2 * 1e-4 + 1e-6) and mean["passed"] is False
    assert mean["ratio_to_floor"] == pytest.approx(3.0) and margin(mean) == pytest.approx(3e-4 / 2.01e-4)
    assert checks["eval_p99_kld"]["ratio"] == 0.5 and checks["eval_p99_kld"]["passed"] is False  # per-gate ratio
    top1 = checks["eval_top1_disagreement"]  # agreement enters as disagreement
    assert top1["value"] == pytest.approx(0.01) and top1["floor"] == pytest.approx(0.005)
    assert top1["limit"] == pytest.approx(2 * 0.005 + 0.005) and top1["passed"] is True
    # zero on both sides passes on epsilon; metrics absent on either side are not gated
    assert checks["prompt_top1_disagreement"]["passed"] is True and checks["prompt_top1_disagreement"]["floor"] == 0
    assert set(checks) == {"eval_mean_kld", "eval_p99_kld", "eval_top1_disagreement", "prompt_top1_disagreement"}
    assert set(checks) <= set(GATE_NAMES)


def test_floor_teacher_forced_uses_the_low_precision_references_own_top_k():
    reference = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), -1)
    low_logits = torch.tensor([[1.0, 2.0, 0.0, -1.0]])  # its top-1 differs from the reference's
    record = {"token_ids": [1], "top_logprobs": [[[1, -0.3], [0, -1.3]]]}
    metrics = floor_teacher_forced(reference, low_logits, record)
    assert metrics["positions"] == 1 and metrics["top1_agreement"] == 0.0
    low = torch.log_softmax(low_logits, -1)[0]
    expected = max(abs(float(low[i]) - float(reference[0, i])) for i in (0, 1))
    assert metrics["max_abs_logprob_diff"] == pytest.approx(expected)


def test_not_measured_records_the_typed_settings():
    settings = CompareSettings.from_config({"window": 48})
    doc = compare({"status": "not run", "reason": "no vLLM"}, {"status": "ok"}, "unused", settings)
    assert doc["status"] == "not measured" and doc["reason"] == "smoke status not run: no vLLM"
    assert doc["settings"] == settings.as_dict() == json.loads(json.dumps(doc["settings"]))
    assert doc["settings"]["window"] == 48 and doc["settings"]["thresholds"] == {}  # fixed limits are opt-in
    assert doc["settings"]["floor_ratio"] == 2.0
    with pytest.raises(TypeError):
        compare({"status": "not run"}, {"status": "ok"}, "unused", settings, True)  # trust_remote_code by keyword
