"""The layer comparison's numbers (npuport.compare.layers: PointStats, point_record, first_divergent, summary) on
tensors small enough to work out by hand: cosine, relative L2 and max |Δ|, the gate ratio x floor + epsilon, and the
edges (a floor of 0, epsilon only, an all-zero reference, non-finite values, exactly at the limit)."""

from __future__ import annotations

import math

import pytest
import torch

from npuport.compare.layers import Gate, PointPair, PointStats, first_divergent, point_record, summary


def stats(side, reference) -> PointStats:
    s = PointStats()
    s.add(torch.tensor(side, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64))
    return s


def pair(engine, floor, reference) -> PointPair:
    return PointPair(engine=stats(engine, reference), floor=stats(floor, reference))


def test_metrics_of_one_row_by_hand():
    s = stats([[3.0, 5.0]], [[3.0, 4.0]])
    # dot 3*3 + 5*4 = 29, |side|^2 = 34, |ref|^2 = 25, diff (0, 1)
    assert s.cosine == pytest.approx(29 / math.sqrt(34 * 25), rel=1e-15)
    assert s.rel_l2 == pytest.approx(1 / 5, rel=1e-15)
    assert s.max_abs == 1.0 and s.tokens == 1 and s.nonfinite == 0
    metrics = s.metrics()
    assert {key: metrics[key] for key in ("cosine", "rel_l2", "max_abs", "nonfinite")} == {
        "cosine": pytest.approx(29 / math.sqrt(850)), "rel_l2": pytest.approx(0.2), "max_abs": 1.0, "nonfinite": 0
    }  # fmt: skip


def test_sums_run_over_sequences_and_chunks():
    # two sequences, the second longer than a float64 chunk (64 rows): the result is that of the whole
    first_side, first_ref = [[1.0, 0.0]] * 3, [[1.0, 1.0]] * 3  # diff (0, -1) per row
    second_side, second_ref = [[2.0, 2.0]] * 100, [[2.0, 0.0]] * 100  # diff (0, 2) per row
    s = PointStats()
    s.add(torch.tensor(first_side), torch.tensor(first_ref))
    s.add(torch.tensor(second_side), torch.tensor(second_ref))
    dot, side_sq, ref_sq, diff_sq = 3 * 1 + 100 * 4, 3 * 1 + 100 * 8, 3 * 2 + 100 * 4, 3 * 1 + 100 * 4
    assert (s.dot, s.side_sq, s.ref_sq, s.diff_sq) == (dot, side_sq, ref_sq, diff_sq)
    assert s.tokens == 103
    assert s.cosine == pytest.approx(dot / math.sqrt(side_sq * ref_sq))
    assert s.rel_l2 == pytest.approx(math.sqrt(diff_sq / ref_sq))
    assert s.max_abs == 2.0


def test_max_abs_is_the_largest_over_every_sequence():
    s = PointStats()
    s.add(torch.tensor([[4.0, 1.0]]), torch.tensor([[1.0, 1.0]]))  # |Δ| 3
    s.add(torch.tensor([[2.0, 1.5]]), torch.tensor([[1.0, 1.0]]))  # |Δ| 1
    s.add(torch.tensor([[-1.0, 1.0]]), torch.tensor([[1.0, 1.0]]))  # |Δ| 2, of a negative difference
    assert s.max_abs == 3.0


def test_cosine_is_at_most_one_and_opposite_vectors_give_minus_one():
    same = stats([[1e-3, 3.0, 7.0]], [[1e-3, 3.0, 7.0]])
    assert same.cosine == pytest.approx(1.0) and same.cosine <= 1.0 and same.rel_l2 == 0.0
    # 1.1 x the reference: parallel, and the quotient of the sums rounds to 1.0000000000000002; it is clamped to 1
    scaled = PointStats()
    reference = torch.tensor([[-7.31, 6.95, 5.28]], dtype=torch.float64)
    scaled.add(reference * 1.1, reference)
    assert scaled.dot / math.sqrt(scaled.side_sq * scaled.ref_sq) > 1.0 and scaled.cosine == 1.0
    opposite = stats([[-1.0, -2.0]], [[1.0, 2.0]])
    assert opposite.cosine == pytest.approx(-1.0) and opposite.rel_l2 == pytest.approx(2.0)


