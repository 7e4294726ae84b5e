"""The deployment configurations, each judged on the same tokens against the same reference and floor, and against
the deployed configuration.

For every configuration smoke ran (npuport.engines.deployment), on the positions it computed of the first evaluation
segments (a prefix-cache hit computes only the positions after the cached prefix):

- its full-vocabulary statistics against the reference at ``reference_dtype`` and the same evaluation gates as
  compare's (``eval_*``: engine <= ratio x floor + epsilon), beside the deployed configuration's on those positions;
- its **differential** against the deployed configuration: the same statistics with the deployed configuration's
  distribution as the base, gated against the **spread** of two correct implementations at the engine's dtype
  (the reference at the engine's dtype with its default attention against another attention implementation: what
  rearranging the same computation at that precision moves).

A configuration fails when a gate's outcome differs between it and the deployed configuration (it fails where the
deployed passes: the fault is on its path; it passes where the deployed fails: the fault is on the deployed path, for
the eager configuration the compiled graph), or when its differential exceeds the spread's gate. A fault both share
shows in compare's verdict of the deployed configuration, not as a difference between configurations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuport.compare.floor import KV_CACHE_DTYPES, KV_ROUNDING, ROW_CHUNK, Reference, kv_cache_attention
from npuport.compare.gates import GATES, gate_checks
from npuport.compare.statistics import KldAccumulator, position_values

log = logging.getLogger(__name__)

EVAL_GATES = tuple(g.name for g in GATES if g.name.startswith("eval_"))
SIDES = ("engine", "floor", "deployed", "deployed_floor", "differential", "spread")
METHOD = (
    "on the positions each configuration computed of the first evaluation segments: the configuration and the "
    "deployed configuration against transformers at reference_dtype with compare's evaluation gates (engine <= ratio "
    "x floor + epsilon, the floor transformers at the engine's dtype), and the configuration against the deployed "
    "configuration (the deployed one as the base) gated against the spread of transformers at the engine's dtype "
    "between two attention implementations; a configuration fails when a gate's outcome differs from the deployed "
    "configuration's or its differential exceeds the spread's gate"
)


class DeploymentScorer:
    """Accumulates every configuration's sides segment by segment, on the reference pass compare already makes."""

    def __init__(self, smoke: Mapping[str, Any], capture_dir: str | Path | None, segments: Sequence[Sequence[int]]):
        matrix = smoke.get("deployments") or {}
        self.rows = [dict(r) for r in matrix.get("configurations") or []]
        self.capture_dir = Path(capture_dir) if capture_dir is not None else None
        self.count = min(int(matrix.get("segments") or 0), len(segments))
        self.segments = [list(s) for s in segments[: self.count]]
        self.accumulators = {
            r["name"]: {side: KldAccumulator() for side in SIDES} for r in self.rows if r.get("status") == "captured"
        }
        self.spread_logits: list[torch.Tensor] = []
        self.spread_implementation: str | None = None
        # the reference at a configuration's own precision where it differs from the deployed one (a quantized KV
        # cache): its floor, and what the same change moves the reference by (the differential's gate)
        self.precision_logits: dict[str, list[torch.Tensor]] = {}
        platform = smoke.get("platform") or {}
        self.kv_rounding = KV_ROUNDING["cpu" if platform.get("is_cpu") else None]

    @property
    def wanted(self) -> bool:
        return bool(self.accumulators) and self.count > 0 and self.capture_dir is not None

    def spread_pass(self, model_dir: Path, dtype: str, default_implementation: str, trust_remote_code: bool) -> None:
        """The reference at the engine's dtype with the other attention implementation, on the scored segments."""
        other = "sdpa" if default_implementation == "eager" else "eager"
        reference = Reference(model_dir, dtype, trust_remote_code, attn_implementation=other)
        self.spread_implementation = reference.attn_implementation
        self.spread_logits = [reference.logits(ids)[:-1].clone() for ids in self.segments]
        reference.close()
        for kv_dtype in sorted({precision(r) for r in self.rows if r["name"] in self.accumulators} - {None}):
            attention = kv_cache_attention(kv_dtype, self.kv_rounding)
            reference = Reference(model_dir, dtype, trust_remote_code, attn_implementation=attention)
            self.precision_logits[kv_dtype] = [reference.logits(ids)[:-1].clone() for ids in self.segments]
            reference.close()

    def add(self, index: int, base: torch.Tensor, deployed: torch.Tensor, low: torch.Tensor) -> None:
        """Segment ``index``: ``base`` full-precision logprobs, ``deployed`` the deployed configuration's logits and
        ``low`` the reference's at the engine's dtype (all positions 0..n-2)."""
        if index >= self.count:
            return
        from safetensors.torch import load_file

        ids = self.segments[index]
        targets = torch.tensor(ids[1:])
        shared: dict[tuple, dict] = {}  # the sides that do not depend on the configuration, per chunk of positions
        for row in self.rows:
            if row["name"] not in self.accumulators:
                continue
            capture = load_file(str(self.capture_dir / row["capture"]["directory"] / row["capture"]["files"][index]))
            positions = capture["positions"].long()
            keep = positions < len(ids) - 1  # the last position predicts nothing in the segment
            rows, logits = positions[keep], capture["logits"][keep]
            sides = self.accumulators[row["name"]]
            own = self.precision_logits.get(precision(row))
            for start in range(0, len(rows), ROW_CHUNK):
                at = rows[start : start + ROW_CHUNK]
                where, target = at.numpy(), targets[at]
                key = (int(at[0]), int(at[-1]), len(at))
                if key not in shared:
                    deployed_lp, low_lp = _logprobs(deployed[at]), _logprobs(low[at])
                    spread_lp = _logprobs(self.spread_logits[index][at])
                    shared[key] = {
                        "deployed_lp": deployed_lp,
                        "deployed": position_values(base[at], deployed_lp, target),
                        "low": position_values(base[at], low_lp, target),
                        "spread": position_values(low_lp, spread_lp, target),
                        "low_lp": low_lp,
                    }
                common = shared[key]
                mine = _logprobs(logits[start : start + ROW_CHUNK])
                sides["engine"].add(base[at], mine, target, where)
                sides["deployed"].add_values(common["deployed"], where)
                sides["deployed_floor"].add_values(common["low"], where)
                sides["differential"].add(common["deployed_lp"], mine, target, where)
                if own is None:  # the floor at the deployed precision, the spread as the differential's gate
                    sides["floor"].add_values(common["low"], where)
                    sides["spread"].add_values(common["spread"], where)
                else:  # the floor at this configuration's precision, and what that change moves the reference
                    own_lp = _logprobs(own[index][at])
                    sides["floor"].add(base[at], own_lp, target, where)
                    sides["spread"].add(common["low_lp"], own_lp, target, where)

    def document(self, *, ratio: float, ratios: Mapping[str, float]) -> dict[str, Any]:
        """compare.json's "deployments": one row per configuration smoke recorded, in its order."""
        rows = [self._row(r, ratio=ratio, ratios=ratios) for r in self.rows]
        return {
            "status": _status(rows),
            "segments": self.count,
            "spread": {"attn_implementation": self.spread_implementation},
            "kv_cache_rounding": self.kv_rounding if self.precision_logits else None,
            "method": METHOD,
            "configurations": rows,
        }

    def _row(self, row: Mapping[str, Any], *, ratio: float, ratios: Mapping[str, float]) -> dict[str, Any]:
        out = {key: row.get(key) for key in ("name", "description", "differs", "workload", "overrides")}
        if precision(row) is not None:
            kv = precision(row)
            out["floor"] = f"transformers at the engine's dtype with the KV cache in {kv}, rounded {self.kv_rounding}"
        out["greedy"] = greedy_summary(row.get("greedy") or [])
        out["execution"] = execution(row)
        if row["name"] not in self.accumulators:
            return out | {"status": "not run", "reason": row.get("reason") or f"smoke: {row.get('status')}"}
        if not self.wanted:
            return out | {"status": "not measured", "reason": "no evaluation segments scored"}
        summaries = {side: acc.summary() for side, acc in self.accumulators[row["name"]].items()}
        if not summaries["engine"].get("n"):
            return out | {"status": "not measured", "reason": "the configuration computed no scored position"}
        return out | verdict(summaries, ratio=ratio, ratios=ratios, own_floor=precision(row) is not None)


