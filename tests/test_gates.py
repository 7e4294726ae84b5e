"""The floor gates (npuport.compare.gates) against answers written out here: every gate reads its own metric (and its
own RoPE bucket), its limit is ratio x floor + its own epsilon, and the edges (floor 0, epsilon only, a metric
missing on either side, exactly at the limit) decide as the README says."""

from __future__ import annotations

import pytest

from npuport.compare.gates import GATE_NAMES, gate_checks, margin

# The README's table ("Comparison gates"), written out: gate -> epsilon.
EPSILON = {
    "eval_mean_kld": 1e-6,
    "eval_p99_kld": 1e-5,
    "eval_top1_disagreement": 0.005,
    "eval_rms_delta_p": 1e-4,
    "before_switch_mean_kld": 1e-6,
    "after_switch_mean_kld": 1e-6,
    "prompt_top1_disagreement": 0.01,
    "prompt_mean_abs_logprob_diff": 1e-3,
    "prompt_mean_topk_kl": 1e-6,
}
AGREEMENT = ("eval_top1_disagreement", "prompt_top1_disagreement")  # read as 1 - an agreement rate


def side(**values: float) -> dict:
    """One side's metrics as compare builds them, every gated field set (by gate name; for the two agreement gates
    the value given is the agreement rate). Fields no gate reads hold -1, so reading one of them shows."""
    v = dict.fromkeys(EPSILON, 0.0) | values
    return {
        "evaluation": {"kld": {"mean": v["eval_mean_kld"], "p99": v["eval_p99_kld"], "median": -1.0, "p90": -1.0,
                               "p99_9": -1.0, "max": -1.0},
                       "same_top1": {"p": v["eval_top1_disagreement"], "se": -1.0},
                       "delta_p": {"rms": v["eval_rms_delta_p"], "mean": -1.0, "rms_se": -1.0}},
        "before": {"kld": {"mean": v["before_switch_mean_kld"], "p99": -1.0}},
        "after": {"kld": {"mean": v["after_switch_mean_kld"], "p99": -1.0}},
        "prompts": {"top1_agreement": v["prompt_top1_disagreement"],
                    "mean_abs_logprob_diff": v["prompt_mean_abs_logprob_diff"],
                    "mean_topk_kl": v["prompt_mean_topk_kl"], "max_abs_logprob_diff": -1.0},
    }  # fmt: skip


# Each gate's engine and floor values differ from every other gate's, so a gate that reads another field (or the
# other RoPE bucket) gets another number and another verdict.
ENGINE = side(eval_mean_kld=3.1e-4, eval_p99_kld=2.0e-3, eval_top1_disagreement=0.97, eval_rms_delta_p=2.3e-3,
              before_switch_mean_kld=1.7e-4, after_switch_mean_kld=6.9e-4, prompt_top1_disagreement=0.96,
              prompt_mean_abs_logprob_diff=0.041, prompt_mean_topk_kl=8.0e-6)  # fmt: skip
FLOOR = side(eval_mean_kld=1.5e-4, eval_p99_kld=1.1e-3, eval_top1_disagreement=0.99, eval_rms_delta_p=1.3e-3,
             before_switch_mean_kld=1.2e-4, after_switch_mean_kld=2.5e-4, prompt_top1_disagreement=0.99,
             prompt_mean_abs_logprob_diff=0.021, prompt_mean_topk_kl=1.0e-6)  # fmt: skip
# gate -> (engine value, floor value, limit at ratio 2, passed), worked out by hand: limit = 2 x floor + epsilon.
EXPECTED = {
    "eval_mean_kld": (3.1e-4, 1.5e-4, 3.01e-4, False),
    "eval_p99_kld": (2.0e-3, 1.1e-3, 2.21e-3, True),
    "eval_top1_disagreement": (0.03, 0.01, 0.025, False),
    "eval_rms_delta_p": (2.3e-3, 1.3e-3, 2.7e-3, True),
    "before_switch_mean_kld": (1.7e-4, 1.2e-4, 2.41e-4, True),
    "after_switch_mean_kld": (6.9e-4, 2.5e-4, 5.01e-4, False),  # "before"'s numbers would pass
    "prompt_top1_disagreement": (0.04, 0.01, 0.03, False),
    "prompt_mean_abs_logprob_diff": (0.041, 0.021, 0.043, True),
    "prompt_mean_topk_kl": (8.0e-6, 1.0e-6, 3.0e-6, False),
}


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["threshold"]: c for c in checks}


# The nine gates in the README's order, written out.
GATES = (
    "eval_mean_kld",
    "eval_p99_kld",
    "eval_top1_disagreement",
    "eval_rms_delta_p",
    "before_switch_mean_kld",
    "after_switch_mean_kld",
    "prompt_top1_disagreement",
    "prompt_mean_abs_logprob_diff",
    "prompt_mean_topk_kl",
)


def test_the_nine_gates_in_the_readmes_order():
    assert GATE_NAMES == GATES


def test_every_gate_reads_its_own_metric_and_bucket_and_its_limit_is_ratio_times_floor_plus_its_epsilon():
    checks = gate_checks(ENGINE, FLOOR, ratio=2.0, ratios={})
    assert [c["threshold"] for c in checks] == list(GATE_NAMES)  # every gate, in order, none twice
    for name, check in by_name(checks).items():
        value, floor, limit, passed = EXPECTED[name]
        assert check["value"] == pytest.approx(value, rel=1e-12), name
        assert check["floor"] == pytest.approx(floor, rel=1e-12), name
        assert check["epsilon"] == EPSILON[name], name
        assert check["ratio"] == 2.0 and check["op"] == "<=" and check["kind"] == "floor", name
        assert check["limit"] == pytest.approx(limit, rel=1e-12), name
        assert check["passed"] is passed, name
        assert check["ratio_to_floor"] == pytest.approx(value / floor, rel=1e-12), name


