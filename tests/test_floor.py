"""The noise floor's computation (npuport.compare.floor) on small known logits, without an engine: which side is the
base, which tokens are the targets, that the floor is the low-precision reference's own logits (not the engine's),
the dtype the engine computed in, and a real (tiny) transformers model behind ``Reference``. Expected statistics
come from numpy, written here, not from the statistics module."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from npuport.compare.floor import (
    CDF_POINTS,
    Reference,
    engine_dtype,
    evaluate_segments,
    kld_quantiles,
    low_precision_logits,
)
from npuport.compare.statistics import KldAccumulator

VOCAB = 11


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class TableReference:
    """A stand-in for the full-precision reference: token t's next-token logits are row t of a fixed table."""

    def __init__(self, seed: int = 0):
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2

    def logits(self, ids) -> torch.Tensor:
        return self.table[torch.tensor(list(ids))]

    def logprobs(self, ids) -> torch.Tensor:
        return torch.log_softmax(self.logits(ids).float(), dim=-1)


def expected(base: np.ndarray, other_logits: np.ndarray, targets: list[int]) -> dict:
    """llama.cpp's per-position values by hand: KLD(base || other), same top-1, Δp of the target, NLLs."""
    p_log, q_log = base.astype(np.float64), np_log_softmax(other_logits.astype(np.float32))
    rows = np.arange(len(targets))
    kld = (np.exp(p_log) * (p_log - q_log)).sum(-1)
    p_t, q_t = np.exp(p_log[rows, targets]), np.exp(q_log[rows, targets])
    return {"kld": kld, "same": p_log.argmax(-1) == q_log.argmax(-1), "dp": q_t - p_t,
            "nll_base": -p_log[rows, targets], "nll_other": -q_log[rows, targets]}  # fmt: skip


def concat(parts: list[dict]) -> dict:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


@pytest.fixture
def segments():
    generator = torch.Generator().manual_seed(3)
    # one short segment and one longer than a statistics chunk (128 rows), so chunking is exercised
    short = [int(t) for t in torch.randint(0, VOCAB, (7,), generator=generator)]
    long = [int(t) for t in torch.randint(0, VOCAB, (300,), generator=generator)]
    return [short, long]


def test_engine_and_floor_are_each_scored_against_the_full_precision_reference(segments):
    full = TableReference()
    generator = torch.Generator().manual_seed(5)
    # the engine: the reference's logits plus noise, all positions (the last one is dropped by the scoring)
    engine = [full.logits(ids).float() + 0.7 * torch.randn(len(ids), VOCAB, generator=generator) for ids in segments]
    # the floor: the reference at bfloat16 with other noise, positions 0..n-2 as low_precision_logits gives them
    low = [(full.logits(ids[:-1]) + 0.2 * torch.randn(len(ids) - 1, VOCAB, generator=generator)).bfloat16()
           for ids in segments]  # fmt: skip
    accumulators = evaluate_segments(full, segments, low_logits=low, engine_logits=lambda i: engine[i])
    assert set(accumulators) == {"engine", "floor"}
    base = [full.logprobs(ids)[:-1].double().numpy() for ids in segments]
    targets = [ids[1:] for ids in segments]
    for side, logits in (("engine", [e[:-1].numpy() for e in engine]), ("floor", [x.float().numpy() for x in low])):
        want = concat([expected(b, o, t) for b, o, t in zip(base, logits, targets, strict=True)])
        got = accumulators[side].values()
        assert len(got["kld"]) == 6 + 299, side  # every position but each segment's last, once
        np.testing.assert_allclose(got["kld"], want["kld"], rtol=1e-5, atol=1e-6, err_msg=side)
        np.testing.assert_array_equal(got["same_top"], want["same"], err_msg=side)
        np.testing.assert_allclose(got["p_diff"], want["dp"], rtol=1e-5, atol=1e-6, err_msg=side)
        np.testing.assert_allclose(got["nll_base"], want["nll_base"], rtol=1e-6, err_msg=side)
        np.testing.assert_allclose(got["nll_other"], want["nll_other"], rtol=1e-5, atol=1e-6, err_msg=side)
        summary = accumulators[side].summary()
        assert summary["kld"]["mean"] == pytest.approx(float(want["kld"].mean()), rel=1e-5)
        assert summary["same_top1"]["p"] == pytest.approx(float(want["same"].mean()))
    # the two sides are different numbers: the floor is not the engine scored twice
    engine_kld, floor_kld = accumulators["engine"].values()["kld"], accumulators["floor"].values()["kld"]
    assert engine_kld.mean() > 5 * floor_kld.mean()


def test_positions_restart_at_every_segment(segments):
    full = TableReference()
    low = [full.logits(ids[:-1]).bfloat16() for ids in segments]
    accumulators = evaluate_segments(full, segments, low_logits=low, engine_logits=lambda i: full.logits(segments[i]))
    buckets = accumulators["floor"].bucket_summaries(3)
    assert buckets["before"]["n"] == 3 + 3 and buckets["after"]["n"] == (6 - 3) + (299 - 3)
    # the engine here is the reference itself at float32: nothing between them
    assert accumulators["engine"].summary()["kld"]["max"] == pytest.approx(0.0, abs=1e-6)


