"""The capacity search, the objective, the steady-state window, the knee and the limits (npuport.engines.capacity)
and the /metrics scraper (npuport.engines.server_metrics), without vLLM: the search over a load whose outcome the
test decides, vLLM-shaped results written out here, and loopback HTTP servers that expose some metrics or none.
The same code on a real vLLM server: tests/test_bench.py."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time

import pytest

from npuport.core.errors import NpuportError
from npuport.core.settings import schema_defaults, section_schema
from npuport.engines.bench import BenchSettings
from npuport.engines.capacity import (
    KNEE_SHARE,
    CapacitySettings,
    SloSettings,
    Stop,
    knee,
    limits,
    objective,
    search,
    steady_window,
)
from npuport.engines.server_metrics import Scrape, parse, scraping

SLO = SloSettings.from_config({"ttft_ms": 100, "tpot_ms": 10})


def capacity(**overrides) -> CapacitySettings:
    return CapacitySettings.from_config({"low": 1, "high": 16, "max_probes": 10, "repeats": 2} | overrides)


def meets_up_to(limit: float, flaky: dict[float, list[bool]] | None = None):
    """A probe runner whose objective holds up to ``limit``; ``flaky``: loads whose repeats answer as given."""
    calls: list[tuple[float, int]] = []

    def run(value: float, repeat: int):
        calls.append((value, repeat))
        met = flaky[value][repeat] if flaky and value in flaky else value <= limit
        return met, {"name": f"c{value:g}-{repeat}", "concurrency": value, "objective": {"met": met}}

    return run, calls


# ------------------------------------------------------------------------------------------------------------ search


def test_the_search_finds_where_the_objective_starts_failing():
    run, calls = meets_up_to(5)
    doc = search(capacity(), run)
    # EvalScope's order: double from the lower bound until it fails (1, 2, 4, 8), then bisect between 4 and 8
    assert [p["value"] for p in doc["probes"]] == [1, 2, 4, 8, 6, 5]
    assert [p["verdict"] for p in doc["probes"]] == ["met", "met", "met", "not met", "not met", "met"]
    assert all(p["repeats"] == p["planned_repeats"] == 2 for p in doc["probes"]) and len(calls) == 12
    assert doc["status"] == "measured" and doc["capacity"] == 5 and doc["exact"] and not doc["top_of_range"]
    assert doc["interval"] == {"at_least": 5, "below": 6}
    assert doc["reason"] == "5 concurrent requests met it in every repeat, 6 failed it in every repeat"


def test_an_objective_no_load_meets_says_so():
    run, calls = meets_up_to(0)
    doc = search(capacity(), run)
    assert doc["status"] == "none meets it" and doc["capacity"] is None and calls == [(1, 0), (1, 1)]
    assert doc["interval"] == {"at_least": None, "below": 1}
    assert doc["reason"].startswith("no load in the searched range meets it: 1 concurrent requests, the lowest")


def test_an_objective_every_load_meets_gives_the_top_of_the_range():
    run, _ = meets_up_to(1000)
    doc = search(capacity(high=12), run)
    assert [p["value"] for p in doc["probes"]] == [1, 2, 4, 8, 12]  # doubling, capped at the upper bound
    assert doc["status"] == "measured" and doc["capacity"] == 12 and doc["top_of_range"]
    assert doc["interval"] == {"at_least": 12, "below": None}
    assert doc["reason"] == "every probe up to the top of the searched range (12 concurrent requests) met it"


def test_repeats_that_disagree_make_it_indeterminate():
    run, _ = meets_up_to(5, flaky={4: [True, False]})
    doc = search(capacity(), run)
    assert doc["status"] == "indeterminate" and doc["capacity"] is None and doc["disagreed_at"] == 4
    assert doc["probes"][-1] | {"runs": None} == {"value": 4, "verdict": "mixed", "met": 1, "repeats": 2,
                                                  "planned_repeats": 2, "runs": None}  # fmt: skip
    assert doc["interval"] == {"at_least": 2, "below": None}  # what the agreeing probes established
    assert "at 4 concurrent requests 1 of 2 repeats met the objective" in doc["reason"]


def test_the_search_is_bounded_in_probes_and_time():
    run, _ = meets_up_to(5)
    few = search(capacity(max_probes=4), run)  # 1, 2, 4 met, 8 failed: no probe left to bisect
    assert few["status"] == "measured" and few["capacity"] == 4 and not few["exact"]
    assert few["interval"] == {"at_least": 4, "below": 8} and few["stopped_by"].startswith("bench.capacity.max_probes")
    assert few["reason"].startswith("between 4 and 8 concurrent requests: the search stopped")
    rising = search(capacity(max_probes=2), meets_up_to(1000)[0])
    assert rising["capacity"] == 2 and rising["interval"]["below"] is None and not rising["top_of_range"]
    assert rising["reason"].startswith("not searched above 2 concurrent requests")
    now = [0.0]

    def slow(value, repeat):
        now[0] += 50  # every run takes 50 s of a fake clock
        return True, {}

    timed = search(capacity(timeout_s=120), slow, clock=lambda: now[0])
    assert timed["run_count"] == 3 and timed["stopped_by"] == "bench.capacity.timeout_s (120 s) was spent"
    assert timed["capacity"] == 1 and timed["probes"][-1]["verdict"] == "stopped"


def test_a_server_gone_stops_the_search_with_the_reason():
    def gone(value, repeat):
        raise Stop("the server exited with code -9")

    doc = search(capacity(), gone)
    assert doc["status"] == "not run" and doc["reason"] == "the server exited with code -9"


def test_a_request_rate_search_bisects_to_its_resolution():
    run, _ = meets_up_to(2.7)
    doc = search(capacity(variable="request_rate", low=0.5, high=8, resolution=0.25), run)
    assert [p["value"] for p in doc["probes"]] == [0.5, 1, 2, 4, 3, 2.5, 2.75]
    assert doc["capacity"] == 2.5 and doc["interval"] == {"at_least": 2.5, "below": 2.75} and doc["exact"]
    assert doc["unit"] == "requests/s"


def test_capacity_settings_are_the_schema_and_refuse_what_it_does():
    for settings in (BenchSettings, SloSettings, CapacitySettings):
        names = [f.name for f in dataclasses.fields(settings)]
        assert names == list(section_schema(settings.SECTION)["properties"]), settings.SECTION
    assert BenchSettings.from_config({}).as_dict() == schema_defaults("bench")
    with pytest.raises(NpuportError, match="variable"):
        CapacitySettings.from_config({"variable": "parallel"})
    with pytest.raises(NpuportError, match="unknown key"):
        BenchSettings.from_config({"slo": {"ttft": 5}})
    assert capacity().num_prompts(4) == 8 and capacity(min_prompts=12).num_prompts(4) == 12


# ---------------------------------------------------------------------------------------------------- the objective


def vllm_result(**fields) -> dict:
    return {"duration": 2.0, "request_goodput": 3.0, "p99_ttft_ms": 80.0, "p99_tpot_ms": 9.0} | fields


def test_a_run_meets_the_objective_on_vllms_percentiles_and_goodput():
    doc = objective(vllm_result(), sent=8, lost=0, truncated=0, slo=SLO)
    assert doc["met"] is True and doc["reason"] is None and doc["objective"] == "TTFT p99 ≤ 100 ms, TPOT p99 ≤ 10 ms"
    assert doc["goodput_req_s"] == 3.0 and doc["within"] == 6 and doc["share_within"] == 0.75  # 3 req/s x 2 s of 8
    slow = objective(vllm_result(p99_ttft_ms=150.0), sent=8, lost=0, truncated=0, slo=SLO)
    assert slow["met"] is False and slow["reason"] == "TTFT p99 150 ms > 100 ms"
    lost = objective(vllm_result(), sent=8, lost=1, truncated=0, slo=SLO)  # a failed request fails the run
    assert lost["met"] is False and lost["reason"] == "1 of 8 requests failed, 0 truncated"
    p90 = SloSettings.from_config({"ttft_ms": 100, "ttft_percentile": 99.9, "tpot_ms": None})
    assert p90.goodput_args() == ["--goodput", "ttft:100"] and p90.percentiles() == [99.9]
    assert objective(vllm_result(**{"p99.9_ttft_ms": 90.0}), sent=8, lost=0, truncated=0, slo=p90)["met"] is True


# --------------------------------------------------------------------------------------------------- steady window


def detailed(starts, latencies, ttft=0.1, tokens=5, errors=None) -> dict:
    """vLLM's detailed result: each request's tokens evenly spaced after its TTFT."""
    gap = [(lat - ttft) / (tokens - 1) for lat in latencies]
    return {"start_times": starts, "latencies": latencies, "ttfts": [ttft] * len(starts),
            "itls": [[g] * (tokens - 1) for g in gap], "output_lens": [tokens] * len(starts),
            "errors": errors or [""] * len(starts)}  # fmt: skip


def test_the_steady_window_excludes_ramp_up_and_drain():
    # concurrency 2: requests 0 and 1 start at 0.0 and 0.01 (in flight reaches 2 at 0.01), then each end is
    # followed by the next start; the last request starts at 3.0, after which only the drain is left
    starts = [0.0, 0.01, 1.0, 1.01, 2.0, 2.01, 3.0]
    raw = detailed(starts, [0.999] * 6 + [0.9])  # each request ends 1 ms before the next one starts
    doc = steady_window(raw, target=2, slo=SLO)
    assert doc["start_s"] == 0.01 and doc["end_s"] == 3.0 and doc["window_s"] == pytest.approx(2.99)
    assert doc["requests"] == 6  # request 0 started before the window (ramp-up): out
    inside = sum(1 for i, s in enumerate(starts) for k in range(5) if 0.01 <= s + 0.1 + k * (raw["itls"][i][0]) <= 3.0)
    assert doc["output_tokens"] == inside < 35  # tokens after 3.0 (the drain) are not counted
    assert doc["output_throughput"] == pytest.approx(inside / 2.99)
    assert not doc["long_enough"] and "a third of the" in doc["reason"]  # 1 s requests in a 3 s window
    long = steady_window(detailed([i * 0.1 for i in range(40)], [0.15] * 40), target=2, slo=SLO)
    assert long["long_enough"] and long["reason"] is None and set(long["ttft_ms"]) == {"p50", "p99"}
    assert long["tpot_ms"]["p50"] == pytest.approx((0.15 - 0.1) / 4 * 1000)


def test_a_run_that_never_reaches_its_concurrency_has_no_steady_window():
    doc = steady_window(detailed([0.0, 2.0], [1.0, 1.0]), target=2, slo=SLO)
    assert doc["window_s"] is None and doc["reason"] == "the requests in flight never reached 2"
    at_once = steady_window(detailed([0.0, 0.0], [1.0, 1.0]), target=2, slo=SLO)
    assert at_once["window_s"] == 0 and at_once["reason"].startswith("a window of 0 s")
    failed = steady_window(detailed([0.0], [0.0], errors=["boom"]), target=1, slo=SLO)
    assert failed["reason"] == "no request completed"
    rate = steady_window(detailed([0.0, 0.5, 1.5], [0.2, 0.2, 0.2]), target=None, slo=SLO)
    assert rate["window_s"] == 1.5 and rate["requests"] == 3 and "no concurrency target" in rate["rule"]


# ----------------------------------------------------------------------------------------------- knee and limits


def test_the_knee_is_where_throughput_stops_rising():
    points = [{"concurrency": c, "output_throughput": t, "name": f"c{c}"} for c, t in ((1, 10), (2, 19), (4, 30),
                                                                                      (8, 31), (16, 31.5))]  # fmt: skip
    found = knee(points)
    assert found["concurrency"] == 4 and found["point"] == "c4" and found["peak"] == 31.5
    assert 30 >= KNEE_SHARE * 31.5 > 19
    rising = knee(points[:3])
    assert rising["concurrency"] is None and rising["reason"].startswith("throughput still rising at the top")
    assert knee(points[:1])["reason"] == "fewer than two measured points"


def test_the_limit_reached_first_is_named_with_its_evidence():
    def run(c, *, met=True, kv=0.1, preempted=0, running=None, waiting=0):
        return {"name": f"c{c}", "concurrency": c, "objective": {"met": met, "reason": None if met else "TTFT"},
                "server_metrics": {"kv_cache_usage": {"max": kv}, "preemptions": preempted,
                                   "running": {"max": running if running is not None else c},
                                   "waiting": {"max": waiting}}}  # fmt: skip

    runs = [run(1), run(2), run(4, running=4, waiting=0), run(8, running=4, waiting=4), run(16, met=False, kv=0.97)]
    knees = [{"concurrency": 8, "point": "c8", "output_throughput": 30.0, "peak": 31.0}]
    doc = limits(runs, knees, max_num_seqs=4)
    assert doc["first"] == ["batch_slots", "compute"] and doc["first_concurrency"] == 8
    assert doc["reached"]["batch_slots"]["evidence"] == "4 requests running (engine.max_num_seqs 4), 4 waiting"
    assert doc["reached"]["objective"]["concurrency"] == 16 and doc["reached"]["kv_cache"]["concurrency"] == 16
    assert doc["highest_concurrency"] == 16
    none = limits(runs[:2], [], max_num_seqs=4)
    assert none["first"] == [] and none["reached"] == {k: None for k in ("objective", "kv_cache", "batch_slots",
                                                                         "compute")}  # fmt: skip
    preempted = limits([run(2, preempted=3, kv=None)], [], max_num_seqs=4)
    assert preempted["first"] == ["kv_cache"] and preempted["reached"]["kv_cache"]["evidence"] == "3 preemptions"


# -------------------------------------------------------------------------------------------------- the scraper

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="2048",kv_cache_size_tokens="32768"} 1.0
"""


