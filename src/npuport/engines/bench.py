"""The `bench` stage: serving performance under load, on one vLLM OpenAI-compatible server for the fused model.

One server start serves every part: first the serve check (every prompt of smoke.json asked again through
/v1/completions, the answer compared with the offline engine's text; npuport.engines.serve_check), the engine's side
of the accuracy tasks, the capacity search (the largest load within the latency objective ``bench.slo``, bounded,
each probe repeated; npuport.engines.capacity), then vLLM's own serving benchmark (``vllm.benchmarks.serve``, the
code behind ``vllm bench serve``, called in this process) over a matrix of input length x output length x
concurrency on its seeded random dataset. Every run (ladder point or probe) is judged against the objective with
vLLM's own percentiles and goodput, gets its steady-state window (AISBench's rule) and the server's /metrics scraped
while it ran (npuport.engines.server_metrics); the knee of the ladder and the limit reached first close it. The
capacity search runs before the ladder: its probes are bounded in time, the ladder of an NPU matrix may take hours.
Then three checks:

- held: no failed and no truncated request at any point (each point and the whole ladder are bounded in time);
- efficiency: single-stream decode (the concurrency-1 point, 1000 / mean TPOT) against the memory-bandwidth bound,
  bandwidth / bytes read per generated token (npuport.engines.bandwidth), measured on a CPU host, nominal elsewhere;
- regression: each point's output throughput against an earlier bench.json (``bench.baseline``) at ``min_ratio``.

Nothing here raises for what happens to the server or the benchmark: it is recorded ("failed", "timed out",
"not run" with the reason), and the server is stopped by process group on every path.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from npuport.accuracy.accuracy import AccuracySettings, engine_side
from npuport.accuracy.accuracy import not_run as accuracy_not_run
from npuport.core.errors import NpuportError
from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings, Settings
from npuport.engines import capacity as cap
from npuport.engines.bandwidth import decode_bytes, select_bandwidth
from npuport.engines.capacity import CapacitySettings, SloSettings
from npuport.engines.serve_check import (
    OfflineAnswer,
    Server,
    api_server_argv,
    check_prompts,
    free_port,
    serve_document,
    served,
    vllm_serve_command,
)
from npuport.engines.server_metrics import not_scraped, scraping
from npuport.engines.vllm_env import engine_environment

log = logging.getLogger(__name__)

METRICS = ("ttft", "tpot", "itl", "e2el")
MAX_ERRORS = 3
BENCHMARK = {
    "tool": "vllm.benchmarks.serve (vllm bench serve), called in-process",
    "backend": "vllm (/v1/completions, streamed)",
    "dataset": "random: token ids drawn with the seed, exact input and output lengths (range ratio 0), eos ignored",
    "temperature": 0.0,
    "request_rate": "inf (every request at once, bounded by the concurrency)",
    "objective": "vLLM's TTFT and TPOT percentiles against bench.slo, no failed or truncated request; goodput: "
    "vllm bench serve --goodput",
    "steady_state": "AISBench stable_stage: requests started while the requests in flight are at the concurrency; "
    "throughput from the tokens that arrived inside that window",
    "server_metrics": "the server's Prometheus /metrics, scraped every bench.metrics_interval_s during each run",
}


@dataclass(frozen=True)
class BenchSettings(Settings):
    SECTION: ClassVar[str] = "bench"
    NESTED: ClassVar[dict[str, type[Settings]]] = {"slo": SloSettings, "capacity": CapacitySettings}
    enabled: bool
    input_len: tuple[int, ...]
    output_len: tuple[int, ...]
    concurrency: tuple[int, ...]
    num_prompts: int
    prompts_per_concurrency: int
    num_warmups: int
    seed: int
    point_timeout_s: float
    timeout_s: float
    baseline: str | None
    min_ratio: float
    bandwidth_gb_s: float | None
    slo: SloSettings
    capacity: CapacitySettings
    metrics_interval_s: float


@dataclass(frozen=True)
class Point:
    """One benchmark run: a matrix point of the ladder, or one repeat of a capacity probe (``label`` names it;
    ``request_rate`` None: every request at once, bounded by ``concurrency``; a rate: arrivals at that rate with
    ``burstiness``, no concurrency bound when ``concurrency`` is None)."""

    input_len: int
    output_len: int
    concurrency: int | None
    num_prompts: int
    request_rate: float | None = None
    burstiness: float = 1.0
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"in{self.input_len}-out{self.output_len}-c{self.concurrency}"


def ladder(settings: BenchSettings) -> list[Point]:
    """Every input x output length, concurrencies ascending; each point sends num_prompts requests, at least
    prompts_per_concurrency x its concurrency."""
    return [
        Point(i, o, c, max(settings.num_prompts, settings.prompts_per_concurrency * c))
        for i in settings.input_len
        for o in settings.output_len
        for c in sorted(set(settings.concurrency))
    ]


@dataclass
class PointResult:
    """What one point measured (vLLM's own figures), or why it has none."""

    point: Point
    status: str  # ok | failed | timed out | not run
    reason: str | None = None
    command: str | None = None  # the equivalent `vllm bench serve ...`
    result_file: str | None = None  # vLLM's own result JSON, relative to results/<model>/
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.point.name, **asdict(self.point), "status": self.status, "reason": self.reason,
                "command": self.command, "result_file": self.result_file, "seconds": self.seconds,
                **self.metrics}  # fmt: skip