def test_engine_logits_of_another_length_are_refused(segments):
    full = TableReference()
    low = [full.logits(ids[:-1]) for ids in segments]
    with pytest.raises(ValueError, match="segment 0: engine logits for 5 positions, segment has 7"):
        evaluate_segments(full, segments, low_logits=low, engine_logits=lambda i: torch.zeros(5, VOCAB))


def test_low_precision_logits_keep_the_dtype_and_drop_the_last_position():
    class Low(TableReference):
        def logits(self, ids):
            return super().logits(ids).bfloat16()

    reference = Low()
    out = low_precision_logits(reference, [[1, 2, 3, 4], [5, 6]])
    assert [tuple(t.shape) for t in out] == [(3, VOCAB), (1, VOCAB)]
    assert all(t.dtype == torch.bfloat16 for t in out)
    assert torch.equal(out[0], reference.table[[1, 2, 3]].bfloat16()) and torch.equal(
        out[1], reference.table[[5]].bfloat16()
    )


def test_kld_quantiles_are_the_cdf_at_every_percent():
    squares = [(k / 10) ** 2 for k in range(11)]  # 0, 0.01, 0.04, ..., 1: not evenly spaced
    accumulator = KldAccumulator(parts={"kld": [np.array(squares[:4]), np.array(squares[4:])]})
    quantiles = kld_quantiles(accumulator)
    assert CDF_POINTS == 101 and len(quantiles) == 101

    def by_hand(percent: int) -> float:  # linear between ranks: rank percent / 100 x 10
        rank = percent / 10
        low = int(rank)
        return (1 - (rank - low)) * squares[low] + (rank - low) * squares[min(low + 1, 10)]

    assert quantiles == pytest.approx([by_hand(j) for j in range(101)])
    assert quantiles[50] == pytest.approx(0.25) and quantiles[55] == pytest.approx(0.305)
    assert kld_quantiles(KldAccumulator(parts={"kld": [np.zeros(0)]})) == []


def test_every_segment_is_also_handed_to_another_scorer(segments):
    full = TableReference()
    engine = [full.logits(ids).float() * 0.5 for ids in segments]
    low = [full.logits(ids[:-1]).bfloat16() for ids in segments]
    seen = []
    evaluate_segments(full, segments, low_logits=low, engine_logits=lambda i: engine[i],
                      also=lambda i, base, other: seen.append((i, base, other)))  # fmt: skip
    assert [i for i, _, _ in seen] == [0, 1]
    for (i, base, other), ids in zip(seen, segments, strict=True):
        assert torch.equal(base, full.logprobs(ids)[:-1]) and torch.equal(other, engine[i][:-1])


@pytest.mark.parametrize(
    ("setting", "config", "dtype"),
    [
        ("bfloat16", {"torch_dtype": "float16"}, "bfloat16"),  # an explicit setting wins over the checkpoint
        ("float32", {}, "float32"),
        ("auto", {"torch_dtype": "bfloat16"}, "bfloat16"),  # vLLM's auto: the checkpoint's own
        ("auto", {"torch_dtype": "torch.float16"}, "float16"),
        ("auto", {"dtype": "bfloat16"}, "bfloat16"),  # transformers 5 writes "dtype"
        ("auto", {}, "float32"),
        ("auto", {"torch_dtype": None}, "float32"),
    ],
)
def test_engine_dtype(setting, config, dtype):
    assert engine_dtype(setting, config) == dtype


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=VOCAB * 3, max_position_embeddings=64)  # fmt: skip
    directory = tmp_path_factory.mktemp("tiny-reference")
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_reference_scores_every_position_at_its_dtype(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    full = Reference(tiny_model_dir, "float32")
    got = full.logits(ids)
    assert got.dtype == torch.float32 and tuple(got.shape) == (len(ids), VOCAB * 3)
    np.testing.assert_allclose(got.numpy(), logits, rtol=1e-5, atol=1e-6)
    logprobs = full.logprobs(ids)
    assert logprobs.dtype == torch.float32
    np.testing.assert_allclose(logprobs.numpy(), np_log_softmax(logits), rtol=1e-5, atol=1e-5)
    low = Reference(tiny_model_dir, "bfloat16")
    assert low.dtype == "bfloat16" and low.logits(ids).dtype == torch.bfloat16
    assert low.logprobs(ids).dtype == torch.float32


def test_reference_loads_no_remote_code_unless_asked(monkeypatch, tmp_path):
    import transformers

    calls = []

    class Loaded:
        config = SimpleNamespace(_attn_implementation="sdpa")

        def eval(self):
            return self

    def from_pretrained(path, **kwargs):
        calls.append((path, kwargs))
        return Loaded()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    Reference(tmp_path)
    Reference(tmp_path, "bfloat16", trust_remote_code=True)
    assert calls == [(tmp_path, {"dtype": torch.float32, "trust_remote_code": False}),
                     (tmp_path, {"dtype": torch.bfloat16, "trust_remote_code": True})]  # fmt: skip
