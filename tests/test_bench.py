"""The `bench` stage on the real vLLM server (CPU backend here) and vLLM's real serving benchmark, with the tiny random
Llama of tests/test_smoke.py; the serve check's failure branches against real loopback server processes.

Cost: one offline engine start (smoke.json for the serve check) and ONE server start, which serves the serve check,
the shipped accuracy task, two capacity searches (an objective no load meets, TTFT p99 <= 1 us, the stage's own; and
an objective every load meets, searched on the same server by wrapping the stage's search), and a tiny ladder
(concurrency 1, 2, 4, 8; 16 tokens in, 32 out: long enough that the killer below lands while most of the point's
requests are still open) and is killed (SIGKILL to its process group) during the concurrency-4 point, as an OOM kill
would: the structure is asserted on the points before, the failure path on that point and the one after. Nothing
here asserts a speed: the searches' outcomes are decided by objectives no host can miss or meet.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_accuracy import TASKS
from test_smoke import ENGINE, NO_MATRIX, PROMPTS, build_tiny_llama, generation_settings

from npuport.accuracy.accuracy import AccuracySettings
from npuport.accuracy.accuracy_reference import run_accuracy_reference
from npuport.accuracy.gate import accuracy_check
from npuport.core.errors import NpuportError
from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings
from npuport.engines import bench as bench_module
from npuport.engines.bandwidth import decode_bytes, nominal_bandwidth, select_bandwidth
from npuport.engines.bench import (
    BenchSettings,
    Point,
    PointResult,
    efficiency_check,
    regression_check,
    run_bench,
    run_point,
)
from npuport.engines.capacity import SloSettings
from npuport.engines.deployment import DeploymentsSettings
from npuport.engines.serve_check import (
    OfflineAnswer,
    _cmdline,
    check_prompts,
    descendants,
    group_alive,
    proc_stat,
    serve_document,
    served,
)
from npuport.engines.smoke import run_smoke
from npuport.env.env_probe import probe_environment
from npuport.env.membw import measure_memory_bandwidth

# The stage's objective: TTFT p99 <= 1 us, which no request over HTTP meets; its search probes concurrency 1 and stops
IMPOSSIBLE = {"ttft_ms": 0.001, "tpot_ms": None}
LOOSE = {"ttft_ms": 1e6, "tpot_ms": 1e6}  # 1000 s per token: every run without a failed request meets it
CAPACITY = {"low": 1, "high": 4, "max_probes": 3, "repeats": 2, "requests_per_unit": 2, "min_prompts": 2}
LADDER = {"input_len": [16], "output_len": [32], "concurrency": [1, 2, 4, 8], "num_prompts": 4,
          "prompts_per_concurrency": 4, "num_warmups": 1, "point_timeout_s": 120, "timeout_s": 600,
          "slo": IMPOSSIBLE, "capacity": CAPACITY, "metrics_interval_s": 0.25}  # fmt: skip
KILLED_AT = "in16-out32-c4"  # the point during which the server is killed
WRONG_TEXT = "not what the offline engine said"


# ----------------------------------------------------------------------------------------------- the one server run


def completions_logged(server_log: Path) -> int:
    """/v1/completions requests the server's access log shows so far (logged when the answer starts)."""
    try:
        return server_log.read_text(encoding="utf-8", errors="replace").count("POST /v1/completions")
    except FileNotFoundError:
        return 0


def server_group() -> int:
    """The process group of the vLLM API server this test process started."""
    for pid in descendants(os.getpid()):
        stat = proc_stat(pid)
        if stat and stat.pgrp == pid and "vllm.entrypoints.openai.api_server" in _cmdline(pid):
            return pid
    raise AssertionError("no vLLM API server below this process")


def kill_during(point_before: Path, server_log: Path, stop: threading.Event) -> threading.Thread:
    """A thread that SIGKILLs the server's process group once the point before KILLED_AT has written its result and
    KILLED_AT's warm-up and two of its requests have reached the server."""

    def watch() -> None:
        while not point_before.exists():
            if stop.wait(0.05):
                return
        seen = completions_logged(server_log)
        while completions_logged(server_log) < seen + 3:
            if stop.wait(0.02):
                return
        os.killpg(server_group(), signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("bench") / "model")


@pytest.fixture(scope="module")
def env_doc() -> dict:
    return probe_environment()


