"""Serving capacity within a latency objective: the objective (``bench.slo``) judged on one benchmark run, the
steady-state window of a run, the bounded capacity search (``bench.capacity``), the knee of the ladder and which
limit the server reached first. Pure functions over vLLM's own results; npuport.engines.bench runs the benchmark.

What is vLLM's and what is ours:

- vLLM's serving benchmark (``vllm bench serve``) measures every run: its percentiles (``--metric-percentiles``
  includes the objective's), its goodput (``--goodput ttft:MS tpot:MS``: requests/s whose own TTFT and TPOT are within
  the limits, the DistServe definition) and the per-request times (``--save-detailed``). A run **meets the objective**
  when no request failed or came back truncated and vLLM's TTFT and TPOT at the configured percentiles are within
  the limits; the share of requests within it is vLLM's goodput x duration / requests sent.
- The **capacity search** follows EvalScope's SLA auto-tune (evalscope perf ``--sla-auto-tune``, docs
  user_guides/stress_test/sla_auto_tune.md): start at the lower bound, double the load while the objective holds
  (up to the upper bound), then bisect between the last load that met it and the first that did not; any failed
  request fails a run. Unlike EvalScope, which averages its repeats, every probe is repeated ``repeats`` times and
  the repeats must agree: the result is an interval (the largest load that met the objective, the smallest that did
  not), or "indeterminate" where a probe's repeats disagree. Bounded by ``max_probes`` loads and ``timeout_s``.
- The **steady window** is AISBench's ``stable_stage`` rule (ais_bench/benchmark/calculators/
  stable_perf_metric_calculator.py): from the first moment the requests in flight reach the run's concurrency to
  the last moment they are at it; the requests that started inside it are the steady ones, and the window is long
  enough when the longest request (E2EL) of the run is under a third of it (AISBench's stable_stage guide). The
  window's throughput counts the tokens that arrived inside it (each token's time as vLLM reconstructs it: start +
  TTFT + the inter-token latencies), so ramp-up and drain are out of it.
- The **knee** is the lowest concurrency whose output throughput reaches ``KNEE_SHARE`` of the series' highest;
  the **limits**: the objective (a run that did not meet it), the KV cache (preemptions, or usage at
  ``KV_FULL``), the batch slots (engine.max_num_seqs requests running and more waiting), compute (the knee), each at
  the lowest concurrency that showed it; the one reached first is the one at the lowest concurrency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from npuport.core.settings import Settings

KNEE_SHARE = 0.9  # the knee: the lowest concurrency reaching this share of the series' highest output throughput
KV_FULL = 0.95  # vllm:kv_cache_usage_perc at or above this: the KV cache is full
STEADY_E2EL_SHARE = 1 / 3  # AISBench: steady figures hold when the longest E2EL < this x the window
LIMITS = ("objective", "kv_cache", "batch_slots", "compute")


@dataclass(frozen=True)
class SloSettings(Settings):
    """The latency objective: a limit (ms) on a percentile of TTFT and of TPOT; None: that metric is not limited."""

    SECTION: ClassVar[str] = "bench.slo"
    ttft_ms: float | None
    ttft_percentile: float
    tpot_ms: float | None
    tpot_percentile: float

    def limits(self) -> dict[str, tuple[float, float]]:
        """metric (ttft, tpot) -> (percentile, limit ms), the metrics the objective limits."""
        out = {}
        if self.ttft_ms is not None:
            out["ttft"] = (self.ttft_percentile, self.ttft_ms)
        if self.tpot_ms is not None:
            out["tpot"] = (self.tpot_percentile, self.tpot_ms)
        return out

    def goodput_args(self) -> list[str]:
        """vllm bench serve --goodput: a request is good when its own TTFT and TPOT are within the limits."""
        pairs = [f"{m}:{limit:g}" for m, (_, limit) in self.limits().items()]
        return ["--goodput", *pairs] if pairs else []

    def percentiles(self) -> list[float]:
        return sorted({p for p, _ in self.limits().values()})

    def text(self) -> str:
        """'TTFT p99 <= 2000 ms, TPOT p99 <= 200 ms' (the limits set), or that none is."""
        parts = [f"{m.upper()} p{percentile_word(p)} ≤ {limit:g} ms" for m, (p, limit) in self.limits().items()]
        return ", ".join(parts) or "no latency limit (only failed or truncated requests fail a run)"


@dataclass(frozen=True)
class CapacitySettings(Settings):
    SECTION: ClassVar[str] = "bench.capacity"
    enabled: bool
    variable: str  # concurrency | request_rate
    low: float
    high: float
    resolution: float
    max_probes: int
    repeats: int
    requests_per_unit: float
    min_prompts: int
    burstiness: float
    timeout_s: float

    @property
    def unit(self) -> str:
        return "concurrent requests" if self.variable == "concurrency" else "requests/s"

    def value(self, v: float) -> float:
        """A load as this variable takes it: whole requests in flight, a rate to the millisecond."""
        return float(max(1, round(v))) if self.variable == "concurrency" else max(0.001, round(v, 3))

    def num_prompts(self, v: float) -> int:
        """Requests one probe run sends: requests_per_unit x the load (EvalScope's --sla-number-multiplier)."""
        return max(self.min_prompts, math.ceil(v * self.requests_per_unit))


def percentile_word(p: float) -> str:
    """How vLLM names a percentile in its result keys (p99, p99.9)."""
    return str(int(p)) if int(p) == p else str(p)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- the objective on one run ---------------------------------------------------------------------------------------


def objective(raw: dict[str, Any], *, sent: int, lost: int, truncated: int, slo: SloSettings) -> dict[str, Any]:
    """Whether one run met the objective (vLLM's percentiles against the limits, no failed or truncated request),
    its goodput (vLLM's) and the share of the requests sent that were within the objective."""
    goodput, duration = _number(raw.get("request_goodput")), _number(raw.get("duration"))
    within = round(goodput * duration) if goodput is not None and duration is not None else None
    doc: dict[str, Any] = {"met": False, "reason": None, "objective": slo.text(), "goodput_req_s": goodput,
                           "within": within, "share_within": within / sent if within is not None and sent else None,
                           "goodput_source": "vllm bench serve --goodput (request_goodput)"}  # fmt: skip
    bad = []
    if lost or truncated:
        bad.append(f"{lost} of {sent} requests failed, {truncated} truncated")
    for metric, (p, limit) in slo.limits().items():
        value = _number(raw.get(f"p{percentile_word(p)}_{metric}_ms"))
        doc[f"{metric}_ms"] = value
        if value is None:
            bad.append(f"no {metric.upper()} p{percentile_word(p)} in vLLM's result")
        elif value > limit:
            bad.append(f"{metric.upper()} p{percentile_word(p)} {value:.4g} ms > {limit:g} ms")
    doc["met"], doc["reason"] = not bad, "; ".join(bad) or None
    return doc


# --- the steady window ----------------------------------------------------------------------------------------------


def steady_window(raw: dict[str, Any], *, target: int | None, slo: SloSettings) -> dict[str, Any]:
    """AISBench's stable stage of one run (vLLM's detailed result: start_times, latencies, ttfts, itls, output_lens,
    errors): the window, the steady requests and their figures. ``target``: the run's concurrency; None (a request
    rate without a concurrency bound): the window from the first request sent to the last."""
    starts, latencies = raw.get("start_times") or [], raw.get("latencies") or []
    ttfts, itls = raw.get("ttfts") or [], raw.get("itls") or []
    lens, errors = raw.get("output_lens") or [], raw.get("errors") or []
    n = min(len(starts), len(latencies), len(ttfts), len(itls), len(lens))
    ok = [i for i in range(n) if not (errors[i] if i < len(errors) else "") and latencies[i] > 0]
    rule = (
        "AISBench stable_stage: from the first moment the requests in flight reach the concurrency to the last moment "
        "they are at it"
        if target
        else "from the first request sent to the last (no concurrency target)"
    )
    doc: dict[str, Any] = {"rule": rule, "target": target, "start_s": None, "end_s": None, "window_s": None,
                           "requests": 0, "long_enough": False}  # fmt: skip
    if not ok:
        return doc | {"reason": "no request completed"}
    origin = min(starts[i] for i in ok)
    if target:
        # sorted by time only (a stable sort: a request's start stays before its end at one time)
        events = sorted([(starts[i], 1) for i in ok] + [(starts[i] + latencies[i], -1) for i in ok], key=lambda e: e[0])
        first = last = None
        in_flight = 0
        for t, step in events:
            in_flight += step
            if in_flight == target:
                first = t if first is None else first
                last = t
        if first is None:
            return doc | {"reason": f"the requests in flight never reached {target}"}
    else:
        first, last = origin, max(starts[i] for i in ok)
    steady = [i for i in ok if first <= starts[i] <= last]
    window = last - first
    longest = max(latencies[i] for i in ok)
    doc |= {"start_s": first - origin, "end_s": last - origin, "window_s": window, "requests": len(steady),
            "longest_e2el_s": longest, "long_enough": window > 0 and longest < STEADY_E2EL_SHARE * window,
            "abs_start": first, "abs_end": last}  # fmt: skip
    if window <= 0:
        return doc | {"reason": "a window of 0 s: every request was sent at once (requests <= concurrency)"}
    tokens = 0
    for i in ok:
        t = starts[i] + ttfts[i]
        tokens += first <= t <= last
        for gap in itls[i] or []:
            t += gap
            tokens += first <= t <= last
    tpots = [(latencies[i] - ttfts[i]) / (lens[i] - 1) for i in steady if lens[i] > 1]
    doc["output_throughput"] = tokens / window
    doc["output_tokens"] = tokens
    for metric, values in (("ttft", [ttfts[i] for i in steady]), ("tpot", tpots)):
        points = sorted({50.0, *(p for m, (p, _) in slo.limits().items() if m == metric)})
        doc[f"{metric}_ms"] = {f"p{percentile_word(p)}": float(np.percentile(values, p)) * 1000 for p in points} \
            if values else None  # fmt: skip
    if not doc["long_enough"]:
        doc["reason"] = (f"the longest request took {longest:.3g} s, not under a third of the {window:.3g} s window "
                         "(AISBench's rule): steady figures not representative")  # fmt: skip
    else:
        doc["reason"] = None
    return doc


# --- the search -----------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One load and its repeats: each repeat's record and whether it met the objective."""

    value: float
    planned: int
    runs: list[dict[str, Any]]
    met: list[bool]

    @property
    def verdict(self) -> str:
        """met / not met (every repeat agrees), mixed (they disagree), stopped (not every repeat ran)."""
        if len(self.met) < self.planned:
            return "stopped"
        if all(self.met):
            return "met"
        return "not met" if not any(self.met) else "mixed"

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "verdict": self.verdict, "met": sum(self.met), "repeats": len(self.met),
                "planned_repeats": self.planned, "runs": self.runs}  # fmt: skip


