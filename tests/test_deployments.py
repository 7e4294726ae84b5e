"""Deployment configurations without an engine: the configurations the config yields, which engines they share, what
this host can run, the workloads' sizing, the KV-cache rounding the reference copies, and the row verdict's rule on
known statistics. Expected values are written out here, never computed by the code under test."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from npuport.compare.deployments import verdict
from npuport.compare.floor import kv_round
from npuport.core.errors import NpuportError
from npuport.core.settings import EngineSettings
from npuport.engines.deployment import (
    DeploymentsSettings,
    HostFacts,
    cannot_run,
    configurations,
    differs,
    eager_diagnostic,
    engine_groups,
)
from npuport.engines.workloads import filler_lengths, fillers

DEPLOYED = EngineSettings.from_config({"kv_cache_memory_bytes": 1 << 26})


def test_default_matrix_and_the_engines_it_shares():
    found = configurations(DeploymentsSettings.from_config({}), DEPLOYED)
    assert [d.name for d in found] == [
        "deployed", "eager", "batch", "prefix-cache", "chunked-prefill", "tp2", "fp8-kv-cache"
    ]  # fmt: skip
    assert DEPLOYED.enforce_eager is False  # the deployed configuration is compiled, as `vllm serve` runs
    by_name = {d.name: d for d in found}
    assert by_name["eager"].engine.enforce_eager is True
    assert by_name["chunked-prefill"].engine.max_num_batched_tokens == 256
    assert by_name["batch"].workload.kind == "batch" and by_name["batch"].workload.concurrent == 8
    prefix = by_name["prefix-cache"].workload
    assert prefix.kind == "prefix_hit" and prefix.prefix_tokens == 512
    assert differs(by_name["eager"], DEPLOYED) == ["enforce_eager=true"]
    assert differs(by_name["fp8-kv-cache"], DEPLOYED) == ['kv_cache_dtype="fp8"']
    assert differs(by_name["batch"], DEPLOYED) == []
    groups = [[d.name for d in group] for _, group in engine_groups(found)]
    # one engine start per distinct setting: batch and prefix caching are workloads on the deployed engine
    assert groups == [["deployed", "batch", "prefix-cache"], ["eager"], ["chunked-prefill"], ["tp2"], ["fp8-kv-cache"]]
    # the layer comparison's engine is the eager configuration's
    assert eager_diagnostic(DEPLOYED) == by_name["eager"].engine


def test_matrix_off_and_a_repeated_name():
    assert [d.name for d in configurations(DeploymentsSettings.from_config({"enabled": False}), DEPLOYED)] == [
        "deployed"
    ]
    twice = DeploymentsSettings.from_config({"configurations": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(NpuportError, match="'a' is used twice"):
        configurations(twice, DEPLOYED)
    with pytest.raises(NpuportError):
        DeploymentsSettings.from_config({"configurations": [{"name": "a", "workload": {"kind": "spin"}}]})


@pytest.mark.parametrize(
    ("overrides", "host", "expected"),
    [
        ({"tensor_parallel_size": 2}, HostFacts(True, 1), "needs 2 NUMA nodes on the vLLM CPU backend"),
        ({"tensor_parallel_size": 2}, HostFacts(True, 2), None),
        ({"tensor_parallel_size": 2}, HostFacts(False, 1, platform="npu"), "needs 2 npu devices; 1 visible"),
        ({"tensor_parallel_size": 2}, HostFacts(False, 2, platform="npu"), None),
        ({"kv_cache_dtype": "fp8"}, HostFacts(True, 1, frozenset({"avx2"})), "needs AVX-512 or AMX"),
        ({"kv_cache_dtype": "fp8"}, HostFacts(True, 1, frozenset({"avx512f"})), None),
        ({"kv_cache_dtype": "fp8"}, HostFacts(True, 1, frozenset({"amx_tile"})), None),
        ({"kv_cache_dtype": "fp8"}, HostFacts(False, 1, platform="cuda"), None),
    ],
)
def test_what_this_host_can_run(overrides, host, expected):
    reason = cannot_run(DEPLOYED.with_overrides(overrides), host)
    assert reason is None if expected is None else expected in reason


def test_batch_fillers_fit_the_step():
    assert filler_lengths(100, 4) == [10, 20, 30, 40]  # 1 + 2 + 3 + 4 parts of 100
    assert filler_lengths(3072, 7) == [109, 219, 329, 438, 548, 658, 768]
    assert sum(filler_lengths(7, 4)) <= 7  # too little room: fewer sequences, never more tokens than the step has
    made = fillers(list(range(50)), [3, 5], bos=1)
    assert [len(m) for m in made] == [3, 5] and all(m[0] == 1 for m in made)


def _e4m3_toward_zero(value: float) -> float:
    """vLLM's CPU conversion (csrc/cpu/cpu_attn_fp8.hpp), re-done on the bits: clamp, scale by 2^-120, keep sign and
    the 7 payload bits above bit 20, scale back."""
    v = max(-448.0, min(448.0, value))
    if v == 0.0:
        return 0.0
    bits = struct.unpack("<I", struct.pack("<f", v * 2.0**-120))[0]
    sign, payload = (bits >> 24) & 0x80, min((bits >> 20) & 0x7F, 0x7E)
    if payload == 0:
        return 0.0
    back = struct.unpack("<f", struct.pack("<I", (sign << 24) | (payload << 20)))[0]
    return back * 2.0**120


def test_kv_cache_rounding_as_each_platform_stores_it():
    values = torch.tensor([1.1, 1.99, -1.99, 500.0, -500.0, 0.001, 0.003, 0.3, 17.3, -0.07, 240.5])
    toward_zero = kv_round(values, "fp8", "toward zero")
    expected = torch.tensor([_e4m3_toward_zero(float(v)) for v in values.tolist()])
    assert torch.equal(toward_zero, expected), (toward_zero, expected)
    assert toward_zero[:5].tolist() == [1.0, 1.875, -1.875, 448.0, -448.0]  # written out: 3 mantissa bits, saturated
    random = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 30
    again = torch.tensor([_e4m3_toward_zero(float(v)) for v in random.tolist()])
    assert torch.equal(kv_round(random, "fp8", "toward zero"), again)
    # CUDA / NPU round to nearest even: torch's own float8 casts are the independent answer
    assert torch.equal(kv_round(random, "fp8_e4m3", "to nearest even"), random.to(torch.float8_e4m3fn).float())
    assert torch.equal(kv_round(random, "fp8_e5m2", "to nearest even"), random.to(torch.float8_e5m2).float())
    assert kv_round(torch.tensor([1.3]), "fp8_e5m2", "toward zero").item() == 1.25  # 2 mantissa bits: 1.25, 1.5


def _summary(mean_kld: float, p99: float, same_top1: float, rms: float, n: int = 1000) -> dict:
    return {"n": n, "kld": {"mean": mean_kld, "p99": p99}, "same_top1": {"p": same_top1}, "delta_p": {"rms": rms}}


FLOOR = _summary(1e-3, 1e-2, 0.99, 1e-2)
# at the floor: within every limit (limits: 2 x floor + eps = 0.002001, 0.02001, 0.025, 0.0201)
AT_FLOOR = _summary(1e-3, 1e-2, 0.99, 1e-2)
WORSE = _summary(3e-3, 3e-2, 0.99, 1e-2)  # mean and p99 KLD 3x the floor: fails two gates
ZERO = _summary(0.0, 0.0, 1.0, 0.0)
SPREAD = _summary(1e-3, 1e-2, 0.99, 1e-2)


def _sides(engine, deployed, differential, spread=SPREAD, floor=FLOOR):
    return {"engine": engine, "floor": floor, "deployed": deployed, "deployed_floor": FLOOR,
            "differential": differential, "spread": spread}  # fmt: skip


def test_row_passes_when_it_agrees_with_the_deployed_configuration():
    result = verdict(_sides(AT_FLOOR, AT_FLOOR, ZERO), ratio=2.0, ratios={})
    assert result["status"] == "passed" and result["reason"] is None and result["fault_on"] is None
    assert [g["threshold"] for g in result["gates"]] == [
        "eval_mean_kld", "eval_p99_kld", "eval_top1_disagreement", "eval_rms_delta_p"
    ]  # fmt: skip
    assert result["gates"][0]["limit"] == pytest.approx(2 * 1e-3 + 1e-6)


def test_row_fails_where_the_deployed_configuration_passes():
    result = verdict(_sides(WORSE, AT_FLOOR, _summary(2e-3, 2e-2, 0.99, 1e-2)), ratio=2.0, ratios={})
    assert result["status"] == "failed" and result["fault_on"] == "this configuration"
    assert "fails where the deployed configuration passes: eval_mean_kld, eval_p99_kld" in result["reason"]
    assert result["margin"] == pytest.approx(3e-3 / (2e-3 + 1e-6))


def test_deployed_failing_where_the_row_passes_is_the_deployed_paths_fault():
    result = verdict(_sides(AT_FLOOR, WORSE, _summary(1.5e-3, 1e-2, 0.99, 1e-2)), ratio=2.0, ratios={})
    assert result["status"] == "failed" and result["fault_on"] == "the deployed configuration"
    assert "the deployed configuration fails where this one passes: eval_mean_kld, eval_p99_kld" in result["reason"]


def test_a_row_with_a_floor_of_its_own_does_not_blame_the_deployed_path():
    # an fp8 KV cache has a wider floor: the deployed configuration failing where it passes is below its precision
    wide = _summary(1e-1, 1.0, 0.9, 1e-1)
    result = verdict(_sides(_summary(2e-2, 0.2, 0.95, 2e-2), WORSE, _summary(2e-2, 0.2, 0.95, 2e-2), spread=wide,
                            floor=wide), ratio=2.0, ratios={}, own_floor=True)  # fmt: skip
    assert result["status"] == "passed", result["reason"]
    same = verdict(_sides(_summary(2e-2, 0.2, 0.95, 2e-2), WORSE, ZERO, floor=wide), ratio=2.0, ratios={})
    assert same["fault_on"] == "the deployed configuration"  # without a floor of its own it would


def test_a_fault_both_share_is_not_the_rows():
    result = verdict(_sides(WORSE, WORSE, ZERO), ratio=2.0, ratios={})
    assert result["status"] == "passed" and result["shared_failures"] == ["eval_mean_kld", "eval_p99_kld"]


def test_a_difference_beyond_the_spread_fails_even_within_the_floor():
    # both within 2x the floor, but 3x the spread apart: a change the same computation rearranged never makes
    result = verdict(_sides(AT_FLOOR, AT_FLOOR, _summary(3e-3, 1e-2, 0.99, 1e-2)), ratio=2.0, ratios={})
    assert result["status"] == "failed" and result["fault_on"] == "the difference between them"
    assert result["reason"] == "differs from the deployed configuration beyond the spread: eval_mean_kld"
    # a spread of 0 (the engine at the reference's own dtype) leaves epsilon alone as the allowance
    tiny = verdict(_sides(AT_FLOOR, AT_FLOOR, _summary(2e-6, 0, 1.0, 0), spread=ZERO), ratio=2.0, ratios={})
    assert tiny["status"] == "failed" and "eval_mean_kld" in tiny["reason"]  # 2e-6 > 0 x 2 + 1e-6


def test_summaries_are_the_statistics_module_s():
    """The rule reads the keys compare.statistics.summarize writes (a renamed key would read as not measured)."""
    from npuport.compare.statistics import summarize

    values = {"kld": np.full(20, 1e-3), "same_top": np.ones(20, bool), "p_diff": np.full(20, 0.01),
              "nll_base": np.ones(20), "nll_other": np.ones(20)}  # fmt: skip
    summary = summarize(values)
    result = verdict(_sides(summary, summary, summary, spread=summary, floor=summary), ratio=2.0, ratios={})
    assert len(result["gates"]) == 4 and len(result["differential"]["gates"]) == 4
    assert math.isclose(result["gates"][3]["value"], 0.01)