@pytest.fixture(scope="module")
def smoke_doc(tiny_model) -> dict:
    """smoke.json of the tiny model (the offline texts), plus one record whose text the server will not give."""
    doc = run_smoke(tiny_model, engine=EngineSettings.from_config(ENGINE),
                    generation=GenerationSettings.from_config(generation_settings()),
                    deployments=DeploymentsSettings.from_config(NO_MATRIX))  # fmt: skip
    assert doc["status"] == "ok", doc["reason"]
    wrong = copy.deepcopy(doc["prompts"][0]) | {"text": WRONG_TEXT}
    return doc | {"prompts": [*doc["prompts"], wrong]}


@pytest.fixture(scope="module")
def bench(tiny_model, smoke_doc, env_doc, tmp_path_factory) -> tuple[dict, Path]:
    """The one server start: the shipped accuracy task (the engine's side), then run_bench over LADDER, the server
    killed during KILLED_AT. Before the stage's own capacity search, the same search with the LOOSE objective runs on
    the same server (its results in out/loose, its record in the returned document's "loose_capacity")."""
    out = tmp_path_factory.mktemp("bench-out")
    results, server_log = out / "bench", out / "server.log"
    stop = threading.Event()
    killer = kill_during(results / "in16-out32-c2.json", server_log, stop)
    searched = {}
    stage_search = bench_module.run_capacity

    def loose_first(server, *, settings, result_dir, **kwargs):
        loose = dataclasses.replace(settings, slo=SloSettings.from_config(LOOSE))
        searched["loose"] = stage_search(server, settings=loose, result_dir=out / "loose", **kwargs)
        return stage_search(server, settings=settings, result_dir=result_dir, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bench_module, "run_capacity", loose_first)
            doc = run_bench(tiny_model, smoke=smoke_doc, env=env_doc, engine=EngineSettings.from_config(ENGINE),
                            generation=GenerationSettings.from_config(generation_settings()),
                            serve=ServeSettings.from_config({}), settings=BenchSettings.from_config(LADDER),
                            result_dir=results, server_log=server_log, accuracy=AccuracySettings.from_config({}),
                            accuracy_dir=out / "accuracy", include_path=TASKS)  # fmt: skip
    finally:
        stop.set()
        killer.join(10)
    json.dumps(doc)  # bench.json is JSON
    return doc | {"loose_capacity": searched.get("loose")}, out


def points(doc: dict) -> dict[str, dict]:
    return {p["name"]: p for p in doc["points"]}


def test_ladder_points_carry_vllms_own_figures(bench):
    doc, out = bench
    assert list(points(doc)) == ["in16-out32-c1", "in16-out32-c2", "in16-out32-c4", "in16-out32-c8"]
    for name in ("in16-out32-c1", "in16-out32-c2"):
        p = points(doc)[name]
        assert p["status"] == "ok", p["reason"]
        assert p["num_prompts"] == 4 * p["concurrency"] and p["completed"] == p["num_prompts"]
        assert p["failed"] == 0 and p["truncated"] == 0 and p["total_output_tokens"] == 32 * p["num_prompts"]
        for key in ("request_throughput", "output_throughput", "total_token_throughput", "tokens_per_user"):
            assert p[key] > 0
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            assert set(p[metric]) == {"mean", "median", "p99"} and all(v > 0 for v in p[metric].values())
        assert p["command"].startswith("vllm bench serve --backend vllm --base-url http://127.0.0.1:")
        assert f"--max-concurrency {p['concurrency']}" in p["command"]
        assert "--dataset-name random --seed 42" in p["command"]
        kept = json.loads((out / p["result_file"]).read_text())  # vLLM's own result JSON, beside bench.json
        assert p["result_file"] == f"bench/{name}.json"
        assert kept["completed"] == p["completed"] and kept["output_throughput"] == p["output_throughput"]
        assert kept["max_concurrency"] == p["concurrency"] and kept["output_lens"] == [32] * p["num_prompts"]