def test_all_zero_tensors():
    both = stats([[0.0, 0.0]], [[0.0, 0.0]])
    assert both.cosine == 1.0 and both.rel_l2 == 0.0  # nothing on either side: equal
    zero_side = stats([[0.0, 0.0]], [[1.0, 2.0]])
    assert zero_side.cosine == 0.0 and zero_side.rel_l2 == 1.0
    zero_reference = stats([[0.5, 0.0]], [[0.0, 0.0]])
    assert zero_reference.cosine == 0.0 and zero_reference.rel_l2 == math.inf
    assert zero_reference.metrics()["rel_l2"] is None  # not a number JSON can hold


def test_non_finite_values_are_counted_and_left_out_of_the_sums():
    s = stats([[float("nan"), 1.0], [2.0, float("inf")]], [[2.0, 1.0], [2.0, 5.0]])
    assert s.nonfinite == 2
    # only the finite pairs (1, 1) and (2, 2) enter
    assert (s.dot, s.side_sq, s.ref_sq, s.diff_sq, s.max_abs) == (5.0, 5.0, 5.0, 0.0, 0.0)
    record = point_record("layers.0.mlp", PointPair(engine=s, floor=stats([[1.0, 1.0]], [[1.0, 1.0]])), Gate(2, 1))
    assert record["passed"] is False  # a non-finite value fails the point whatever the error


def test_a_point_within_ratio_times_floor_plus_epsilon_passes():
    # reference (4, 0); floor (4, 0.4): rel_l2 0.1; engine (4, 1): rel_l2 0.25
    record = point_record("layers.3.self_attn", pair([[4.0, 1.0]], [[4.0, 0.4]], [[4.0, 0.0]]), Gate(2.0, 0.06))
    assert record["engine"]["rel_l2"] == pytest.approx(0.25) and record["floor"]["rel_l2"] == pytest.approx(0.1)
    assert record["limit_rel_l2"] == pytest.approx(2.0 * 0.1 + 0.06)
    assert record["ratio_rel_l2"] == pytest.approx(2.5)
    assert record["passed"] is True  # 0.25 <= 0.26
    cos_e, cos_f = 16 / math.sqrt(17 * 16), 16 / math.sqrt(16.16 * 16)
    assert record["engine"]["cosine"] == pytest.approx(cos_e) and record["floor"]["cosine"] == pytest.approx(cos_f)
    assert record["ratio_cosine_distance"] == pytest.approx((1 - cos_e) / (1 - cos_f))
    assert record["engine"]["max_abs"] == 1.0 and record["floor"]["max_abs"] == pytest.approx(0.4)
    assert (record["point"], record["kind"], record["layer"], record["tokens"]) == ("layers.3.self_attn", "attention",
                                                                                   3, 1)  # fmt: skip
    tighter = point_record("layers.3.self_attn", pair([[4.0, 1.0]], [[4.0, 0.4]], [[4.0, 0.0]]), Gate(2.0, 0.04))
    assert tighter["limit_rel_l2"] == pytest.approx(0.24) and tighter["passed"] is False
    assert Gate(2.0, 0.06).limit(0.1) == pytest.approx(0.26) and Gate(3.0, 0.0).limit(0.5) == 1.5
    recorded = Gate(2.0, 0.06).as_dict()  # layers.json's "gate", which the report shows
    assert (recorded["ratio"], recorded["epsilon"]) == (2.0, 0.06)