def test_metrics_text_is_read_over_engines():
    values, info = parse(VLLM_TEXT)
    assert values == {"vllm:num_requests_running": 5.0, "vllm:num_requests_waiting": 1.0,
                      "vllm:kv_cache_usage_perc": 0.5, "vllm:num_preemptions_total": 7.0}  # fmt: skip
    assert info == {"block_size": "16", "num_gpu_blocks": "2048", "kv_cache_size_tokens": "32768"}


class MetricsServer:
    """A loopback HTTP server whose /metrics answers what the test sets (status and text)."""

    def __init__(self):
        self.status, self.text = 200, ""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.text.encode()
                self.send_response(outer.status if self.path == "/metrics" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def metrics_server():
    server = MetricsServer()
    yield server
    server.close()


def test_the_scrape_survives_a_server_without_a_metric(metrics_server):
    partial = "\n".join(line for line in VLLM_TEXT.splitlines() if "kv_cache_usage" not in line) + "\n"
    metrics_server.text = partial.replace("7.0", "2.0")
    with scraping(metrics_server.url, 0.05) as scrape:
        metrics_server.text = partial.replace("7.0", "5.0")
        time.sleep(0.3)
    doc = scrape.summary()
    assert doc["status"] == "measured" and doc["samples"] >= 2 and doc["failed_scrapes"] == 0
    assert doc["missing"] == ["vllm:kv_cache_usage_perc"] and doc["kv_cache_usage"] is None
    assert doc["reason"] == "not exposed by the server: vllm:kv_cache_usage_perc"
    assert doc["running"]["max"] == 5.0 and doc["waiting"] == {"max": 1.0, "mean": 1.0}
    assert doc["preemptions"] == 3.0  # the counter's increase while the run went: 5 - 2
    assert doc["cache"]["num_gpu_blocks"] == "2048"
    empty = scrape.summary(start=time.perf_counter() + 10)
    assert empty["status"] == "not measured" and empty["reason"] == "no scrape in this window"


def test_the_scrape_survives_a_server_without_metrics(metrics_server):
    metrics_server.status = 404
    with scraping(metrics_server.url, 0.05) as scrape:
        time.sleep(0.2)
    doc = scrape.summary()
    assert doc["status"] == "not measured" and doc["reason"] == "no scrape answered" and doc["samples"] == 0
    assert doc["failed_scrapes"] >= 2 and doc["errors"][0].startswith("HTTPError: HTTP Error 404")
    assert doc["kv_cache_usage"] is None and doc["preemptions"] is None and len(doc["errors"]) <= 3
    metrics_server.status, metrics_server.text = 200, "this is not prometheus text {{{"
    garbled = Scrape(metrics_server.url + "/metrics", 1.0)
    garbled.scrape_once()
    assert garbled.failures == 1 and garbled.samples == []