def test_the_accuracy_gate_passes_a_correct_engine_on_a_model_the_task_was_not_written_for(bench, tiny_model, tmp_path):
    """The shipped task on the random tiny Llama: it answers no better than chance, on both sides alike, and the gate
    compares the sides, so a correct engine passes here too (the failing case: tests/test_accuracy.py)."""
    doc, _ = bench
    settings = AccuracySettings.from_config({})
    engine_run = doc["accuracy"]
    assert engine_run["status"] == "ok", engine_run["reason"]
    assert engine_run["command"].startswith("lm_eval --model local-completions")
    reference_run = run_accuracy_reference(tiny_model, settings=settings, include_path=TASKS, dtype="float32",
                                           device="cpu", threads=1, max_length=ENGINE["max_model_len"],
                                           output_dir=tmp_path)  # fmt: skip
    check = accuracy_check(engine_run=engine_run, reference_run=reference_run, alpha=settings.alpha,
                           max_drop=settings.max_drop)  # fmt: skip
    scores = {t: (v["engine"]["score"], v["reference"]["score"], v["p_value"]) for t, v in
              ((v["task"], v) for v in check["tasks"])}  # fmt: skip
    print(f"\nrandom tiny Llama, engine / reference / p: {scores}")
    assert check["status"] == "passed", check["reason"]
    assert reference_run["tasks"]["npuport_tiny_mc"]["score"] < 0.85  # the embedded model's floor in test_accuracy


def test_bench_says_what_ran(bench, tiny_model):
    doc, _ = bench
    assert doc["platform"]["name"] == "cpu" and doc["platform"]["device"].startswith("vLLM CPU backend")
    assert doc["engine"]["name"] == "vllm"
    assert "vllm.entrypoints.openai.api_server" in doc["server"]["command_ran"]
    assert doc["vllm_serve_command"].startswith(f"vllm serve {tiny_model}")
    assert doc["benchmark"]["tool"].startswith("vllm.benchmarks.serve")
    assert doc["settings"]["bench"]["concurrency"] == [1, 2, 4, 8]
    assert doc["settings"]["bench"]["slo"]["ttft_ms"] == 0.001 and doc["settings"]["bench"]["capacity"]["high"] == 4
    eff = doc["efficiency"]
    assert eff["status"] == "measured" and eff["bound"] == "measured"
    assert eff["bandwidth"]["source"] == "env.json: hardware.memory_bandwidth (env_probe)"
    assert eff["bandwidth"]["method"].startswith("numpy copy (STREAM Copy)")
    assert "% of the measured bandwidth bound" in eff["text"]
    row = eff["points"][0]
    assert row["point"] == "in16-out32-c1" and row["decode_source"] == "1000 / mean TPOT (ms)"
    assert row["percent_of_bound"] == pytest.approx(100 * row["decode_tokens_per_s"] / row["bound_tokens_per_s"])
    assert row["bytes_per_token"]["context_tokens"] == 16 + 31 / 2
    if eff["bandwidth"]["last_level_cache_bytes"]:  # a 100 kB model sits in the cache: the figure says so
        assert "fit in the" in eff["note"] and "memory bandwidth does not bound" in eff["note"]
    reg = doc["regression"]
    assert reg["status"] == "not measured" and reg["reason"].startswith("no bench.baseline configured")


def test_serve_check_on_the_bench_server(bench):
    serve = bench[0]["serve"]
    prompts = serve["prompts"]
    assert [p["prompt"] for p in prompts] == [*PROMPTS, PROMPTS[0]]
    assert [p["text_equal_offline"] for p in prompts] == [True, True, True, False]  # real agreement, one planted lie
    assert all(p["prompt_tokens_equal_offline"] and p["completion_tokens_equal_offline"] for p in prompts)
    assert serve["status"] == "failed" and serve["all_text_equal_offline"] is False
    assert serve["reason"] == "served text differs from the offline text for prompt(s) [4] of 4"
    assert serve["startup_seconds"] > 0 and serve["vllm_serve_command"].startswith("vllm serve ")


def test_server_killed_mid_ladder_fails_the_stage_with_the_count(bench):
    doc, _ = bench
    killed, after = points(doc)[KILLED_AT], points(doc)["in16-out32-c8"]
    assert killed["status"] == "failed" and killed["num_prompts"] == 16
    lost = killed["num_prompts"] - killed["completed"]
    assert lost >= 4 and killed["failed"] == lost and killed["errors"]  # killed after the 2nd of 16 requests began
    assert killed["reason"].startswith(f"{lost} of 16 requests failed")
    assert after["status"] == "not run" and after["reason"] == "the server exited with code -9 before this point"
    assert doc["status"] == "failed" and "the server exited during the ladder (code -9)" in doc["reason"]
    held = doc["held"]
    assert held["status"] == "failed" and held["failed_requests"] == lost and held["truncated_requests"] == 0
    assert set(held["points_not_ok"]) == {KILLED_AT, "in16-out32-c8"}
    assert doc["server"]["exited_before_shutdown"] == -9
    assert doc["server"]["shutdown"]["all_gone"] and not group_alive(doc["server"]["shutdown"]["pgid"])