class Stop(Exception):
    """A probe run could not happen (the server exited, the search's time was spent): the search ends there."""


# run(value, repeat) -> (met, record); raises Stop
RunProbe = Callable[[float, int], tuple[bool, dict[str, Any]]]


def search(settings: CapacitySettings, run: RunProbe, *, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """The capacity search over ``settings.variable`` between ``low`` and ``high`` (see the module docstring).
    Returns the record: status (measured | none meets it | indeterminate | not run), capacity (the largest load
    that met the objective), the interval, what stopped the search, and every probe with its runs."""
    deadline = clock() + settings.timeout_s
    probes: list[Probe] = []
    met_at: float | None = None  # the largest load whose repeats all met the objective
    failed_at: float | None = None  # the smallest load whose repeats all failed it
    stopped: str | None = None

    def probe(value: float) -> str:
        nonlocal stopped
        p = Probe(value, settings.repeats, [], [])
        probes.append(p)
        for repeat in range(settings.repeats):
            if clock() >= deadline:
                stopped = f"bench.capacity.timeout_s ({settings.timeout_s:g} s) was spent"
                break
            try:
                met, record = run(value, repeat)
            except Stop as exc:
                stopped = str(exc)
                break
            p.met.append(bool(met))
            p.runs.append(record)
        return p.verdict

    value = settings.value(settings.low)
    high = settings.value(settings.high)
    verdict = "met"
    while verdict == "met":  # EvalScope's boundary detection: double until the objective fails or the top
        if len(probes) >= settings.max_probes:
            stopped = stopped or f"bench.capacity.max_probes ({settings.max_probes}) loads probed"
            break
        verdict = probe(value)
        if verdict == "met":
            met_at = value
            if value >= high:
                break
            value = min(settings.value(value * 2), high)
        elif verdict == "not met":
            failed_at = value
    while verdict in ("met", "not met") and met_at is not None and failed_at is not None:  # then bisect
        if failed_at - met_at <= settings.resolution:
            break
        if len(probes) >= settings.max_probes:
            stopped = stopped or f"bench.capacity.max_probes ({settings.max_probes}) loads probed"
            break
        mid = settings.value((met_at + failed_at) / 2)
        if mid <= met_at or mid >= failed_at:  # no load left between them at this variable's grain
            break
        verdict = probe(mid)
        if verdict == "met":
            met_at = mid
        elif verdict == "not met":
            failed_at = mid
    return _result(settings, probes, met_at, failed_at, verdict, stopped)


def _result(settings: CapacitySettings, probes: list[Probe], met_at, failed_at, verdict, stopped) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "variable": settings.variable, "unit": settings.unit, "low": settings.value(settings.low),
        "high": settings.value(settings.high), "resolution": settings.resolution, "capacity": met_at,
        "interval": {"at_least": met_at, "below": failed_at}, "stopped_by": stopped, "disagreed_at": None,
        "top_of_range": met_at is not None and met_at >= settings.value(settings.high),
        "exact": met_at is not None and failed_at is not None and failed_at - met_at <= settings.resolution,
        "probes": [p.as_dict() for p in probes],
        "run_count": sum(len(p.met) for p in probes),
    }  # fmt: skip
    mixed = next((p for p in probes if p.verdict == "mixed"), None)
    unit = settings.unit
    if mixed is not None:
        doc["disagreed_at"] = mixed.value
        return doc | {"status": "indeterminate", "capacity": None,
                      "reason": f"at {mixed.value:g} {unit} {sum(mixed.met)} of {len(mixed.met)} repeats met the "
                                "objective: the repeats disagree"}  # fmt: skip
    if met_at is None and failed_at is not None:
        return doc | {"status": "none meets it",
                      "reason": f"no load in the searched range meets it: {failed_at:g} {unit}, the lowest, failed "
                                f"in all {settings.repeats} repeats"}  # fmt: skip
    if met_at is None:
        return doc | {"status": "not run" if not doc["run_count"] else "indeterminate",
                      "reason": stopped or "no probe completed"}  # fmt: skip
    if doc["top_of_range"]:
        reason = f"every probe up to the top of the searched range ({met_at:g} {unit}) met it"
    elif failed_at is None:
        reason = f"not searched above {met_at:g} {unit} ({stopped})"
    elif doc["exact"]:
        reason = f"{met_at:g} {unit} met it in every repeat, {failed_at:g} failed it in every repeat"
    else:
        reason = f"between {met_at:g} and {failed_at:g} {unit}: the search stopped ({stopped})"
    return doc | {"status": "measured", "reason": reason}


