"""The server's own Prometheus ``/metrics``, scraped while a benchmark run loads it: KV-cache usage, running and
waiting requests, preemptions (GuideLLM's practice: the server's view beside the client's latencies).

The names are those of the installed vLLM (vllm/v1/metrics/loggers.py: the gauges ``vllm:kv_cache_usage_perc`` (a
fraction, 1 = full), ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and the counter
``vllm:num_preemptions``, exposed as ``vllm:num_preemptions_total``), read with prometheus_client's text parser (a
vLLM dependency). Several engines (data parallel) each expose their own series: running, waiting and preemptions are
summed over them, KV-cache usage is the fullest engine's. ``vllm:cache_config_info`` gives the KV cache's size.

Nothing here raises for what the server does: a metric the server does not expose is ``missing`` (its figures None),
a scrape that fails is counted with its error, and a server without /metrics gives a summary that says so. Sample
times are ``time.perf_counter()`` of this process, the clock vLLM's in-process benchmark stamps its requests with,
so a summary can be cut to a request window (the steady state, npuport.engines.capacity).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREEMPTIONS = "vllm:num_preemptions_total"
CACHE_INFO = "vllm:cache_config_info"
GAUGES = (KV_USAGE, RUNNING, WAITING)
SCRAPED = (*GAUGES, PREEMPTIONS)
# what a summary keeps of vllm:cache_config_info's labels
CACHE_FACTS = ("num_gpu_blocks", "block_size", "kv_cache_size_tokens", "kv_cache_max_concurrency", "cache_dtype")
SCRAPE_TIMEOUT_S = 5.0
MAX_ERRORS = 3


@dataclass(frozen=True)
class Sample:
    """One scrape: its time (perf_counter) and the value of each scraped metric the server exposed."""

    t: float
    values: dict[str, float]


def parse(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """The scraped metrics in one /metrics text (sums over engines; KV-cache usage: the largest), and the labels of
    ``vllm:cache_config_info`` (first engine). A metric the text does not hold is absent from the result."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    info: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in SCRAPED:
                before = values.get(sample.name)
                if before is None:
                    values[sample.name] = float(sample.value)
                elif sample.name == KV_USAGE:
                    values[sample.name] = max(before, float(sample.value))
                else:
                    values[sample.name] = before + float(sample.value)
            elif sample.name == CACHE_INFO and not info:
                info = {k: v for k, v in sample.labels.items() if k in CACHE_FACTS}
    return values, info


@dataclass
class Scrape:
    """What one scraper saw: samples, the cache facts, failed scrapes (count and first errors)."""

    url: str
    interval_s: float
    samples: list[Sample] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def scrape_once(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode("utf-8", errors="replace")
            values, info = parse(text)
        except (OSError, urllib.error.URLError, ValueError, TypeError) as exc:  # the server's answer: a finding
            self.failures += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        self.samples.append(Sample(time.perf_counter(), values))
        self.cache = self.cache or info

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Per metric over the samples in [start, end] (all when None): gauges max and mean, preemptions the counter's
        increase (last - first sample); ``missing``: scraped metrics no sample held."""
        chosen = [s for s in self.samples if (start is None or s.t >= start) and (end is None or s.t <= end)]
        doc: dict[str, Any] = {"source": f"{self.url} (Prometheus text, every {self.interval_s:g} s)",
                               "samples": len(chosen), "failed_scrapes": self.failures,
                               "errors": list(self.errors)}  # fmt: skip
        if not chosen:
            reason = "no scrape answered" if self.failures else "no scrape in this window"
            return doc | {"status": "not measured", "reason": reason, "missing": list(SCRAPED), "cache": self.cache,
                          **{_key(n): None for n in SCRAPED}}  # fmt: skip
        missing = [n for n in SCRAPED if not any(n in s.values for s in chosen)]
        doc |= {"status": "measured", "reason": None, "missing": missing, "cache": self.cache}
        for name in GAUGES:
            values = [s.values[name] for s in chosen if name in s.values]
            doc[_key(name)] = {"max": max(values), "mean": sum(values) / len(values)} if values else None
        counts = [s.values[PREEMPTIONS] for s in chosen if PREEMPTIONS in s.values]
        doc[_key(PREEMPTIONS)] = counts[-1] - counts[0] if counts else None
        if missing:
            doc["reason"] = f"not exposed by the server: {', '.join(missing)}"
        return doc


def _key(name: str) -> str:
    """bench.json's key of a metric: kv_cache_usage, running, waiting, preemptions."""
    return {KV_USAGE: "kv_cache_usage", RUNNING: "running", WAITING: "waiting", PREEMPTIONS: "preemptions"}[name]


@contextlib.contextmanager
def scraping(base_url: str, interval_s: float) -> Iterator[Scrape]:
    """Scrape ``base_url``/metrics every ``interval_s`` on a thread while the block runs, once right before and
    once right after it (the counter's baseline and its final value)."""
    scrape = Scrape(base_url.rstrip("/") + "/metrics", interval_s)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            scrape.scrape_once()

    scrape.scrape_once()
    thread = threading.Thread(target=loop, name="scrape /metrics", daemon=True)
    thread.start()
    try:
        yield scrape
    finally:
        stop.set()
        thread.join(SCRAPE_TIMEOUT_S + interval_s + 1)
        scrape.scrape_once()
        log.info("/metrics: %d samples, %d failed scrapes", len(scrape.samples), scrape.failures)


def not_scraped(reason: str) -> dict[str, Any]:
    """A run's metrics summary when nothing was scraped (the run did not start)."""
    return {"status": "not measured", "reason": reason, "samples": 0, "missing": list(SCRAPED), "cache": {},
            **{_key(n): None for n in SCRAPED}}  # fmt: skip


def peak(summaries: Sequence[dict[str, Any]], key: str) -> float | None:
    """The largest of one gauge's max (or the counter's increase) over several runs' summaries; None if none has it."""
    values = []
    for s in summaries:
        value = (s or {}).get(key)
        value = value.get("max") if isinstance(value, dict) else value
        if isinstance(value, int | float):
            values.append(value)
    return max(values) if values else None
