"""The full-distribution statistics against hand-computed answers (llama.cpp's --kl-divergence conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npuport.compare.statistics import (
    KldAccumulator,
    mean_and_uncertainty,
    percentile,
    position_values,
    proportion_and_uncertainty,
    summarize,
)


def _logp(*rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_kld_same_top_and_delta_p_of_two_token_distributions():
    base, other = _logp([0.5, 0.5], [0.2, 0.8]), _logp([0.9, 0.1], [0.2, 0.8])
    values = position_values(base, other, torch.tensor([1, 0]))
    # 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    assert values["kld"][0] == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5), rel=1e-12)
    assert values["kld"][0] == pytest.approx(0.510826, abs=1e-6)
    assert values["kld"][1] == pytest.approx(0.0, abs=1e-15)
    # base argmax is a tie (first index) at row 0: both pick token 0; row 1 both pick token 1
    assert values["same_top"].tolist() == [True, True]
    assert values["p_diff"].tolist() == pytest.approx([0.1 - 0.5, 0.2 - 0.2])
    assert values["nll_base"].tolist() == pytest.approx([-math.log(0.5), -math.log(0.2)])
    assert values["nll_other"].tolist() == pytest.approx([-math.log(0.1), -math.log(0.2)])


def test_kld_is_not_symmetric_and_uses_the_base_as_p():
    p, q = _logp([0.7, 0.2, 0.1]), _logp([0.1, 0.2, 0.7])
    forward = position_values(p, q, torch.tensor([0]))["kld"][0]
    expected = 0.7 * math.log(7) + 0.2 * math.log(1) + 0.1 * math.log(1 / 7)
    assert forward == pytest.approx(expected, rel=1e-12)
    other_way = _logp([0.6, 0.3, 0.1]), _logp([0.3, 0.3, 0.4])
    a = position_values(*other_way, torch.tensor([0]))["kld"][0]
    b = position_values(other_way[1], other_way[0], torch.tensor([0]))["kld"][0]
    assert a != pytest.approx(b)


def test_a_different_argmax_is_counted():
    values = position_values(_logp([0.6, 0.4]), _logp([0.4, 0.6]), torch.tensor([0]))
    assert values["same_top"].tolist() == [False]


def test_standard_errors_follow_llama_cpp():
    values = np.array([0.0] * 6 + [1.0] * 6)
    mean, se = mean_and_uncertainty(values)
    assert mean == 0.5 and se == pytest.approx(math.sqrt(0.25 / 11))
    assert mean_and_uncertainty(np.array([0.0, 1.0] * 5)) == (0.5, 0.0)  # 10 values or fewer: no uncertainty
    p, se = proportion_and_uncertainty(9, 12)
    assert p == 0.75 and se == pytest.approx(math.sqrt(0.75 * 0.25 / 11))


def test_percentiles_interpolate_linearly():
    values = np.array([4.0, 1.0, 3.0, 2.0])
    assert percentile(values, 0.9) == pytest.approx(3.7)
    assert percentile(values, 0.5) == pytest.approx(2.5)
    assert percentile(values, 0.999) == pytest.approx(1 + 0.999 * 3)


def test_summary_of_identical_sides_is_zero_and_ppl_ratio_of_a_shift_is_exact():
    torch.manual_seed(0)
    logits = torch.randn(40, 7, dtype=torch.float64)
    base = torch.log_softmax(logits, -1)
    targets = torch.randint(0, 7, (40,))
    same = summarize(position_values(base, base, targets))
    assert same["n"] == 40 and same["kld"]["mean"] == pytest.approx(0.0, abs=1e-15)
    assert same["same_top1"] == {"p": 1.0, "se": 0.0}
    assert same["delta_p"]["rms"] == 0.0 and same["perplexity"]["ln_ratio"] == pytest.approx(0.0, abs=1e-15)
    values = position_values(base, base, targets)
    values["nll_other"] = values["nll_base"] + 0.25  # every NLL 0.25 higher: ln ratio 0.25, no uncertainty
    shifted = summarize(values)
    assert shifted["perplexity"]["ln_ratio"] == pytest.approx(0.25)
    assert shifted["perplexity"]["ln_ratio_se"] == pytest.approx(0.0, abs=1e-7)
    assert shifted["perplexity"]["other"] / shifted["perplexity"]["base"] == pytest.approx(math.exp(0.25))
    assert shifted["abs_delta_logprob"] == pytest.approx({"mean": 0.25, "max": 0.25})


def test_chunks_and_buckets_give_the_statistics_of_the_whole():
    torch.manual_seed(1)
    base = torch.log_softmax(torch.randn(30, 11, dtype=torch.float64), -1)
    other = torch.log_softmax(torch.log_softmax(base, -1) + 0.3 * torch.randn(30, 11, dtype=torch.float64), -1)
    targets = torch.randint(0, 11, (30,))
    whole = summarize(position_values(base, other, targets))
    acc = KldAccumulator()
    for start in (0, 12, 25):
        end = {0: 12, 12: 25, 25: 30}[start]
        acc.add(base[start:end], other[start:end], targets[start:end], range(start, end))
    assert acc.summary() == whole
    # and the whole is llama.cpp's statistics of those positions (computed apart, below), not just self-consistent
    reference = _llama_cpp_statistics(position_values(base, other, targets))
    assert whole["kld"] == pytest.approx(reference["kld"]) and whole["delta_p"] == pytest.approx(reference["delta_p"])
    buckets = acc.bucket_summaries(20)
    assert buckets["before"]["n"] == 20 and buckets["after"]["n"] == 10
    assert buckets["after"] | {"positions": None} == summarize(position_values(base[20:], other[20:], targets[20:])) | {
        "positions": None
    }
    assert whole["kld"]["max"] == max(buckets["before"]["kld"]["max"], buckets["after"]["kld"]["max"])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        position_values(_logp([0.5, 0.5]), _logp([0.2, 0.3, 0.5]), torch.tensor([0]))


# -- summarize() against answers computed without it -----------------------------------------------------------------


def _llama_cpp_statistics(values: dict) -> dict:
    """llama-perplexity's kl_divergence() (tools/perplexity/perplexity.cpp) written out in plain Python: running sums
    and counts, its mean_and_uncertainty (0 at 10 positions or fewer), covariance (0 below 10 positions), its
    percentile lambda (linear between ranks at fraction x (n - 1)) and its median. An independent reference for
    summarize(). One difference on purpose: where the ratio's variance comes out negative (10 positions: the
    covariance counted, no standard error yet), llama.cpp prints nan and summarize() gives 0."""
    kld, dp = [float(x) for x in values["kld"]], [float(x) for x in values["p_diff"]]
    nll, nll_base = [float(x) for x in values["nll_other"]], [float(x) for x in values["nll_base"]]
    n = len(kld)

    def mean_unc(total: float, total2: float) -> tuple[float, float]:
        f = total / n
        df = total2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    def covariance(a: list[float], b: list[float]) -> float:
        if n < 10:
            return 0.0
        return (sum(x * y for x, y in zip(a, b, strict=True)) / n - (sum(a) / n) * (sum(b) / n)) / (n - 1)

    def pct(v: list[float], fraction: float) -> float:
        v = sorted(v)
        p = fraction * (len(v) - 1)
        ip = int(p)
        p -= ip
        return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]

    def median(v: list[float]) -> float:
        v = sorted(v)
        return 0.5 * (v[n // 2] + v[n // 2 - 1]) if n % 2 == 0 else v[n // 2]

    kld_mean, kld_se = mean_unc(sum(kld), sum(x * x for x in kld))
    dp_mean, dp_se = mean_unc(sum(dp), sum(x * x for x in dp))
    mse, mse_se = mean_unc(sum(x * x for x in dp), sum(x**4 for x in dp))
    log_ppl, log_ppl_se = mean_unc(sum(nll), sum(x * x for x in nll))
    log_ppl_base, log_ppl_base_se = mean_unc(sum(nll_base), sum(x * x for x in nll_base))
    same = sum(bool(x) for x in values["same_top"]) / n
    ratio_var = log_ppl_se**2 + log_ppl_base_se**2 - 2 * covariance(nll, nll_base)
    return {
        "kld": {"mean": kld_mean, "se": kld_se, "median": median(kld), "p90": pct(kld, 0.9), "p99": pct(kld, 0.99),
                "p99_9": pct(kld, 0.999), "max": max(kld)},
        "same_top1": {"p": same, "se": math.sqrt(same * (1 - same) / (n - 1))},
        "delta_p": {"mean": dp_mean, "se": dp_se, "rms": math.sqrt(mse), "rms_se": 0.5 / math.sqrt(mse) * mse_se,
                    "p1": pct(dp, 0.01), "median": median(dp), "p99": pct(dp, 0.99)},
        "perplexity": {"base": math.exp(log_ppl_base), "other": math.exp(log_ppl), "ln_ratio": log_ppl - log_ppl_base,
                       "ln_ratio_se": math.sqrt(max(ratio_var, 0.0))},
        "abs_delta_logprob": {"mean": sum(abs(a - b) for a, b in zip(nll, nll_base, strict=True)) / n,
                              "max": max(abs(a - b) for a, b in zip(nll, nll_base, strict=True))},
    }  # fmt: skip


def test_summary_of_twenty_positions_by_hand():
    kld = np.array([k / 100 for k in (7, 0, 19, 3, 12, 5, 16, 1, 9, 14, 2, 18, 6, 11, 4, 17, 8, 13, 10, 15)])
    p_diff = np.array([0.1] * 12 + [-0.3] * 8)
    nll_base = np.full(20, 2.0)
    nll_other = nll_base + np.array([0.5, -0.25] * 10)
    same = np.array([True] * 15 + [False] * 5)
    s = summarize({"kld": kld, "p_diff": p_diff, "nll_base": nll_base, "nll_other": nll_other, "same_top": same})
    assert s["n"] == 20
    # KLD 0.00 .. 0.19: mean 0.095, sum of squares / n = 0.01235, var 0.003325, se sqrt(0.003325 / 19)
    assert s["kld"]["mean"] == pytest.approx(0.095, rel=1e-12)
    assert s["kld"]["se"] == pytest.approx(math.sqrt(1.75e-4), rel=1e-9)
    # linear between ranks at fraction x 19: median 9.5 -> 0.095, p90 17.1 -> 0.171, p99 18.81, p99.9 18.981
    assert s["kld"]["median"] == pytest.approx(0.095)
    assert s["kld"]["p90"] == pytest.approx(0.171)
    assert s["kld"]["p99"] == pytest.approx(0.1881)
    assert s["kld"]["p99_9"] == pytest.approx(0.18981)
    assert s["kld"]["max"] == 0.19
    assert s["same_top1"]["p"] == 0.75 and s["same_top1"]["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 19))
    # Δp: 12 x 0.1 and 8 x -0.3: mean -0.06, mean square 0.042 (RMS 0.2049, not |mean| 0.06), var 0.0384
    assert s["delta_p"]["mean"] == pytest.approx(-0.06)
    assert s["delta_p"]["se"] == pytest.approx(math.sqrt(0.0384 / 19))
    assert s["delta_p"]["rms"] == pytest.approx(math.sqrt(0.042))
    # the mean square's own spread: mean of fourth powers 0.0033, var 0.0033 - 0.042^2 = 0.001536
    assert s["delta_p"]["rms_se"] == pytest.approx(0.5 / math.sqrt(0.042) * math.sqrt(0.001536 / 19))
    assert s["delta_p"]["p1"] == pytest.approx(-0.3) and s["delta_p"]["median"] == pytest.approx(0.1)
    assert s["delta_p"]["p99"] == pytest.approx(0.1)
    # NLL other - base alternates +0.5 / -0.25: ln ratio 0.125; |Δ| mean 0.375, max 0.5
    assert s["perplexity"]["ln_ratio"] == pytest.approx(0.125)
    assert s["perplexity"]["base"] == pytest.approx(math.exp(2.0)) and s["perplexity"]["other"] == pytest.approx(
        math.exp(2.125)
    )
    # the base is constant (no spread, no covariance): the ratio's se is the other side's, sqrt(0.140625 / 19)
    assert s["perplexity"]["ln_ratio_se"] == pytest.approx(math.sqrt(0.140625 / 19))
    assert s["abs_delta_logprob"] == pytest.approx({"mean": 0.375, "max": 0.5})


@pytest.mark.parametrize("n", [9, 10, 11, 25, 400])
def test_summary_equals_llama_cpps_statistics(n):
    rng = np.random.default_rng(n)
    nll_base = rng.gamma(2.0, 1.0, n)
    values = {
        "kld": rng.exponential(0.01, n),
        "p_diff": rng.normal(0.002, 0.03, n),
        "nll_base": nll_base,
        "nll_other": nll_base * (1 + rng.normal(0, 0.2, n)) + 0.05,  # correlated with the base
        "same_top": rng.random(n) < 0.9,
    }
    expected = _llama_cpp_statistics(values)
    got = summarize(values)
    assert got["n"] == n
    for part, fields in expected.items():
        for name, value in fields.items():
            assert got[part][name] == pytest.approx(value, rel=1e-9, abs=1e-15), (part, name)


def test_the_ratios_uncertainty_counts_the_covariance_from_ten_positions():
    # anti-correlated NLLs: the covariance is negative, so counting it raises the uncertainty
    nll_base = np.array([1.0, 2.0] * 5)
    values = {"kld": np.zeros(10), "p_diff": np.zeros(10), "same_top": np.ones(10, bool), "nll_base": nll_base,
              "nll_other": 3.0 - nll_base}  # fmt: skip
    # 10 positions: no standard error of either side yet (llama.cpp: > 10), but the covariance (>= 10):
    # mean(o x b) = 2, mean o = mean b = 1.5 -> cov = (2 - 2.25) / 9
    assert summarize(values)["perplexity"]["ln_ratio_se"] == pytest.approx(math.sqrt(-2 * (2 - 2.25) / 9))
    nine = {key: value[:9] for key, value in values.items()}
    assert summarize(nine)["perplexity"]["ln_ratio_se"] == 0.0
    assert summarize(nine)["kld"]["se"] == 0.0 and summarize(nine)["delta_p"]["rms_se"] == 0.0


def test_kld_percentiles_are_the_ones_llama_cpp_prints():
    from npuport.compare.statistics import DP_PERCENTILES, KLD_PERCENTILES

    assert KLD_PERCENTILES == {"median": 0.5, "p90": 0.9, "p99": 0.99, "p99_9": 0.999}
    assert DP_PERCENTILES == {"p1": 0.01, "median": 0.5, "p99": 0.99}


def test_nothing_to_summarize():
    assert summarize({}) == {"n": 0}
    assert summarize({"kld": np.zeros(0), "p_diff": np.zeros(0)}) == {"n": 0}
    assert math.isnan(percentile(np.zeros(0), 0.5))
    assert all(math.isnan(x) for x in mean_and_uncertainty(np.zeros(0)))
    assert all(math.isnan(x) for x in proportion_and_uncertainty(0, 0))
    assert proportion_and_uncertainty(1, 1) == (1.0, 0.0)
    assert proportion_and_uncertainty(1, 2) == (0.5, 0.5)  # sqrt(0.25 / 1): no minimum count, as llama.cpp


def test_a_bucket_boundary_position_belongs_to_the_after_bucket():
    base = torch.log_softmax(torch.tensor([[2.0, 0.0]] * 4, dtype=torch.float64), -1)
    other = torch.log_softmax(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 3.0]], dtype=torch.float64), -1)
    acc = KldAccumulator()
    acc.add(base, other, torch.tensor([0, 0, 0, 0]), [0, 1, 2, 3])
    klds = position_values(base, other, torch.tensor([0, 0, 0, 0]))["kld"]
    buckets = acc.bucket_summaries(2)
    assert (buckets["before"]["positions"], buckets["after"]["positions"]) == ("< 2", ">= 2")
    assert buckets["before"]["n"] == 2 and buckets["after"]["n"] == 2
    assert buckets["before"]["kld"]["mean"] == pytest.approx((klds[0] + klds[1]) / 2)
    assert buckets["after"]["kld"]["mean"] == pytest.approx((klds[2] + klds[3]) / 2)
    assert buckets["after"]["kld"]["max"] == pytest.approx(klds[3]) and klds[3] > klds[2]
    assert buckets["before"]["same_top1"]["p"] == 1.0 and buckets["after"]["same_top1"]["p"] == 0.5