def precision(row: Mapping[str, Any]) -> str | None:
    """The KV-cache dtype a configuration quantizes to, when the reference can compute at it (else None)."""
    kv_dtype = ((row.get("engine") or {}).get("kv_cache_dtype")) or "auto"
    return kv_dtype if kv_dtype in KV_CACHE_DTYPES else None


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def _eval_checks(side: Mapping[str, Any], floor: Mapping[str, Any], *, ratio: float, ratios) -> list[dict]:
    checks = gate_checks({"evaluation": side}, {"evaluation": floor}, ratio=ratio, ratios=ratios)
    return [c for c in checks if c["threshold"] in EVAL_GATES]


def verdict(
    summaries: Mapping[str, Mapping[str, Any]], *, ratio: float, ratios: Mapping[str, float], own_floor: bool = False
) -> dict:
    """A configuration's gates beside the deployed configuration's, its differential gates, and its status.
    ``own_floor``: the configuration computes at another precision (a quantized KV cache) and has a floor of its
    own, wider than the deployed one's; the deployed configuration failing a gate it passes then says nothing about
    either path (a fault below its precision does not show in it)."""
    mine = _eval_checks(summaries["engine"], summaries["floor"], ratio=ratio, ratios=ratios)
    deployed_floor = summaries.get("deployed_floor", summaries["floor"])
    theirs = {c["threshold"]: c for c in _eval_checks(summaries["deployed"], deployed_floor, ratio=ratio,
                                                     ratios=ratios)}  # fmt: skip
    gates = []
    for check in mine:
        other = theirs.get(check["threshold"])
        gates.append(check | {"deployed_value": other["value"] if other else None,
                              "deployed_passed": other["passed"] if other else None,
                              "agrees": other is not None and other["passed"] == check["passed"]})  # fmt: skip
    differential = _eval_checks(summaries["differential"], summaries["spread"], ratio=ratio, ratios=ratios)
    fails_alone = [g["threshold"] for g in gates if g["passed"] is False and g["deployed_passed"] is True]
    deployed_alone = [] if own_floor else [
        g["threshold"] for g in gates if g["passed"] is True and g["deployed_passed"] is False
    ]  # fmt: skip
    beyond = [c["threshold"] for c in differential if not c["passed"]]
    reasons = []
    if fails_alone:
        reasons.append("fails where the deployed configuration passes: " + ", ".join(fails_alone))
    if deployed_alone:
        reasons.append("the deployed configuration fails where this one passes: " + ", ".join(deployed_alone))
    if beyond:
        reasons.append("differs from the deployed configuration beyond the spread: " + ", ".join(beyond))
    shared = [g["threshold"] for g in gates if g["passed"] is False and g["deployed_passed"] is False]
    return {
        "status": "failed" if reasons else "passed",
        "reason": "; ".join(reasons) or None,
        "fault_on": "this configuration" if fails_alone else "the deployed configuration" if deployed_alone else
                    "the difference between them" if beyond else None,
        "shared_failures": shared,
        "positions": summaries["engine"]["n"],
        "gates": gates,
        "differential": {"statistics": summaries["differential"], "spread": summaries["spread"],
                         "gates": differential},
        "statistics": {"engine": summaries["engine"], "floor": summaries["floor"], "deployed": summaries["deployed"],
                       "deployed_floor": deployed_floor},
        "margin": _margin(gates, differential),
    }  # fmt: skip


