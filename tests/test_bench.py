"""The `bench` stage on the real vLLM server (CPU backend here) and vLLM's real serving benchmark, with the tiny random
Llama of tests/test_smoke.py; the serve check's failure branches against real loopback server processes.

Cost: one offline engine start (smoke.json for the serve check) and ONE server start, which serves the serve check,
the shipped accuracy task and a tiny ladder (concurrency 1, 2, 4, 8; 16 tokens in, 32 out: long enough that the
killer below lands while most of the point's requests are still open) and is killed (SIGKILL to its process group)
during the concurrency-4 point, as an OOM kill would: the structure is asserted on the points before, the failure
path on that point and the one after. Nothing here asserts a speed.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_accuracy import TASKS
from test_smoke import ENGINE, PROMPTS, build_tiny_llama, generation_settings

from npuport.accuracy.accuracy import AccuracySettings
from npuport.accuracy.accuracy_reference import run_accuracy_reference
from npuport.accuracy.gate import accuracy_check
from npuport.core.errors import NpuportError
from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings
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

LADDER = {"input_len": [16], "output_len": [32], "concurrency": [1, 2, 4, 8], "num_prompts": 4,
          "prompts_per_concurrency": 4, "num_warmups": 1, "point_timeout_s": 120, "timeout_s": 600}  # fmt: skip
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
                    generation=GenerationSettings.from_config(generation_settings()))  # fmt: skip
    assert doc["status"] == "ok", doc["reason"]
    wrong = copy.deepcopy(doc["prompts"][0]) | {"text": WRONG_TEXT}
    return doc | {"prompts": [*doc["prompts"], wrong]}


@pytest.fixture(scope="module")
def bench(tiny_model, smoke_doc, env_doc, tmp_path_factory) -> tuple[dict, Path]:
    """The one server start: the shipped accuracy task (the engine's side), then run_bench over LADDER, the server
    killed during KILLED_AT."""
    out = tmp_path_factory.mktemp("bench-out")
    results, server_log = out / "bench", out / "server.log"
    stop = threading.Event()
    killer = kill_during(results / "in16-out32-c2.json", server_log, stop)
    try:
        doc = run_bench(tiny_model, smoke=smoke_doc, env=env_doc, engine=EngineSettings.from_config(ENGINE),
                        generation=GenerationSettings.from_config(generation_settings()),
                        serve=ServeSettings.from_config({}), settings=BenchSettings.from_config(LADDER),
                        result_dir=results, server_log=server_log, accuracy=AccuracySettings.from_config({}),
                        accuracy_dir=out / "accuracy", include_path=TASKS)  # fmt: skip
    finally:
        stop.set()
        killer.join(10)
    json.dumps(doc)  # bench.json is JSON
    return doc, out


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
    read = decode_bytes(tiny_model, dtype="bfloat16", context_tokens=19.5)
    assert eff["bound"] == "nominal" and "% of the nominal bandwidth bound" in eff["text"]
    assert eff["points"][0]["bound_tokens_per_s"] == pytest.approx(4.8e12 / read.total)
    assert eff["points"][0]["decode_tokens_per_s"] == 500.0
    # 2 layers x 1 KV head x head_dim 32, K and V, bf16; every weight but the input embedding table (one row of it)
    assert read.kv_cache_per_token == 2 * 2 * 1 * 32 * 2
    assert read.weights == 2 * (2 * (64 * 64 + 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 512 * 64 + 64)
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
    import http.server, json, os, sys, time
    mode, port = sys.argv[1], int(sys.argv[2])
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
            if mode == "hang":
                time.sleep(60)
            self.answer({"choices": [{"text": "served", "finish_reason": "length"}],
                         "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")
OFFLINE = [OfflineAnswer("Hello", [1, 5], "served", 1)]


def fake_server(tmp_path: Path, mode: str):
    from npuport.engines.serve_check import free_port

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER, encoding="utf-8")
    port = free_port("127.0.0.1")
    serve = ServeSettings.from_config({"startup_timeout_s": 30, "request_timeout_s": 2})
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
    deadline = time.monotonic() + 10
    while stat is not None and stat.state != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
        stat = proc_stat(left[0]["pid"])
    assert stat is None or stat.state == "Z"  # killed by pid (a zombie until its new parent reaps it)


def test_server_stopped_when_the_block_raises(tmp_path):
    context, _ = fake_server(tmp_path, "ok")
    with pytest.raises(RuntimeError, match="the benchmark blew up"), context as server:
        pgid = server.proc.pid
        assert server.ready and group_alive(pgid)
        raise RuntimeError("the benchmark blew up")
    assert server.shutdown["signal"] == "SIGINT" and not group_alive(pgid)


def test_point_bounded_in_time_and_benchmark_errors_recorded(tmp_path, tiny_model):
    context, _ = fake_server(tmp_path, "hang")
    point = Point(16, 8, 1, 2)
    with context as server:
        argv = ["--backend", "vllm", "--base-url", server.url, "--model", "fake", "--tokenizer", str(tiny_model),
                "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "8",
                "--num-prompts", "2", "--max-concurrency", "1", "--ready-check-timeout-sec", "0",
                "--disable-tqdm"]  # fmt: skip
        hung = run_point(point, argv, timeout_s=3, result_file="bench/x.json", command="hung")
        refused = ["--backend", "no-such-backend"]
        bad = run_point(point, refused, timeout_s=30, result_file="bench/x.json", command="bad")
    assert hung.status == "timed out" and hung.reason.startswith("did not finish within 3 s") and not hung.metrics
    assert 3 <= hung.seconds < 60
    assert bad.status == "failed" and bad.reason.startswith("the benchmark raised ValueError: vllm bench serve refused")