def test_regression_gate_against_an_earlier_bench_json(bench):
    doc, _ = bench
    same = regression_check(doc["points"], doc, path="earlier/bench.json", min_ratio=0.97)
    assert same["status"] == "passed" and same["baseline"] == "earlier/bench.json"
    ratios = {p["point"]: p["ratio"] for p in same["points"]}
    assert ratios == {"in16-out32-c1": 1.0, "in16-out32-c2": 1.0, KILLED_AT: None, "in16-out32-c8": None}
    faster = copy.deepcopy(doc)
    for p in faster["points"]:
        p["output_throughput"] = (p.get("output_throughput") or 0) * 1.1  # the earlier run was 10 % faster
    slower = regression_check(doc["points"], faster, path="earlier/bench.json", min_ratio=0.97)
    assert slower["status"] == "failed" and "in16-out32-c1" in slower["reason"]
    assert all(p["passed"] is False for p in slower["points"] if p["ratio"] is not None)
    assert regression_check(doc["points"], faster, path="x", min_ratio=0.9)["status"] == "passed"
    other = regression_check(doc["points"], {"points": [{"input_len": 1024}]}, path="x", min_ratio=0.97)
    assert other["status"] == "not measured" and "no point" in other["reason"]
    assert regression_check(doc["points"], [], path="x", min_ratio=0.97)["status"] == "not measured"


def test_an_objective_no_load_meets_is_said_after_one_probe(bench):
    """The stage's search on TTFT p99 <= 1 us: concurrency 1, the lower bound, fails in both repeats (vLLM's own
    TTFT percentile, its goodput 0), and the search says no point meets it."""
    doc, out = bench
    found = doc["capacity"]
    assert found["status"] == "none meets it" and found["capacity"] is None
    assert found["objective"] == "TTFT p99 ≤ 0.001 ms"
    assert found["interval"] == {"at_least": None, "below": 1} and found["reason"].startswith("no load in the searched")
    [probe] = found["probes"]
    assert probe["value"] == 1 and probe["verdict"] == "not met" and (probe["met"], probe["repeats"]) == (0, 2)
    for run in probe["runs"]:
        assert run["status"] == "ok" and run["concurrency"] == 1 and run["num_prompts"] == 2
        assert run["objective"]["met"] is False and run["objective"]["reason"].startswith("TTFT p99 ")
        assert run["goodput_req_s"] == 0 and run["objective"]["share_within"] == 0
        assert "--goodput ttft:0.001" in run["command"] and "--max-concurrency 1" in run["command"]
        assert json.loads((out / run["result_file"]).read_text())["request_goodput"] == 0  # vLLM's own figure
    assert doc["limits"]["reached"]["objective"]["concurrency"] == 1
    assert "objective" in doc["limits"]["first"] and doc["limits"]["first_concurrency"] == 1


def test_an_objective_every_load_meets_gives_the_top_of_the_searched_range(bench):
    """The same search with TTFT and TPOT p99 <= 1000 s on the same server: concurrency 1, 2 and 4 (the upper
    bound) each meet it in both repeats, every request within it."""
    doc, out = bench
    loose = doc["loose_capacity"]
    assert loose["status"] == "measured" and loose["capacity"] == 4 and loose["top_of_range"]
    assert loose["interval"] == {"at_least": 4, "below": None} and loose["stopped_by"] is None
    verdicts = [(p["value"], p["verdict"], p["met"]) for p in loose["probes"]]
    assert verdicts == [(1, "met", 2), (2, "met", 2), (4, "met", 2)]
    for probe in loose["probes"]:
        for run in probe["runs"]:
            assert run["objective"]["met"] is True and run["objective"]["share_within"] == 1
            assert run["num_prompts"] == max(2, 2 * int(probe["value"])) and run["failed"] == 0
            assert (out / "loose" / f"{run['name']}.json").is_file()