def _margin(gates: Sequence[Mapping[str, Any]], differential: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest value / limit of a check that decides the row (a failing side's gate, or the differential)."""
    values = [c["value"] / c["limit"] for c in differential if c.get("limit")]
    for gate in gates:
        if not gate["agrees"] and gate.get("limit"):
            worst = max(gate["value"], gate["deployed_value"] or 0.0)
            values.append(worst / gate["limit"])
    return max(values) if values else None


def greedy_summary(greedy: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The prompts' greedy tokens under the configuration against the deployed configuration's."""
    if not greedy:
        return {"compared": 0}
    first = [g["first_divergence"] for g in greedy if g.get("first_divergence") is not None]
    per_prompt = [
        {key: g[key] for key in ("prompt", "identical", "first_divergence", "cached_tokens", "other_sequences")
         if key in g}
        for g in greedy
    ]  # fmt: skip
    return {"compared": len(greedy), "identical": sum(bool(g.get("identical")) for g in greedy),
            "first_divergence": min(first) if first else None, "per_prompt": per_prompt}  # fmt: skip


def execution(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """How the workload actually ran (from smoke's record): steps, requests per step, tokens from the cache."""
    sequences = ((row.get("capture") or {}).get("sequences")) or []
    if not sequences:
        return None
    return {
        "sequences": len(sequences),
        "positions_computed": int(np.sum([s.get("rows", 0) for s in sequences])),
        "steps": [s.get("steps") for s in sequences],
        "max_requests_in_step": max((max(s.get("requests_in_step") or [0]) for s in sequences), default=0),
        "cached_tokens": [s["cached_tokens"] for s in sequences if "cached_tokens" in s] or None,
        "engine_start_s": row.get("engine_start_s"),
        "seconds": row.get("seconds"),
    }


def _status(rows: Sequence[Mapping[str, Any]]) -> str:
    statuses = {r["status"] for r in rows}
    if "failed" in statuses:
        return "failed"
    if not rows or statuses == {"not run"}:
        return "not run"
    return "passed"