# --- knee and limits ------------------------------------------------------------------------------------------------


def knee(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The knee of one series (ladder points of one input / output length, each with concurrency and
    output_throughput): the lowest concurrency whose output throughput reaches KNEE_SHARE of the highest measured;
    none when only the top concurrency does (throughput still rising at the top of the ladder)."""
    measured = sorted((p for p in points if _number(p.get("output_throughput")) and p.get("concurrency")),
                      key=lambda p: p["concurrency"])  # fmt: skip
    rule = f"the lowest concurrency reaching {KNEE_SHARE:.0%} of the highest output throughput measured"
    if len(measured) < 2:
        return {"concurrency": None, "rule": rule, "reason": "fewer than two measured points"}
    best = max(p["output_throughput"] for p in measured)
    first = next(p for p in measured if p["output_throughput"] >= KNEE_SHARE * best)
    if first is measured[-1]:
        return {
            "concurrency": None,
            "rule": rule,
            "peak": best,
            "reason": f"throughput still rising at the top of the ladder (concurrency {first['concurrency']})",
        }
    return {"concurrency": first["concurrency"], "rule": rule, "peak": best, "output_throughput":
            first["output_throughput"], "point": first.get("name"), "reason": None}  # fmt: skip


def _reached(run: dict[str, Any], max_num_seqs: int) -> dict[str, str]:
    """The limits one run (a ladder point or a probe repeat) showed, each with its evidence."""
    found = {}
    objective_doc = run.get("objective") or {}
    if objective_doc and objective_doc.get("met") is False:
        found["objective"] = objective_doc.get("reason") or "not met"
    metrics = run.get("server_metrics") or {}
    kv = (metrics.get("kv_cache_usage") or {}).get("max")
    preempted = metrics.get("preemptions")
    if (preempted or 0) > 0 or (kv is not None and kv >= KV_FULL):
        found["kv_cache"] = f"KV-cache usage up to {kv:.0%}, {preempted or 0:g} preemptions" if kv is not None \
            else f"{preempted:g} preemptions"  # fmt: skip
    running = (metrics.get("running") or {}).get("max")
    waiting = (metrics.get("waiting") or {}).get("max")
    if running is not None and waiting and running >= max_num_seqs:
        found["batch_slots"] = f"{running:g} requests running (engine.max_num_seqs {max_num_seqs}), {waiting:g} waiting"
    return found


def limits(runs: Sequence[dict[str, Any]], knees: Sequence[dict[str, Any]], *, max_num_seqs: int) -> dict[str, Any]:
    """Which limit each concurrency-driven run reached (``runs``: ladder points and probe repeats with a
    concurrency), the lowest concurrency showing each, and the one reached first. Compute: the lowest knee."""
    at: dict[str, dict[str, Any]] = {}
    for run in sorted((r for r in runs if r.get("concurrency")), key=lambda r: r["concurrency"]):
        for kind, evidence in _reached(run, max_num_seqs).items():
            if kind not in at:
                at[kind] = {"concurrency": run["concurrency"], "run": run.get("name"), "evidence": evidence}
    found_knees = [k for k in knees if k.get("concurrency")]
    if found_knees:
        k = min(found_knees, key=lambda k: k["concurrency"])
        at["compute"] = {"concurrency": k["concurrency"], "run": k.get("point"),
                         "evidence": f"output throughput {k['output_throughput']:.4g} tok/s, {KNEE_SHARE:.0%} of the "
                                     f"highest {k['peak']:.4g} (the knee)"}  # fmt: skip
    top = max((r["concurrency"] for r in runs if r.get("concurrency")), default=None)
    doc: dict[str, Any] = {"reached": {kind: at.get(kind) for kind in LIMITS}, "highest_concurrency": top,
                           "kv_full": KV_FULL, "first": [], "first_concurrency": None}  # fmt: skip
    if at:
        lowest = min(v["concurrency"] for v in at.values())
        doc["first"] = [kind for kind in LIMITS if at.get(kind, {}).get("concurrency") == lowest]
        doc["first_concurrency"] = lowest
    return doc