def test_every_run_has_its_steady_window_and_the_servers_own_metrics(bench):
    """Ladder points and probes: the steady window leaves out the requests sent before the concurrency was reached
    (ramp-up) and the tokens after the last request was sent (drain); /metrics was scraped during each run and
    vLLM exposes all four metrics."""
    doc, _ = bench
    ladder_runs = [points(doc)[name] for name in ("in16-out32-c1", "in16-out32-c2")]
    for run in ladder_runs:  # TTFT p99 <= 1 us on the ladder too: goodput 0
        assert run["objective"]["met"] is False and run["goodput_req_s"] == 0 and run["objective"]["within"] == 0
    for run in ladder_runs + [r for p in doc["loose_capacity"]["probes"] for r in p["runs"]]:
        c, steady, metrics = run["concurrency"], run["steady"], run["server_metrics"]
        assert steady["target"] == c and 0 < steady["requests"] <= run["num_prompts"] - (c - 1), run["name"]
        assert 0 <= steady["start_s"] <= steady["end_s"] and steady["window_s"] > 0
        assert 0 < steady["output_tokens"] <= run["total_output_tokens"]
        assert steady["output_throughput"] == pytest.approx(steady["output_tokens"] / steady["window_s"])
        assert metrics["status"] == "measured" and metrics["missing"] == [] and metrics["samples"] >= 2
        assert metrics["failed_scrapes"] == 0 and metrics["preemptions"] >= 0
        assert 0 <= metrics["kv_cache_usage"]["max"] <= 1 and 0 <= metrics["running"]["max"] <= ENGINE["max_num_seqs"]
        assert int(metrics["cache"]["num_gpu_blocks"]) > 0
    assert [k["series"] for k in doc["limits"]["knees"]] == ["in16-out32"]


# ------------------------------------------------------------------------------------ paths without a vLLM server


def bench_settings(**overrides) -> BenchSettings:
    return BenchSettings.from_config(LADDER | overrides)


def test_disabled_bench_starts_nothing(tiny_model, tmp_path):
    common = {"env": {}, "engine": EngineSettings.from_config(ENGINE), "result_dir": tmp_path,
              "generation": GenerationSettings.from_config(generation_settings())}  # fmt: skip
    serve_off = {"serve": ServeSettings.from_config({"enabled": False})}
    off = run_bench(tiny_model, smoke={"status": "ok"}, settings=bench_settings(enabled=False), **common, **serve_off)
    assert off["status"] == "not run" and off["reason"].endswith("bench.enabled are false in the pipeline config")
    assert off["accuracy"]["status"] == "not run"
    assert off["points"] == [] and off["server"] is None and off["serve"]["status"] == "not run"
    assert off["capacity"]["status"] == "not run" and off["capacity"]["probes"] == []
    common["serve"] = ServeSettings.from_config({})
    broken = run_bench(tiny_model, smoke={"status": "failed", "reason": "boom"}, settings=bench_settings(), **common)
    assert broken["status"] == "not run" and "smoke.json status 'failed': boom" in broken["reason"]
    with pytest.raises(NpuportError, match="in600-out32-c1 needs 632 tokens, more than engine.max_model_len 512"):
        run_bench(tiny_model, smoke={"status": "ok"}, settings=bench_settings(input_len=[600]), **common)


def test_nominal_bandwidth_table():
    expected = {
        "NVIDIA H200": 4.8e12, "NVIDIA H20": 4.0e12, "NVIDIA H100 80GB HBM3": 3.35e12, "NVIDIA H100 PCIe": 2.0e12,
        "NVIDIA H100 NVL": 3.9e12, "NVIDIA A100-SXM4-80GB": 2.039e12, "NVIDIA A100 80GB PCIe": 1.935e12,
        "NVIDIA A100-PCIE-40GB": 1.555e12, "NVIDIA A100-SXM4-40GB": 1.555e12,
    }  # fmt: skip
    for name, value in expected.items():
        sheet = nominal_bandwidth(name)
        assert sheet.bytes_per_s == pytest.approx(value), name
        assert "nvidia.com" in sheet.source or sheet.source.startswith("secondary:"), name
    for name in ("910B3", "Ascend910B4", "910B1"):
        assert nominal_bandwidth(name).bytes_per_s is None and "bench.bandwidth_gb_s" in nominal_bandwidth(name).source
    assert nominal_bandwidth("NVIDIA GH200 480GB") is None and nominal_bandwidth("CPU") is None


