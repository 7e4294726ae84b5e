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
    buckets = acc.bucket_summaries(20)
    assert buckets["before"]["n"] == 20 and buckets["after"]["n"] == 10
    assert buckets["after"] | {"positions": None} == summarize(position_values(base[20:], other[20:], targets[20:])) | {
        "positions": None
    }
    assert whole["kld"]["max"] == max(buckets["before"]["kld"]["max"], buckets["after"]["kld"]["max"])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        position_values(_logp([0.5, 0.5]), _logp([0.2, 0.3, 0.5]), torch.tensor([0]))