def test_a_gates_own_ratio_replaces_the_common_one_for_that_gate_only():
    checks = by_name(gate_checks(ENGINE, FLOOR, ratio=2.0, ratios={"eval_mean_kld": 3.0, "unknown_gate": 0.1}))
    assert checks["eval_mean_kld"]["ratio"] == 3.0
    assert checks["eval_mean_kld"]["limit"] == pytest.approx(4.51e-4)  # 3 x 1.5e-4 + 1e-6
    assert checks["eval_mean_kld"]["passed"] is True
    assert checks["eval_p99_kld"]["ratio"] == 2.0 and checks["eval_p99_kld"]["limit"] == pytest.approx(2.21e-3)


@pytest.mark.parametrize("name", list(EPSILON))
def test_with_a_floor_of_zero_each_gate_allows_exactly_its_own_epsilon(name):
    floor = side(**dict.fromkeys(AGREEMENT, 1.0))  # every error metric 0, agreement 100 %
    epsilon = EPSILON[name]

    def engine_at(error: float) -> dict:
        own = 1.0 - error if name in AGREEMENT else error
        return side(**dict.fromkeys(AGREEMENT, 1.0) | {name: own})

    below = by_name(gate_checks(engine_at(0.98 * epsilon), floor, ratio=2.0, ratios={}))[name]
    above = by_name(gate_checks(engine_at(1.02 * epsilon), floor, ratio=2.0, ratios={}))[name]
    assert below["floor"] == 0.0 and below["limit"] == epsilon and below["passed"] is True
    assert above["limit"] == epsilon and above["passed"] is False  # a zero floor lets nothing above epsilon through
    assert below["ratio_to_floor"] is None and above["ratio_to_floor"] is None  # no ratio to a zero floor
    assert margin(above) == pytest.approx(1.02, rel=1e-6) and margin(below) == pytest.approx(0.98, rel=1e-6)


def test_a_floor_of_zero_fails_an_engine_far_above_epsilon():
    floor = side(**dict.fromkeys(AGREEMENT, 1.0))
    engine = side(**dict.fromkeys(AGREEMENT, 1.0) | {"eval_mean_kld": 0.5, "prompt_top1_disagreement": 0.0})
    checks = by_name(gate_checks(engine, floor, ratio=1000.0, ratios={}))
    assert checks["eval_mean_kld"]["passed"] is False and checks["eval_mean_kld"]["limit"] == 1e-6
    assert checks["prompt_top1_disagreement"]["value"] == 1.0 and checks["prompt_top1_disagreement"]["passed"] is False
    assert checks["eval_p99_kld"]["passed"] is True and checks["eval_p99_kld"]["value"] == 0.0  # 0 <= 0 + epsilon


def test_a_value_exactly_at_the_limit_passes_and_just_above_fails():
    limit = 2 * 0.25 + 1e-6  # the gate's formula, written out
    engine, floor = {"evaluation": {"kld": {"mean": limit}}}, {"evaluation": {"kld": {"mean": 0.25}}}
    (check,) = gate_checks(engine, floor, ratio=2.0, ratios={})
    assert check["limit"] == limit and check["passed"] is True
    (check,) = gate_checks({"evaluation": {"kld": {"mean": limit * (1 + 1e-12)}}}, floor, ratio=2.0, ratios={})
    assert check["passed"] is False


def test_a_metric_missing_on_either_side_leaves_its_gate_out():
    engine = {"evaluation": {"kld": {"mean": 1e-4, "p99": None}}, "prompts": {"top1_agreement": 1.0}}
    floor = {"evaluation": {"kld": {"mean": 1e-4, "p99": 1e-3}}, "prompts": {}, "before": {"kld": {"mean": 1e-4}}}
    checks = gate_checks(engine, floor, ratio=2.0, ratios={})
    # p99: None on the engine; prompt top-1: absent on the floor; before: absent on the engine
    assert [c["threshold"] for c in checks] == ["eval_mean_kld"]
    assert gate_checks({}, FLOOR, ratio=2.0, ratios={}) == [] and gate_checks(ENGINE, {}, ratio=2.0, ratios={}) == []
    # a path through something that is not a mapping reads as missing, not as an error
    assert gate_checks({"evaluation": {"kld": 0.3}}, {"evaluation": {"kld": 0.3}}, ratio=2.0, ratios={}) == []


def test_zero_is_a_value_not_a_missing_metric():
    checks = gate_checks({"prompts": {"mean_topk_kl": 0.0}}, {"prompts": {"mean_topk_kl": 0.0}}, ratio=2.0, ratios={})
    assert [(c["threshold"], c["value"], c["passed"]) for c in checks] == [("prompt_mean_topk_kl", 0.0, True)]


def test_margin_is_value_over_limit_for_upper_limits_only():
    assert margin({"op": "<=", "value": 3.0, "limit": 2.0}) == 1.5
    assert margin({"op": "<=", "value": 1.0, "limit": 4.0}) == 0.25
    assert margin({"op": ">=", "value": 3.0, "limit": 2.0}) is None  # a lower limit has no such margin
    assert margin({"op": "<=", "value": 3.0, "limit": 0.0}) is None and margin({"op": "<=", "value": 3.0}) is None
