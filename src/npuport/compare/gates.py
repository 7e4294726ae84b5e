"""Gates relative to the noise floor: engine metric <= ratio x floor metric + epsilon.

The three-way convention of Ascend's precision tools (device-vs-CPU error over GPU-vs-CPU error, passing
at <= 2), with the floor measured per model: the reference at the engine's dtype against the reference at
full precision, on the same tokens. Every gated metric is an error (lower is better); agreement rates
enter as disagreement. Epsilon is an absolute allowance for metrics that are 0 (or nearly) on both sides.
Fixed absolute thresholds stay available as optional per-model overrides (``compare.thresholds``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str  # what the value is, as the report names it
    read: Callable[[Mapping[str, Any]], float | None]  # the value from one side's metrics
    epsilon: float


def _dig(*path: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(metrics: Mapping[str, Any]) -> float | None:
        value: Any = metrics
        for key in path:
            if not isinstance(value, Mapping) or value.get(key) is None:
                return None
            value = value[key]
        return float(value)

    return read


def _disagreement(*path: str) -> Callable[[Mapping[str, Any]], float | None]:
    read = _dig(*path)

    def disagreement(metrics: Mapping[str, Any]) -> float | None:
        value = read(metrics)
        return None if value is None else 1.0 - value

    return disagreement


# Side metrics: {"evaluation": statistics summary, "before"/"after": bucket summaries, "prompts": pooled top-k}.
GATES = (
    Gate("eval_mean_kld", "mean KLD, evaluation text", _dig("evaluation", "kld", "mean"), 1e-6),
    Gate("eval_p99_kld", "99th percentile KLD, evaluation text", _dig("evaluation", "kld", "p99"), 1e-5),
    Gate(
        "eval_top1_disagreement",
        "1 - same top-1, evaluation text",
        _disagreement("evaluation", "same_top1", "p"),
        0.005,
    ),  # fmt: skip
    Gate("eval_rms_delta_p", "RMS Δp of the next token, evaluation text", _dig("evaluation", "delta_p", "rms"), 1e-4),
    Gate("before_switch_mean_kld", "mean KLD before the RoPE switch", _dig("before", "kld", "mean"), 1e-6),
    Gate("after_switch_mean_kld", "mean KLD after the RoPE switch", _dig("after", "kld", "mean"), 1e-6),
    Gate(
        "prompt_top1_disagreement",
        "1 - top-1 agreement, prompts teacher-forced",
        _disagreement("prompts", "top1_agreement"),
        0.01,
    ),  # fmt: skip
    Gate(
        "prompt_mean_abs_logprob_diff",
        "mean |Δ logprob| of the top-k, prompts teacher-forced",
        _dig("prompts", "mean_abs_logprob_diff"),
        1e-3,
    ),  # fmt: skip
    Gate("prompt_mean_topk_kl", "mean top-k KL, prompts teacher-forced", _dig("prompts", "mean_topk_kl"), 1e-6),
)
GATE_NAMES = tuple(g.name for g in GATES)


def gate_checks(
    engine: Mapping[str, Any], floor: Mapping[str, Any], *, ratio: float, ratios: Mapping[str, float]
) -> list[dict]:
    """One check per gate whose metric exists on both sides: value, floor, ratio, epsilon, limit, passed."""
    checks = []
    for gate in GATES:
        value, floor_value = gate.read(engine), gate.read(floor)
        if value is None or floor_value is None:
            continue
        gate_ratio = float(ratios.get(gate.name, ratio))
        limit = gate_ratio * floor_value + gate.epsilon
        checks.append({
            "threshold": gate.name, "kind": "floor", "metric": gate.metric, "value": value, "floor": floor_value,
            "ratio": gate_ratio, "epsilon": gate.epsilon, "op": "<=", "limit": limit, "passed": value <= limit,
            "ratio_to_floor": value / floor_value if floor_value > 0 else None,
        })  # fmt: skip
    return checks


def margin(check: Mapping[str, Any]) -> float | None:
    """How far a check is from its limit: value / limit for <= checks (above 1 fails)."""
    if check.get("op") != "<=" or not check.get("limit"):
        return None
    return check["value"] / check["limit"]
