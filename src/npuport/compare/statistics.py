"""Full-distribution statistics of one side against a base, in llama.cpp's `--kl-divergence` conventions.

Per position, with the base's (reference's) distribution P and the other side's Q over the whole vocabulary:
KLD = sum P (ln P - ln Q); same top-1 = argmax P == argmax Q; Δp = Q(t) - P(t) for the actual next token t;
NLL of t on both sides (perplexity). Positions are added chunk by chunk (``KldAccumulator.add``), so the
full vocabulary over thousands of positions never has to be in memory at once; the per-position values
kept for percentiles are four floats a position.

Uncertainties as llama.cpp's tools/perplexity prints them: mean ± sqrt(var / (n - 1)) (0 below 11
positions), same top-1 ± sqrt(p (1 - p) / (n - 1)), the ln-PPL ratio with the covariance of both NLLs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

# Percentiles reported for KLD and Δp (fractions), as llama-perplexity prints them.
KLD_PERCENTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p99_9": 0.999}
DP_PERCENTILES = {"p1": 0.01, "median": 0.5, "p99": 0.99}


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error as llama.cpp computes it (0 for 10 values or fewer)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = float(np.mean(values))
    var = float(np.mean(np.square(values))) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def proportion_and_uncertainty(hits: int, n: int) -> tuple[float, float]:
    """A proportion and sqrt(p (1 - p) / (n - 1))."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def percentile(values: np.ndarray, fraction: float) -> float:
    """Linear interpolation between the two nearest ranks (llama.cpp's and numpy's default)."""
    return float(np.percentile(values, 100 * fraction)) if len(values) else math.nan


def position_values(
    base_logprobs: torch.Tensor, other_logprobs: torch.Tensor, targets: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per position of one chunk: KLD(base || other), same top-1, Δp of the target, both NLLs.

    ``*_logprobs``: [positions, vocab] log-probabilities (log-softmax already applied); ``targets``: the
    next token at each position. Computed in float64.
    """
    base, other = base_logprobs.double(), other_logprobs.double()
    if base.shape != other.shape or base.shape[0] != targets.shape[0]:
        raise ValueError(f"shapes differ: base {tuple(base.shape)}, other {tuple(other.shape)}, {len(targets)} targets")
    kld = torch.sum(torch.exp(base) * (base - other), dim=-1)
    index = targets.long().unsqueeze(-1)
    base_t, other_t = base.gather(-1, index).squeeze(-1), other.gather(-1, index).squeeze(-1)
    return {
        "kld": kld.numpy(),
        "same_top": (base.argmax(-1) == other.argmax(-1)).numpy(),
        "p_diff": (torch.exp(other_t) - torch.exp(base_t)).numpy(),
        "nll_base": (-base_t).numpy(),
        "nll_other": (-other_t).numpy(),
    }


@dataclass
class KldAccumulator:
    """Per-position values of several chunks; ``summary()`` gives the statistics over all of them."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    positions: list[np.ndarray] = field(default_factory=list)

    def add(self, base_logprobs, other_logprobs, targets, positions) -> None:
        """Add a chunk; ``positions``: the absolute position of each row (for per-bucket statistics)."""
        self.add_values(position_values(base_logprobs, other_logprobs, targets), positions)

    def add_values(self, values: dict[str, np.ndarray], positions) -> None:
        """Add a chunk's per-position values as ``position_values`` gives them (computed once, added to several
        accumulators)."""
        for key, value in values.items():
            self.parts.setdefault(key, []).append(value)
        self.positions.append(np.asarray(positions, dtype=np.int64))

    def values(self, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        merged = {key: np.concatenate(chunks) for key, chunks in self.parts.items()}
        return merged if mask is None else {key: value[mask] for key, value in merged.items()}

    def summary(self, mask: np.ndarray | None = None) -> dict:
        return summarize(self.values(mask))

    def bucket_summaries(self, boundary: int) -> dict[str, dict]:
        """Statistics of the positions before ``boundary`` and from it on (e.g. a RoPE switch point)."""
        positions = np.concatenate(self.positions) if self.positions else np.zeros(0, dtype=np.int64)
        return {
            "before": {"positions": f"< {boundary}", **self.summary(positions < boundary)},
            "after": {"positions": f">= {boundary}", **self.summary(positions >= boundary)},
        }


def _log_ppl_ratio(nll_other: np.ndarray, nll_base: np.ndarray) -> tuple[float, float]:
    """ln(PPL(other) / PPL(base)) and its uncertainty, with the covariance of the two NLL series."""
    n = len(nll_other)
    mean_o, unc_o = mean_and_uncertainty(nll_other)
    mean_b, unc_b = mean_and_uncertainty(nll_base)
    cov = 0.0
    if n >= 10:
        cov = (float(np.mean(nll_other * nll_base)) - mean_o * mean_b) / (n - 1)
    return mean_o - mean_b, math.sqrt(max(unc_o**2 + unc_b**2 - 2 * cov, 0.0))


def summarize(values: dict[str, np.ndarray]) -> dict:
    """The statistics table of a set of positions (``values`` as ``position_values`` gives them)."""
    kld, p_diff = values.get("kld", np.zeros(0)), values.get("p_diff", np.zeros(0))
    n = len(kld)
    if n == 0:
        return {"n": 0}
    kld_mean, kld_se = mean_and_uncertainty(kld)
    same, same_se = proportion_and_uncertainty(int(np.sum(values["same_top"])), n)
    dp_mean, dp_se = mean_and_uncertainty(p_diff)
    mse, mse_se = mean_and_uncertainty(np.square(p_diff))
    rms = math.sqrt(mse)
    ratio, ratio_se = _log_ppl_ratio(values["nll_other"], values["nll_base"])
    return {
        "n": n,
        "kld": {
            "mean": kld_mean,
            "se": kld_se,
            **{name: percentile(kld, f) for name, f in KLD_PERCENTILES.items()},
            "max": float(np.max(kld)),
        },
        "same_top1": {"p": same, "se": same_se},
        "delta_p": {
            "mean": dp_mean,
            "se": dp_se,
            "rms": rms,
            "rms_se": 0.5 / rms * mse_se if rms > 0 else 0.0,
            **{name: percentile(p_diff, f) for name, f in DP_PERCENTILES.items()},
        },
        "abs_delta_logprob": {
            "mean": float(np.mean(np.abs(values["nll_other"] - values["nll_base"]))),
            "max": float(np.max(np.abs(values["nll_other"] - values["nll_base"]))),
        },
        "perplexity": {
            "base": math.exp(float(np.mean(values["nll_base"]))),
            "other": math.exp(float(np.mean(values["nll_other"]))),
            "ln_ratio": ratio,
            "ln_ratio_se": ratio_se,
        },
    }