def benchmark_args(point: Point, server: Server, *, settings: BenchSettings, tokenizer: Path, result_dir: Path) -> list:
    """The `vllm bench serve` arguments of one point: vLLM's goodput against bench.slo, its percentiles."""
    load = ["--max-concurrency", str(point.concurrency)] if point.concurrency is not None else []
    if point.request_rate is None:
        load += ["--request-rate", "inf"]
    else:
        load += ["--request-rate", f"{point.request_rate:g}", "--burstiness", f"{point.burstiness:g}"]
    percentiles = ",".join(cap.percentile_word(p) for p in sorted({50, 99, *settings.slo.percentiles()}))
    return [
        "--backend", "vllm", "--base-url", server.url, "--model", str(server.served_model),
        "--tokenizer", str(tokenizer), "--dataset-name", "random", "--seed", str(settings.seed),
        "--random-input-len", str(point.input_len), "--random-output-len", str(point.output_len),
        "--random-range-ratio", "0", "--num-prompts", str(point.num_prompts),
        *load, "--ignore-eos", "--temperature", "0",
        "--num-warmups", str(settings.num_warmups), "--ready-check-timeout-sec", "0",
        "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", percentiles, *settings.slo.goodput_args(),
        "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename", f"{point.name}.json",
        "--label", point.name, "--disable-tqdm",
    ]  # fmt: skip


def preload_benchmark() -> None:
    """Import vLLM's benchmark module on a thread while the server starts (seconds of imports off the ladder's
    time; a failure shows again, and is recorded, when a point imports it)."""

    def load() -> None:
        try:
            importlib.import_module("vllm.benchmarks.serve")
        except Exception as exc:  # noqa: BLE001 - run_benchmark imports it again and records the failure
            log.warning("preloading vllm.benchmarks.serve failed: %s", exc)

    threading.Thread(target=load, name="import vllm.benchmarks.serve", daemon=True).start()