def test_exactly_at_the_limit_passes():
    # floor identical to the reference (rel_l2 0): the limit is epsilon; engine (5) against (4): rel_l2 0.25 exactly
    at = point_record("embed", pair([[5.0]], [[4.0]], [[4.0]]), Gate(2.0, 0.25))
    assert at["floor"]["rel_l2"] == 0.0 and at["limit_rel_l2"] == 0.25 and at["engine"]["rel_l2"] == 0.25
    assert at["passed"] is True and at["ratio_rel_l2"] is None  # no ratio to a zero floor
    above = point_record("embed", pair([[5.0001]], [[4.0]], [[4.0]]), Gate(2.0, 0.25))
    assert above["passed"] is False


def test_a_floor_of_zero_lets_only_epsilon_through():
    gate = Gate(1000.0, 1e-3)
    small = point_record("norm", pair([[1.0005, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]), gate)
    large = point_record("norm", pair([[1.5, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]), gate)
    assert small["floor"]["rel_l2"] == 0.0 and small["passed"] is True
    assert large["floor"]["rel_l2"] == 0.0 and large["limit_rel_l2"] == 1e-3 and large["passed"] is False
    assert large["ratio_cosine_distance"] is None  # the floor's cosine distance is 0


def test_a_point_whose_reference_is_all_zeros_fails_when_the_engine_is_not():
    zero = [[0.0, 0.0, 0.0]]
    record = point_record("layers.0", pair([[0.0, 3.0, 0.0]], zero, zero), Gate(2.0, 1e-3))
    assert record["engine"]["rel_l2"] is None and record["passed"] is False
    both = point_record("layers.0", pair(zero, zero, zero), Gate(2.0, 1e-3))
    assert both["engine"]["rel_l2"] == 0.0 and both["passed"] is True  # all zeros everywhere: nothing differs


def test_a_point_whose_floor_is_not_measurable_fails():
    # the floor side differs from an all-zero reference: no limit can be set, the point does not pass
    record = point_record("layers.0", pair([[0.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]), Gate(2.0, 1e-3))
    assert record["floor"]["rel_l2"] is None and record["limit_rel_l2"] is None and record["passed"] is False


def points_with_errors(errors: dict[str, float], gate: Gate) -> list[dict]:
    """One record per point: engine relative L2 error as given, floor 0.1 (reference (1, 0); sides (1, x))."""
    return [
        point_record(name, pair([[1.0, error]], [[1.0, 0.1]], [[1.0, 0.0]]), gate) for name, error in errors.items()
    ]


def test_first_divergent_is_the_first_failing_point_with_the_one_before_it():
    gate = Gate(2.0, 0.0)  # limit 0.2
    points = points_with_errors({"embed": 0.1, "layers.0.self_attn": 0.2, "layers.0.mlp": 0.5, "layers.0": 0.9,
                                 "norm": 0.1}, gate)  # fmt: skip
    assert [p["passed"] for p in points] == [True, True, False, False, True]
    divergent = first_divergent(points, gate)
    assert divergent["point"] == "layers.0.mlp" and divergent["previous"] == "layers.0.self_attn"
    assert divergent["module"] == "model.layers.0.mlp" and divergent["kind"] == "mlp" and divergent["layer"] == 0
    assert divergent["ratio"] == pytest.approx(5.0)
    first = first_divergent(points_with_errors({"embed": 0.3, "layers.0.mlp": 0.5}, gate), gate)
    assert first["point"] == "embed" and first["previous"] is None  # the very first point: nothing before it
    assert first_divergent(points_with_errors({"embed": 0.1, "norm": 0.2}, gate), gate) is None
    assert first_divergent([], gate) is None


def test_summary_is_the_largest_ratio_and_where():
    points = points_with_errors({"embed": 0.1, "layers.0.mlp": 0.35, "layers.0": 0.2, "norm": 0.05}, Gate(2.0, 0.0))
    assert summary(points) == {"max_ratio_rel_l2": pytest.approx(3.5), "point": "layers.0.mlp"}
    unrated = point_record("logits", pair([[1.0]], [[1.0]], [[1.0]]), Gate(2.0, 1e-3))  # floor 0: no ratio
    assert unrated["ratio_rel_l2"] is None
    assert summary([unrated, *points]) == {"max_ratio_rel_l2": pytest.approx(3.5), "point": "layers.0.mlp"}
    assert summary([unrated]) is None and summary([]) is None


# -- the rule as it stands: the floor spans two attention implementations, and the gain gate --------------------------
# Reference (1, 0); a side (1 + a, b) has relative L2 error sqrt(a^2 + b^2) and gain a (its error along the reference).


def side_at(a: float, b: float) -> PointStats:
    return stats([[1.0 + a, b]], [[1.0, 0.0]])


def test_gain_is_the_error_along_the_reference():
    assert side_at(0.03, 0.0).gain == pytest.approx(0.03) and side_at(-0.1, 0.2).gain == pytest.approx(-0.1)
    assert stats([[3.0, 5.0]], [[3.0, 4.0]]).gain == pytest.approx((29 - 25) / 25)
    assert stats([[0.0, 0.0]], [[0.0, 0.0]]).gain == 0.0  # nothing on either side
    assert (
        stats([[0.0, 2.0]], [[0.0, 0.0]]).gain == math.inf
        and stats([[0.0, 2.0]], [[0.0, 0.0]]).metrics()["gain"] is None
    )
    assert Gate(2.0, 0.1).gain_limit(0.02, 0.1) == pytest.approx(2 * 0.02 + 0.5 * 0.1 + 0.1)  # allowance 0.5
    assert Gate(2.0, 0.1, gain_allowance=1.0).gain_limit(0.02, 0.1) == pytest.approx(0.24)


def test_the_floor_is_the_larger_of_the_two_implementations():
    gate = Gate(2.0, 0.001)
    floor, alt = side_at(0.01, 0.05), side_at(-0.05, 0.12)  # rel_l2 0.0510 / 0.13, gain 0.01 / -0.05
    engine = side_at(0.16, 0.1)  # rel_l2 sqrt(0.0356) = 0.1887, gain 0.16
    record = point_record("layers.2.self_attn", PointPair(engine=engine, floor=floor, floor_alt=alt), gate)
    rel = math.sqrt(0.0356)
    assert record["floor_rel_l2"] == pytest.approx(0.13)
    assert record["limit_rel_l2"] == pytest.approx(2 * 0.13 + 0.001)
    assert record["limit_gain"] == pytest.approx(2 * 0.05 + 0.5 * 0.13 + 0.001)  # the larger |gain| of the floors
    assert record["ratio_rel_l2"] == pytest.approx(rel / 0.13)
    assert record["margin"] == pytest.approx(max(rel / 0.261, 0.16 / 0.166))
    assert record["within_rel_l2"] is True and record["within_gain"] is True and record["passed"] is True
    # the default implementation alone understates the floor: the same engine would fail
    alone = point_record("layers.2.self_attn", PointPair(engine=engine, floor=floor), gate)
    assert alone["floor_rel_l2"] == pytest.approx(math.sqrt(0.0026)) and alone["passed"] is False


@pytest.mark.parametrize("a", [0.15, -0.15])
def test_an_error_along_the_reference_fails_the_gain_gate_within_the_relative_l2(a):
    # floor: noise across the reference only (gain 0, rel_l2 0.1); engine: a scale of 1 + a, rel_l2 0.15 <= 0.2
    record = point_record("layers.5.mlp", PointPair(engine=side_at(a, 0.0), floor=side_at(0.0, 0.1)), Gate(2.0, 0.0))
    assert record["within_rel_l2"] is True and record["limit_gain"] == pytest.approx(0.05)
    assert record["within_gain"] is False and record["passed"] is False
    assert record["margin"] == pytest.approx(0.15 / 0.05)  # the gain's, larger than the relative L2's 0.75