def test_efficiency_is_labelled_with_its_bound(tiny_model):
    engine = EngineSettings.from_config(ENGINE)
    single = [PointResult(Point(16, 8, 1, 4), "ok", metrics={"tpot_ms": {"mean": 2.0}})]
    h200 = {"platform": "cuda", "accelerators": {"cuda": {"devices": [{"name": "NVIDIA H200"}]}}}
    eff = efficiency_check(single, model_dir=tiny_model, engine=engine, env=h200, settings=bench_settings())
    # 2 layers x 1 KV head x head_dim 32, K and V, bf16; every weight but the input embedding table (one row of it)
    kv_per_token = 2 * 2 * 1 * 32 * 2
    weights = 2 * (2 * (64 * 64 + 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 512 * 64 + 64)
    total = weights + kv_per_token * (16 + (8 - 1) / 2)  # the KV cache at the mean context of the decode steps
    assert eff["bound"] == "nominal" and "% of the nominal bandwidth bound" in eff["text"]
    assert eff["points"][0]["bound_tokens_per_s"] == pytest.approx(4.8e12 / total)
    assert eff["points"][0]["decode_tokens_per_s"] == 500.0
    read = decode_bytes(tiny_model, dtype="bfloat16", context_tokens=19.5)
    assert read.kv_cache_per_token == kv_per_token and read.weights == weights and read.total == total
    npu = {"platform": "npu", "accelerators": {"npu_smi": {"parsed": {"model": "910B3"}}}}
    eff = efficiency_check(single, model_dir=tiny_model, engine=engine, env=npu, settings=bench_settings())
    assert eff["status"] == "not measured" and "910B3" in eff["reason"] and "bench.bandwidth_gb_s" in eff["reason"]
    configured = bench_settings(bandwidth_gb_s=1600)
    eff = efficiency_check(single, model_dir=tiny_model, engine=engine, env=npu, settings=configured)
    assert eff["bound"] == "configured" and "% of the configured bandwidth bound" in eff["text"]
    assert select_bandwidth(npu, 1600, devices=2)["bytes_per_s"] == 3.2e12
    assert eff["note"] is None
    # a measured bandwidth the decode itself exceeds (as one measured while other jobs ran): said, not a percentage
    slow = {
        "platform": "cpu",
        "hardware": {"memory_bandwidth": {"kind": "measured", "bytes_per_s": 1e6, "method": "copy"}},
    }
    eff = efficiency_check(single, model_dir=tiny_model, engine=engine, env=slow, settings=bench_settings())
    assert eff["percent_of_bound"] > 100 and "understates this host's memory bandwidth" in eff["note"]
    none = efficiency_check([], model_dir=tiny_model, engine=engine, env=h200, settings=bench_settings())
    assert none["status"] == "not measured" and none["reason"] == "the ladder has no concurrency-1 point"


def test_memory_bandwidth_probe_reports_its_method(env_doc):
    measured = env_doc["hardware"]["memory_bandwidth"]
    assert measured["kind"] == "measured" and measured["bytes_per_s"] > 0
    assert measured["buffer_bytes"] >= 4 * (measured["last_level_cache_bytes"] or 0)
    assert len(measured["samples_gb_per_s"]) == 5 and "best of 5" in measured["method"]
    assert measured["gb_per_s"] == max(measured["samples_gb_per_s"])  # STREAM's best rate: a bound, not a typical
    one = measure_memory_bandwidth(size=8 << 20, repeats=3, threads=1)
    assert one["threads"] == 1 and "8 MiB buffer" in one["method"] and len(one["samples_gb_per_s"]) == 3


# ------------------------------------------------------------------ the serve check's failure branches, real processes

FAKE_SERVER = textwrap.dedent("""
    import http.server, json, os, signal, sys, time
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "ignores-sigint":  # a server that chose to ignore SIGINT itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mode == "exit":
        print("fatal: cannot load the weights (fake server)", flush=True)
        sys.exit(3)
    if mode == "orphan" and os.fork() == 0:
        os.setsid()  # leaves the server's process group, as an engine process that escapes it would
        time.sleep(600)
        os._exit(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.answer({"data": [{"id": "fake"}]} if self.path == "/v1/models" else {})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if mode == "hang":  # far longer than any deadline the tests set; the file says when it ended
                time.sleep(600)
                open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hang-ended"), "w").close()
            self.answer({"choices": [{"text": "served", "finish_reason": "length"}],
                         "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")
OFFLINE = [OfflineAnswer("Hello", [1, 5], "served", 1)]


def fake_server(tmp_path: Path, mode: str):
    """``served`` on the fake server. Its deadlines are hang guards, far above what a loaded host needs to start a
    small Python and answer on loopback; only the "hang" mode's requests are meant to reach theirs (its answer takes
    600 s)."""
    from npuport.engines.serve_check import free_port

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER, encoding="utf-8")
    port = free_port("127.0.0.1")
    serve = ServeSettings.from_config({"startup_timeout_s": 120, "request_timeout_s": 10 if mode == "hang" else 60})
    return served([sys.executable, str(script), mode, str(port)], url=f"http://127.0.0.1:{port}", serve=serve,
                  log_path=tmp_path / "server.log"), serve  # fmt: skip


def serve_check(tmp_path: Path, mode: str, offline=OFFLINE) -> dict:
    context, serve = fake_server(tmp_path, mode)
    with context as server:
        check = check_prompts(server, offline, generation=GenerationSettings.from_config(generation_settings()),
                              serve=serve)  # fmt: skip
    return serve_document(server, check, vllm_serve_command="vllm serve fake")


def test_serve_check_passes_on_the_same_text(tmp_path):
    doc = serve_check(tmp_path, "ok")
    assert doc["status"] == "ok" and doc["all_text_equal_offline"] is True and doc["served_model"] == "fake"
    assert doc["shutdown"]["processes_left"] is False and doc["shutdown"]["all_gone"]


def test_serve_check_fails_on_other_text(tmp_path):
    doc = serve_check(tmp_path, "ok", [OfflineAnswer("Hello", [1, 5], "offline", 1)])
    assert doc["status"] == "failed" and doc["all_text_equal_offline"] is False
    assert doc["reason"] == "served text differs from the offline text for prompt(s) [1] of 1"


def test_serve_check_fails_with_the_log_tail_when_the_server_does_not_answer(tmp_path):
    died = serve_check(tmp_path, "exit")
    assert died["status"] == "failed" and died["reason"] == "server exited with code 3 before /health answered"
    assert died["log_tail"] == ["fatal: cannot load the weights (fake server)"] and died["prompts"] == []
    hangs = serve_check(tmp_path, "hang")
    assert hangs["status"] == "failed" and hangs["reason"].startswith("request 1 failed: TimeoutError")
    assert hangs["shutdown"]["all_gone"]


def test_processes_left_after_shutdown_are_reported_and_killed(tmp_path):
    doc = serve_check(tmp_path, "orphan")
    left = doc["shutdown"]["left_after_shutdown"]
    assert doc["shutdown"]["processes_left"] is True and len(left) == 1 and "fake_server.py" in left[0]["cmdline"]
    assert doc["status"] == "failed" and doc["reason"] == f"server processes left after shutdown: [{left[0]['pid']}]"
    stat = proc_stat(left[0]["pid"])
    deadline = time.monotonic() + 60  # a hang guard: SIGKILL ends it as soon as the kernel gets to it
    while stat is not None and stat.state != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
        stat = proc_stat(left[0]["pid"])
    assert stat is None or stat.state == "Z"  # killed by pid (a zombie until its new parent reaps it)


@pytest.fixture
def long_graces(monkeypatch):
    """Grace periods far beyond what the fake server needs to act on a signal: which signal ends it is then decided by
    what the server does with each signal (the fake's code), never by how fast this host runs."""
    from npuport.engines import serve_check

    for name in ("STOP_GRACE_S", "TERM_GRACE_S", "KILL_GRACE_S"):
        monkeypatch.setattr(serve_check, name, 600)


def stopped_gracefully(shutdown: dict) -> bool:
    """The record of a stop that SIGINT alone ended, with nothing left behind."""
    return (shutdown["signal"] == "SIGINT" and shutdown["signals_sent"] == ["SIGINT"]
            and shutdown["ignored_by_server"] == [] and shutdown["all_gone"] and not shutdown["processes_left"]
            and shutdown["left_after_shutdown"] == [] and not group_alive(shutdown["pgid"]))  # fmt: skip


def test_server_stopped_when_the_block_raises(tmp_path, long_graces):
    context, _ = fake_server(tmp_path, "ok")
    with pytest.raises(RuntimeError, match="the benchmark blew up"), context as server:
        pgid = server.proc.pid
        assert server.ready and group_alive(pgid)
        raise RuntimeError("the benchmark blew up")
    assert server.shutdown["pgid"] == pgid and stopped_gracefully(server.shutdown), server.shutdown
    assert server.shutdown["seconds"] >= 0 and server.shutdown["returncode"] is not None


# What a pipeline started as a background job is: `cmd &` in a non-interactive shell starts it with SIGINT ignored,
# before Python starts (so Python installs no KeyboardInterrupt handler), and every process it starts inherits that.
BACKGROUND_JOB = textwrap.dedent("""
    import json, signal, sys
    from npuport.core.settings import ServeSettings
    from npuport.engines import serve_check
    for name in ("STOP_GRACE_S", "TERM_GRACE_S", "KILL_GRACE_S"):
        setattr(serve_check, name, 600)  # as the long_graces fixture
    script, port = sys.argv[1], int(sys.argv[2])
    serve = ServeSettings.from_config({"startup_timeout_s": 120, "request_timeout_s": 60})
    with serve_check.served([sys.executable, script, "ok", str(port)], url=f"http://127.0.0.1:{port}",
                            serve=serve) as server:
        ready = server.ready
    print("RESULT" + json.dumps({"inherited_sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                                 "ready": ready, "shutdown": server.shutdown}))
""")


def test_server_started_from_a_background_job_stops_on_sigint(tmp_path):
    """The stage's server, started the way a background job starts it (SIGINT ignored from the start of the stage's
    process): the server still ends on the SIGINT that stop_group sends first, and the record says so."""
    from npuport.engines.serve_check import free_port

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER, encoding="utf-8")
    job = [sys.executable, "-c", BACKGROUND_JOB, str(script), str(free_port("127.0.0.1"))]
    launch = ("import signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
              "sys.exit(subprocess.run(sys.argv[1:]).returncode)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", launch, *job], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result["inherited_sigint_ignored"] is True  # the stage really ran as a background job's would
    assert result["ready"] is True
    assert stopped_gracefully(result["shutdown"]), result["shutdown"]


def test_a_signal_the_server_ignores_is_not_sent(tmp_path, long_graces):
    """A server that ignores SIGINT itself: stop_group sees it (SigIgn) and starts with SIGTERM instead of waiting
    out SIGINT's grace period; the record names both."""
    context, _ = fake_server(tmp_path, "ignores-sigint")
    with context as server:
        assert server.ready
    shutdown = server.shutdown
    assert shutdown["ignored_by_server"] == ["SIGINT"] and shutdown["signals_sent"] == ["SIGTERM"]
    assert shutdown["signal"] == "SIGTERM" and shutdown["all_gone"] and not shutdown["processes_left"]
    assert not group_alive(shutdown["pgid"])


def test_point_bounded_in_time_and_benchmark_errors_recorded(tmp_path, tiny_model):
    context, _ = fake_server(tmp_path, "hang")
    point = Point(16, 8, 1, 2)
    with context as server:
        argv = ["--backend", "vllm", "--base-url", server.url, "--model", "fake", "--tokenizer", str(tiny_model),
                "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "8",
                "--num-prompts", "2", "--max-concurrency", "1", "--ready-check-timeout-sec", "0",
                "--disable-tqdm"]  # fmt: skip
        hung = run_point(point, argv, timeout_s=3, result_file="bench/x.json", command="hung")
        hang_ended = (tmp_path / "hang-ended").exists()
        refused = ["--backend", "no-such-backend"]
        bad = run_point(point, refused, timeout_s=30, result_file="bench/x.json", command="bad")
    assert hung.status == "timed out" and hung.reason.startswith("did not finish within 3 s") and not hung.metrics
    assert hung.seconds >= 3  # it waited its whole deadline (monotonic clock) ...
    assert not hang_ended  # ... and returned while the server still held the request (it answers after 600 s)
    assert bad.status == "failed" and bad.reason.startswith("the benchmark raised ValueError: vllm bench serve refused")


def test_the_servers_port_is_free_and_outside_the_ephemeral_range():
    """The server binds its port only after its imports: a port from the kernel's ephemeral range could be handed to
    any outgoing connection meanwhile (a bench server once failed with "Address already in use" on a loaded host)."""
    import socket

    from npuport.engines.serve_check import LOWEST_PORT, ephemeral_ports, free_port

    low, high = ephemeral_ports()
    assert 1024 <= low <= high <= 65535
    for _ in range(20):
        port = free_port("127.0.0.1")
        assert port >= LOWEST_PORT and not low <= port <= high, (port, low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