def run_benchmark(argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """vLLM's serving benchmark with ``argv`` (as `vllm bench serve` parses them), within ``timeout_s``."""
    from vllm.benchmarks import serve as vllm_bench
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    vllm_bench.add_cli_args(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on a bad argument
        raise ValueError(f"vllm bench serve refused its arguments (exit {exc.code})") from None
    return asyncio.run(asyncio.wait_for(vllm_bench.main_async(args), timeout_s))


def run_point(
    point: Point,
    argv: list[str],
    *,
    timeout_s: float,
    result_file: str,
    command: str,
    slo: SloSettings | None = None,
    metrics_url: str | None = None,
    metrics_interval_s: float = 0.5,
) -> PointResult:
    """One point; a timeout or an exception of the benchmark is the point's finding. ``command``: the equivalent
    `vllm bench serve ...` as the record shows it. With ``slo``: the objective on the run and its steady window;
    with ``metrics_url`` (the server's base URL): its /metrics scraped while the run goes."""
    log.info("bench point %s: %s", point.name, command)
    started = time.perf_counter()
    scrape, raw = None, None
    try:
        if metrics_url is None:
            raw = run_benchmark(argv, timeout_s)
        else:
            with scraping(metrics_url, metrics_interval_s) as scrape:
                raw = run_benchmark(argv, timeout_s)
    except TimeoutError:
        reason = f"did not finish within {timeout_s:.0f} s (bench.point_timeout_s, bench.timeout_s); no request counted"
        result = PointResult(point, "timed out", reason, command, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the benchmark raising is this point's finding
        log.exception("bench point %s: the benchmark raised", point.name)
        reason = f"the benchmark raised {type(exc).__name__}: {exc}"
        result = PointResult(point, "failed", reason, command, seconds=time.perf_counter() - started)
    else:
        result = summarize(point, raw, slo=slo)
        result.command, result.result_file, result.seconds = command, result_file, time.perf_counter() - started
        if slo is not None:
            steady = cap.steady_window(raw, target=point.concurrency, slo=slo)
            window = (steady.pop("abs_start", None), steady.pop("abs_end", None))
            if scrape is not None and steady["window_s"]:
                steady["server_metrics"] = scrape.summary(*window)
            result.metrics["steady"] = steady
    if metrics_url is not None:
        result.metrics["server_metrics"] = scrape.summary() if scrape else not_scraped("the run did not start")
        if scrape is not None:  # how many scrapes fell while requests were in flight (fast runs can have none)
            busy = requests_span(raw) if raw else None
            during = scrape.summary(*busy)["samples"] if busy else 0
            result.metrics["server_metrics"]["samples_during_requests"] = during
    if slo is not None and "objective" not in result.metrics:
        result.metrics["objective"] = {"met": False, "reason": f"{result.status}: {result.reason}",
                                       "objective": slo.text()}  # fmt: skip
    return result


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def requests_span(raw: dict[str, Any]) -> tuple[float, float] | None:
    """(first request sent, last answer complete) of a run, on vLLM's perf_counter clock; None without requests."""
    spans = [(s, s + lat) for s, lat in zip(raw.get("start_times") or [], raw.get("latencies") or [], strict=False)]
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None


def summarize(point: Point, raw: dict[str, Any], slo: SloSettings | None = None) -> PointResult:
    """vLLM's result as bench.json's point: counts, throughput, latency mean / median / p99 (ms); with ``slo``, the
    objective on the run (vLLM's percentiles and goodput; npuport.engines.capacity.objective)."""
    completed, failed = int(raw.get("completed") or 0), int(raw.get("failed") or 0)
    full = sum(1 for n in raw.get("output_lens") or [] if n >= point.output_len)
    truncated = completed - full
    output = _number(raw.get("output_throughput"))
    metrics = {
        "completed": completed, "failed": failed, "truncated": truncated,
        "duration_s": _number(raw.get("duration")),
        "request_throughput": _number(raw.get("request_throughput")),
        "output_throughput": output, "total_token_throughput": _number(raw.get("total_token_throughput")),
        "tokens_per_user": None if output is None or not point.concurrency else output / point.concurrency,
        "total_input_tokens": raw.get("total_input_tokens"), "total_output_tokens": raw.get("total_output_tokens"),
        **{f"{m}_ms": {s: _number(raw.get(f"{s}_{m}_ms")) for s in ("mean", "median", "p99")} for m in METRICS},
        "errors": list(dict.fromkeys(str(e)[:300] for e in raw.get("errors") or [] if e))[:MAX_ERRORS],
    }  # fmt: skip
    lost = point.num_prompts - completed
    if slo is not None:
        metrics["goodput_req_s"] = _number(raw.get("request_goodput"))
        metrics["objective"] = cap.objective(raw, sent=point.num_prompts, lost=lost, truncated=truncated, slo=slo)
    if failed or truncated or lost:
        reason = f"{lost} of {point.num_prompts} requests failed ({failed} reported failed), {truncated} truncated"
        return PointResult(point, "failed", reason, metrics=metrics)
    return PointResult(point, "ok", metrics=metrics)


def run_ladder(
    server: Server,
    points: Sequence[Point],
    *,
    settings: BenchSettings,
    tokenizer: Path,
    result_dir: Path,
    published_dir: Path | None = None,
) -> list[PointResult]:
    """Every point in order against ``server``, within bench.timeout_s; once the server has exited, the rest are
    "not run" (what it answered before stands). vLLM writes its results into ``result_dir``; the recorded commands
    name ``published_dir`` (where they end up) instead."""
    deadline = time.monotonic() + settings.timeout_s
    results: list[PointResult] = []
    for point in points:
        left = deadline - time.monotonic()
        if server.exited() is not None:
            reason = f"the server exited with code {server.exited()} before this point"
            results.append(PointResult(point, "not run", reason))
        elif left <= 0:
            results.append(PointResult(point, "not run", f"bench.timeout_s ({settings.timeout_s:.0f} s) was spent"))
        else:
            timeout = min(settings.point_timeout_s, left)
            results.append(measure(point, server, settings=settings, tokenizer=tokenizer, result_dir=result_dir,
                                   published_dir=published_dir, timeout_s=timeout))  # fmt: skip
    return results


def measure(
    point: Point,
    server: Server,
    *,
    settings: BenchSettings,
    tokenizer: Path,
    result_dir: Path,
    published_dir: Path | None,
    timeout_s: float,
) -> PointResult:
    """One run of vLLM's benchmark against ``server`` (a ladder point or a probe), judged against bench.slo, with
    the server's /metrics scraped while it runs."""
    argv = benchmark_args(point, server, settings=settings, tokenizer=tokenizer, result_dir=result_dir)
    shown = benchmark_args(point, server, settings=settings, tokenizer=tokenizer,
                           result_dir=published_dir or result_dir)  # fmt: skip
    return run_point(point, argv, timeout_s=timeout_s, result_file=f"bench/{point.name}.json",
                     command=shlex.join(["vllm", "bench", "serve", *shown]), slo=settings.slo, metrics_url=server.url,
                     metrics_interval_s=settings.metrics_interval_s)  # fmt: skip


# --- the capacity search --------------------------------------------------------------------------------------------


def capacity_not_run(settings: BenchSettings, reason: str) -> dict[str, Any]:
    """bench.json's "capacity" when no search ran."""
    return {"status": "not run", "reason": reason, "objective": settings.slo.text(),
            "settings": settings.capacity.as_dict(), "capacity": None, "probes": []}  # fmt: skip


def probe_point(settings: BenchSettings, value: float, repeat: int) -> Point:
    """The benchmark run of one probe repeat: the first input and output length of the ladder at load ``value``."""
    c = settings.capacity
    lengths = f"in{settings.input_len[0]}-out{settings.output_len[0]}"
    if c.variable == "concurrency":
        return Point(settings.input_len[0], settings.output_len[0], int(value), c.num_prompts(value),
                     label=f"capacity-{lengths}-c{value:g}-{repeat + 1}")  # fmt: skip
    return Point(settings.input_len[0], settings.output_len[0], None, c.num_prompts(value), request_rate=value,
                 burstiness=c.burstiness, label=f"capacity-{lengths}-r{value:g}-{repeat + 1}")  # fmt: skip


def run_capacity(
    server: Server,
    *,
    settings: BenchSettings,
    tokenizer: Path,
    result_dir: Path,
    published_dir: Path | None = None,
) -> dict[str, Any]:
    """The capacity search (npuport.engines.capacity.search) with vLLM's benchmark at every probe repeat, against
    ``server``; bench.json's "capacity"."""
    c = settings.capacity
    if not c.enabled:
        return capacity_not_run(settings, "bench.capacity.enabled is false in the pipeline config")
    started = time.monotonic()
    deadline = started + c.timeout_s

    def run(value: float, repeat: int) -> tuple[bool, dict[str, Any]]:
        if server.exited() is not None:
            raise cap.Stop(f"the server exited with code {server.exited()}")
        point = probe_point(settings, value, repeat)
        result = measure(point, server, settings=settings, tokenizer=tokenizer, result_dir=result_dir,
                         published_dir=published_dir,
                         timeout_s=max(1.0, min(settings.point_timeout_s, deadline - time.monotonic())))  # fmt: skip
        record = result.as_dict()
        return bool(record["objective"]["met"]), record

    doc = cap.search(c, run)
    doc |= {"objective": settings.slo.text(), "slo": settings.slo.as_dict(), "settings": c.as_dict(),
            "lengths": {"input_len": settings.input_len[0], "output_len": settings.output_len[0]},
            "method": "EvalScope SLA auto-tune: from low, double while the objective holds, then bisect; every load "
                      "repeated, the repeats must agree; any failed request fails a run",
            "seconds": time.monotonic() - started}  # fmt: skip
    log.info("capacity: %s (%s)", doc["status"], doc["reason"])
    return doc


# --- the checks -----------------------------------------------------------------------------------------------------


def held_check(results: Sequence[PointResult]) -> dict[str, Any]:
    """Held under load: every point ran, and no request failed or came back truncated."""
    failed = sum(r.metrics.get("failed", 0) for r in results)
    lost = sum(r.point.num_prompts - r.metrics.get("completed", 0) for r in results if r.metrics)
    truncated = sum(r.metrics.get("truncated", 0) for r in results)
    bad = {r.point.name: r.reason for r in results if r.status != "ok"}
    if not results:
        return {"status": "not measured", "reason": "no point ran", "failed_requests": 0, "truncated_requests": 0,
                "points_not_ok": {}}  # fmt: skip
    status = "failed" if bad else "passed"
    reason = f"{lost} failed and {truncated} truncated request(s); points not ok: {sorted(bad)}" if bad else None
    return {"status": status, "reason": reason, "failed_requests": lost, "reported_failed": failed,
            "truncated_requests": truncated, "points_not_ok": bad}  # fmt: skip


def efficiency_row(result: PointResult, model_dir: Path, engine: EngineSettings, bandwidth: dict) -> dict[str, Any]:
    """Single-stream decode at one concurrency-1 point against bandwidth / bytes read per token at its context."""
    point = result.point
    context = point.input_len + (point.output_len - 1) / 2  # mean context over the decode steps
    read = decode_bytes(model_dir, dtype=engine.dtype, context_tokens=context)
    decode = 1000 / result.metrics["tpot_ms"]["mean"]
    bound = bandwidth["bytes_per_s"] / read.total
    cache, note = bandwidth.get("last_level_cache_bytes"), None
    if cache and read.total <= cache:
        note = (
            f"The {read.total / 1e6:.1f} MB a decode step reads fit in the {cache >> 20} MiB last-level cache: "
            "memory bandwidth does not bound this model's decode, per-step overheads do."
        )
    elif decode > bound:
        note = (
            f"The decode read {decode * read.total / 1e9:.1f} GB/s, more than the {bandwidth['kind']} "
            f"{bandwidth['bytes_per_s'] / 1e9:.1f} GB/s: that figure understates this host's memory bandwidth (e.g. "
            "measured while other work ran), so it bounds nothing and the percentage is no efficiency."
        )
    return {"point": point.name, "decode_tokens_per_s": decode, "decode_source": "1000 / mean TPOT (ms)",
            "bytes_per_token": read.as_dict(), "bound_tokens_per_s": bound, "percent_of_bound": 100 * decode / bound,
            "achieved_bytes_per_s": decode * read.total, "note": note}  # fmt: skip


def efficiency_check(
    results: Sequence[PointResult], *, model_dir: Path, engine: EngineSettings, env: dict, settings: BenchSettings
) -> dict[str, Any]:
    """The efficiency figure, "X % of the <measured|nominal|configured> bandwidth bound", for every concurrency-1
    point that completed."""
    singles = [r for r in results if r.point.concurrency == 1]
    done = [r for r in singles if r.status == "ok" and (r.metrics.get("tpot_ms") or {}).get("mean")]
    bandwidth = select_bandwidth(env, settings.bandwidth_gb_s, engine.tensor_parallel_size)
    reason = (
        "the ladder has no concurrency-1 point" if not singles
        else f"no concurrency-1 point completed ({singles[0].status}: {singles[0].reason})" if not done
        else bandwidth.get("reason") if bandwidth.get("kind") is None else None
    )  # fmt: skip
    if reason:
        return {"status": "not measured", "reason": reason, "bound": bandwidth.get("kind"), "bandwidth": bandwidth,
                "points": [], "percent_of_bound": None, "text": None, "note": None}  # fmt: skip
    rows = [efficiency_row(r, model_dir, engine, bandwidth) for r in done]
    head = rows[0]
    text = (f"{head['percent_of_bound']:.1f} % of the {bandwidth['kind']} bandwidth bound "
            f"({bandwidth['bytes_per_s'] / 1e9:.1f} GB/s; {head['point']}: {head['decode_tokens_per_s']:.1f} of "
            f"{head['bound_tokens_per_s']:.1f} tok/s)")  # fmt: skip
    return {"status": "measured", "reason": None, "bound": bandwidth["kind"], "bandwidth": bandwidth, "points": rows,
            "percent_of_bound": head["percent_of_bound"], "text": text, "note": head["note"]}  # fmt: skip


def _baseline_points(baseline: dict[str, Any]) -> dict[tuple, float]:
    """(input_len, output_len, concurrency) -> output throughput of the earlier run's points that measured one."""
    found = {}
    for p in baseline.get("points") or []:
        if isinstance(p, dict) and isinstance(p.get("output_throughput"), int | float) and p["output_throughput"] > 0:
            key = (p.get("input_len"), p.get("output_len"), p.get("concurrency"))
            found[key] = float(p["output_throughput"])
    return found


def regression_check(
    points: Sequence[dict[str, Any]], baseline: dict[str, Any] | None, *, path: str | None, min_ratio: float
) -> dict[str, Any]:
    """Each point's output throughput / the baseline's at the same point (input, output length, concurrency)
    >= ``min_ratio`` (vllm-ascend's nightly gate convention: 0.97 x baseline). ``points``: bench.json's."""
    doc: dict[str, Any] = {"baseline": path, "min_ratio": min_ratio, "points": []}
    if baseline is None:
        reason = "no bench.baseline configured (an earlier bench.json of another host, release or engine)"
        return doc | {"status": "not measured", "reason": reason}
    if not isinstance(baseline, dict):
        return doc | {"status": "not measured", "reason": f"{path} is not a bench.json document"}
    doc["baseline_run"] = {"platform": (baseline.get("platform") or {}).get("device"),
                           "engine": (baseline.get("engine") or {}).get("version")}  # fmt: skip
    earlier = _baseline_points(baseline)
    for p in points:
        before, now = earlier.get((p["input_len"], p["output_len"], p["concurrency"])), p.get("output_throughput")
        ratio = now / before if before and now is not None and p["status"] == "ok" else None
        doc["points"].append({"point": p["name"], "output_throughput": now, "baseline_output_throughput": before,
                              "ratio": ratio, "passed": None if ratio is None else ratio >= min_ratio})  # fmt: skip
    compared = [p for p in doc["points"] if p["ratio"] is not None]
    below = [p["point"] for p in compared if not p["passed"]]
    if not compared:
        reason = "no point of this run matches a measured point of the baseline"
        return doc | {"status": "not measured", "reason": reason}
    reason = f"below {min_ratio} x the baseline: {below}" if below else None
    return doc | {"status": "failed" if below else "passed", "reason": reason}


# --- the stage ------------------------------------------------------------------------------------------------------


def not_run_reason(
    settings: BenchSettings, smoke: dict[str, Any], *, serve: ServeSettings, accuracy: AccuracySettings | None
) -> str | None:
    """Why no server starts: nothing to do on it (serve check, accuracy and ladder all off), or no offline run."""
    if not (settings.enabled or serve.enabled or (accuracy and accuracy.enabled)):
        return "serve.enabled, accuracy.enabled and bench.enabled are false in the pipeline config"
    if smoke.get("status") != "ok":
        return f"the offline engine did not run (smoke.json status {smoke.get('status')!r}: {smoke.get('reason')})"
    left = (smoke.get("engine_shutdown") or {}).get("engine_processes_left")
    if left:
        return f"offline engine processes {left} still alive after shutdown (smoke.json: engine_shutdown)"
    return None


def check_points_fit(points: Sequence[Point], max_model_len: int) -> None:
    """A point whose input + output exceed engine.max_model_len is a config error, found before any server starts."""
    for p in points:
        if p.input_len + p.output_len > max_model_len:
            need = p.input_len + p.output_len
            raise NpuportError(None, f"bench point {p.name} needs {need} tokens, more than engine.max_model_len "
                                     f"{max_model_len}: shorten bench.input_len / output_len")  # fmt: skip


def stage_status(server: Server, results: Sequence[PointResult]) -> tuple[str, str | None]:
    if not server.ready:
        return "failed", f"the server did not get ready: {server.failure}"
    died = next((r.point.name for r in results if r.status == "not run" and "exited" in (r.reason or "")), None)
    bad = [f"{r.point.name}: {r.status} ({r.reason})" for r in results if r.status != "ok"]
    if died:
        bad.insert(0, f"the server exited during the ladder (code {server.exited()}), before point {died}")
    if server.shutdown and server.shutdown["processes_left"]:
        bad.append(f"server processes left after shutdown: {server.shutdown['left_after_shutdown']}")
    return ("failed", "; ".join(bad)) if bad else ("ok", None)


def base_document(
    model_dir: Path, smoke: dict[str, Any], *, engine: EngineSettings, serve: ServeSettings, settings: BenchSettings,
    trust_remote_code: bool,
) -> dict[str, Any]:  # fmt: skip
    """bench.json with every key, as a stage that did not run writes it."""
    not_run = {"status": "not run", "reason": "the bench stage did not run"}
    return {
        "stage": "bench", "status": "not run", "reason": None, "model_dir": str(model_dir),
        "settings": {"bench": settings.as_dict(), "engine": engine.as_dict(), "serve": serve.as_dict(),
                     "trust_remote_code": trust_remote_code},
        "platform": smoke.get("platform") or {}, "platform_source": "smoke.json (the offline engine, same settings)",
        "engine": smoke.get("engine") or {}, "benchmark": BENCHMARK,
        "vllm_serve_command": vllm_serve_command(model_dir, engine, trust_remote_code),
        "server": None, "serve": dict(not_run), "points": [],
        "held": dict(not_run, status="not measured"), "efficiency": dict(not_run, status="not measured"),
        "regression": dict(not_run, status="not measured"), "accuracy": accuracy_not_run("the bench stage did not run"),
        "capacity": capacity_not_run(settings, "the bench stage did not run"), "limits": None,
        "wall_seconds": None,
    }  # fmt: skip


def run_bench(
    model_dir: str | Path,
    *,
    smoke: dict[str, Any],
    env: dict[str, Any],
    engine: EngineSettings,
    generation: GenerationSettings,
    serve: ServeSettings,
    settings: BenchSettings,
    result_dir: str | Path,
    baseline: dict[str, Any] | None = None,
    baseline_path: str | None = None,
    trust_remote_code: bool = False,
    server_log: str | Path | None = None,
    published_dir: str | Path | None = None,
    accuracy: AccuracySettings | None = None,
    accuracy_dir: str | Path | None = None,
    include_path: str | Path | None = None,
    accuracy_published: str | Path | None = None,
) -> dict[str, Any]:
    """The bench.json document: the serve check and the ladder on one server, then the three checks. vLLM's own
    result JSON of each point is written to ``result_dir`` (``<point>.json``). ``baseline``: the earlier bench.json
    (read from ``baseline_path``, else bench.baseline names it) of the regression gate. ``published_dir``: where
    ``result_dir`` ends up (a staging directory is published there), as the recorded commands name it.
    ``accuracy``: the lm-eval tasks run on the same server between the serve check and the ladder (the engine's side
    of the accuracy stage), lm-eval's output into ``accuracy_dir``; its run document is bench.json's "accuracy"."""
    started = time.perf_counter()
    model_dir = Path(model_dir).resolve()
    doc = base_document(model_dir, smoke, engine=engine, serve=serve, settings=settings,
                        trust_remote_code=trust_remote_code)  # fmt: skip
    why = not_run_reason(settings, smoke, serve=serve, accuracy=accuracy)
    if why:
        log.warning("bench: not run: %s", why)
        return doc | {
            "reason": why,
            "serve": {"status": "not run", "reason": why},
            "accuracy": accuracy_not_run(why),
            "capacity": capacity_not_run(settings, why),
        }
    points = ladder(settings)
    check_points_fit(points, engine.max_model_len)
    if settings.capacity.enabled:  # the probes run at the first lengths, the search has no other bound
        check_points_fit([probe_point(settings, settings.capacity.low, 0)], engine.max_model_len)
    port = free_port(serve.host)
    argv = api_server_argv(model_dir, engine, host=serve.host, port=port, trust_remote_code=trust_remote_code)
    offline = [OfflineAnswer.from_smoke(record) for record in smoke.get("prompts") or []]
    results: list[PointResult] = []
    preload_benchmark()
    with served(argv, url=f"http://{serve.host}:{port}", serve=serve, log_path=server_log,
                environment=engine_environment(engine)) as server:  # fmt: skip
        check = (check_prompts(server, offline, generation=generation, serve=serve) if serve.enabled
                 else {"status": "not run", "reason": "serve.enabled is false in the pipeline config", "prompts": [],
                       "all_text_equal_offline": None})  # fmt: skip
        doc["accuracy"] = on_server_accuracy(
            server,
            model_dir=model_dir,
            settings=accuracy,
            engine=engine,
            serve=serve,
            include_path=include_path,
            output_dir=accuracy_dir,
            published_dir=accuracy_published,
        )
        published = Path(published_dir) if published_dir else None
        if server.ready and settings.enabled:
            doc["capacity"] = run_capacity(server, settings=settings, tokenizer=model_dir, result_dir=Path(result_dir),
                                           published_dir=published)  # fmt: skip
            results = run_ladder(server, points, settings=settings, tokenizer=model_dir, result_dir=Path(result_dir),
                                 published_dir=published)  # fmt: skip
        exited = server.exited()
    if not server.ready and settings.enabled:
        results = [PointResult(p, "not run", f"the server did not get ready: {server.failure}") for p in points]
        doc["capacity"] = capacity_not_run(settings, f"the server did not get ready: {server.failure}")
    elif not settings.enabled:
        doc["capacity"] = capacity_not_run(settings, "bench.enabled is false in the pipeline config")
    doc["server"] = server.record() | {"exited_before_shutdown": exited}
    doc["serve"] = serve_document(server, check, vllm_serve_command=doc["vllm_serve_command"])
    return conclude(doc, server, results, model_dir=model_dir, env=env, engine=engine, settings=settings,
                    baseline=baseline, baseline_path=baseline_path or settings.baseline, started=started)  # fmt: skip


def on_server_accuracy(
    server: Server,
    *,
    model_dir: Path,
    settings: AccuracySettings | None,
    engine: EngineSettings,
    serve: ServeSettings,
    include_path: str | Path | None,
    output_dir: str | Path | None,
    published_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The accuracy stage's engine side on this server (npuport.accuracy.accuracy.engine_side), or why not."""
    if settings is None or not settings.enabled:
        return accuracy_not_run("accuracy.enabled is false in the pipeline config")
    if not server.ready:
        return accuracy_not_run(f"the server did not get ready: {server.failure}")
    if output_dir is None:
        raise ValueError("accuracy_dir is required when accuracy is enabled")
    return engine_side(base_url=server.url, served_model=str(server.served_model), model_dir=model_dir,
                       settings=settings, include_path=Path(include_path) if include_path else None,
                       max_length=engine.max_model_len, output_dir=Path(output_dir),
                       timeout_s=serve.request_timeout_s,
                       published_dir=Path(published_dir) if published_dir else None)  # fmt: skip


def limits_document(points: list[dict[str, Any]], capacity: dict[str, Any], *, max_num_seqs: int) -> dict[str, Any]:
    """The knee of each ladder series and the limit the server reached first, over the ladder's points and the
    capacity probes' runs (npuport.engines.capacity.knee, limits)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p.get("status") == "ok":
            series.setdefault(f"in{p['input_len']}-out{p['output_len']}", []).append(p)
    knees = [{"series": name, **cap.knee(found)} for name, found in series.items()]
    runs = [*points, *(r for probe in capacity.get("probes") or [] for r in probe.get("runs") or [])]
    return {"knees": knees, **cap.limits(runs, knees, max_num_seqs=max_num_seqs)}


def conclude(
    doc: dict[str, Any],
    server: Server,
    results: list[PointResult],
    *,
    model_dir: Path,
    env: dict[str, Any],
    engine: EngineSettings,
    settings: BenchSettings,
    baseline: dict[str, Any] | None,
    baseline_path: str | None,
    started: float,
) -> dict[str, Any]:
    """The stage's status and the three checks over the ladder's results."""
    doc["status"], doc["reason"] = stage_status(server, results)
    doc["points"] = [r.as_dict() for r in results]
    doc["held"] = held_check(results)
    if not settings.enabled:
        doc["held"]["reason"] = "bench.enabled is false in the pipeline config: no ladder ran"
    doc["efficiency"] = efficiency_check(results, model_dir=model_dir, engine=engine, env=env, settings=settings)
    doc["regression"] = regression_check(doc["points"], baseline, path=baseline_path, min_ratio=settings.min_ratio)
    doc["limits"] = limits_document(doc["points"], doc["capacity"], max_num_seqs=engine.max_num_seqs)
    doc["wall_seconds"] = time.perf_counter() - started
    for check in ("held", "efficiency", "regression"):
        log.info("bench %s: %s (%s)", check, doc[check]["status"], doc[check]["reason"] or "-")
    log.info("bench: %s%s", doc["status"], f" ({doc['reason']})" if doc["reason"] else "")
    return doc
