"""The bench stage's checks (npuport.engines.bench: summarize, held_check, efficiency_check, regression_check,
stage_status) and the decode bound (npuport.engines.bandwidth) on recorded figures, without a server: every count,
ratio and byte written out here, and the edges (a point that timed out or did not run, a truncated answer, an answer
of exactly output_len tokens, nothing to compare against, a ratio exactly at min_ratio)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from npuport.core.settings import EngineSettings
from npuport.engines.bandwidth import accelerator_names, decode_bytes, nominal_bandwidth, select_bandwidth
from npuport.engines.bench import (
    BenchSettings,
    Point,
    PointResult,
    efficiency_check,
    held_check,
    regression_check,
    stage_status,
    summarize,
)

POINT = Point(input_len=16, output_len=8, concurrency=4, num_prompts=16)


def raw(**fields) -> dict:
    """vLLM's result JSON of one point, everything complete unless ``fields`` say otherwise."""
    return {"completed": 16, "failed": 0, "output_lens": [8] * 16, "duration": 2.0, "request_throughput": 8.0,
            "output_throughput": 64.0, "total_token_throughput": 192.0, "total_input_tokens": 256,
            "total_output_tokens": 128, "mean_ttft_ms": 11.0, "median_ttft_ms": 10.0, "p99_ttft_ms": 30.0,
            "mean_tpot_ms": 5.0, "median_tpot_ms": 4.5, "p99_tpot_ms": 9.0, "errors": []} | fields  # fmt: skip


# ---------------------------------------------------------------- one point's summary


def test_a_complete_point_is_ok_with_vllms_figures():
    result = summarize(POINT, raw())
    assert result.status == "ok" and result.reason is None
    m = result.metrics
    assert (m["completed"], m["failed"], m["truncated"]) == (16, 0, 0)
    assert m["output_throughput"] == 64.0 and m["tokens_per_user"] == 16.0  # 64 tok/s over 4 streams
    assert m["request_throughput"] == 8.0 and m["total_token_throughput"] == 192.0 and m["duration_s"] == 2.0
    assert m["ttft_ms"] == {"mean": 11.0, "median": 10.0, "p99": 30.0}
    assert m["tpot_ms"] == {"mean": 5.0, "median": 4.5, "p99": 9.0}
    assert m["itl_ms"] == {"mean": None, "median": None, "p99": None}  # not in the result: None, not 0


def test_errors_are_kept_once_each_cut_to_300_characters_at_most_three():
    errors = ["x" * 400, "x" * 400, "", None, "b", "c", "d"]
    assert summarize(POINT, raw(errors=errors)).metrics["errors"] == ["x" * 300, "b", "c"]


def test_with_an_objective_the_point_carries_it_with_its_counts():
    from npuport.engines.capacity import SloSettings

    result = summarize(POINT, raw(completed=13, failed=2, output_lens=[8] * 13, request_goodput=4.0),
                       slo=SloSettings.from_config({}))  # fmt: skip
    assert result.metrics["goodput_req_s"] == 4.0
    objective = result.metrics["objective"]
    assert objective["met"] is False and objective["reason"].startswith("3 of 16 requests failed, 0 truncated")
    assert objective["share_within"] == 8 / 16  # 4 requests/s within the objective over 2 s, of 16 sent
    assert "objective" not in summarize(POINT, raw()).metrics  # no objective asked, none recorded


def test_answers_of_exactly_output_len_tokens_are_complete_and_shorter_ones_truncated():
    longer = summarize(POINT, raw(output_lens=[8] * 15 + [9]))
    assert longer.status == "ok" and longer.metrics["truncated"] == 0  # n >= output_len is whole
    short = summarize(POINT, raw(output_lens=[8] * 14 + [7, 3]))
    assert short.status == "failed" and short.metrics["truncated"] == 2
    assert short.reason == "0 of 16 requests failed (0 reported failed), 2 truncated"  # nothing lost, still failed


def test_failed_and_lost_requests_fail_the_point():
    lost = summarize(POINT, raw(completed=13, failed=2, output_lens=[8] * 13))
    assert lost.status == "failed" and lost.metrics["failed"] == 2 and lost.metrics["truncated"] == 0
    assert lost.reason == "3 of 16 requests failed (2 reported failed), 0 truncated"
    silent = summarize(POINT, raw(completed=15, output_lens=[8] * 15))  # one missing, none reported failed
    assert silent.status == "failed" and silent.reason.startswith("1 of 16 requests failed (0 reported failed)")
    nothing = summarize(POINT, {})
    assert (
        nothing.status == "failed" and nothing.metrics["completed"] == 0 and nothing.metrics["tokens_per_user"] is None
    )


# ---------------------------------------------------------------- held under load


def ok(point: Point) -> PointResult:
    return summarize(point, raw(completed=point.num_prompts, output_lens=[point.output_len] * point.num_prompts))


def test_held_when_every_point_ran_and_answered_everything():
    results = [ok(Point(16, 8, 1, 4)), ok(Point(16, 8, 2, 8))]
    assert held_check(results) == {"status": "passed", "reason": None, "failed_requests": 0, "reported_failed": 0,
                                   "truncated_requests": 0, "points_not_ok": {}}  # fmt: skip


def test_not_held_with_the_counts():
    c1, c2, c4 = Point(16, 8, 1, 4), Point(16, 8, 2, 8), Point(16, 8, 4, 16)
    truncated = summarize(c2, raw(completed=8, output_lens=[8] * 7 + [5]))
    lost = summarize(c4, raw(completed=11, failed=3, output_lens=[8] * 11))
    held = held_check([ok(c1), truncated, lost])
    assert held["status"] == "failed"
    assert (held["failed_requests"], held["reported_failed"], held["truncated_requests"]) == (5, 3, 1)
    assert held["points_not_ok"] == {c2.name: truncated.reason, c4.name: lost.reason}
    assert held["reason"] == "5 failed and 1 truncated request(s); points not ok: ['in16-out8-c2', 'in16-out8-c4']"
    only_truncated = held_check([ok(c1), truncated])  # nothing lost: still not held
    assert only_truncated["status"] == "failed" and only_truncated["failed_requests"] == 0


@pytest.mark.parametrize("status", ["timed out", "not run", "failed"])
def test_a_point_that_timed_out_or_did_not_run_is_not_held(status):
    c1, c2 = Point(16, 8, 1, 4), Point(16, 8, 2, 8)
    stopped = PointResult(c2, status, "did not finish within 120 s")  # no figures at all
    held = held_check([ok(c1), stopped])
    assert held["status"] == "failed" and held["points_not_ok"] == {c2.name: "did not finish within 120 s"}
    assert held["failed_requests"] == 0  # no figures: nothing counted, the point itself fails it
    assert held["reported_failed"] == 0 and held["truncated_requests"] == 0


def test_no_point_is_not_measured():
    assert held_check([]) == {"status": "not measured", "reason": "no point ran", "failed_requests": 0,
                              "truncated_requests": 0, "points_not_ok": {}}  # fmt: skip


# ---------------------------------------------------------------- the decode bound


def write_checkpoint(directory: Path, *, tied: bool, mixed: bool = True) -> Path:
    """A checkpoint whose bytes are known: embedding 100 x 8 and (untied) LM head 100 x 8 in bf16, one 8 x 8 bf16
    projection, one 16 x 8 projection in float32 (``mixed``, else bf16), an 8-wide bf16 norm; 2 layers of 4 heads
    (2 KV heads) of width 8: head_dim 2."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "model.embed_tokens.weight": torch.zeros(100, 8, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8, dtype=torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.zeros(16, 8, dtype=torch.float32 if mixed else torch.bfloat16),
        "model.norm.weight": torch.zeros(8, dtype=torch.bfloat16),
    }
    if not tied:
        tensors["lm_head.weight"] = torch.zeros(100, 8, dtype=torch.bfloat16)
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 8}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_bytes_a_decode_step_reads(tmp_path):
    untied = write_checkpoint(tmp_path / "untied", tied=False)
    bf16 = decode_bytes(untied, dtype="bfloat16", context_tokens=10.5)
    # one embedding row 8 x 2 + q 8 x 8 x 2 + up 16 x 8 x 2 (read in bf16) + norm 8 x 2 + head 100 x 8 x 2
    assert bf16.weights == 16 + 128 + 256 + 16 + 1600 == 2016
    assert bf16.kv_cache_per_token == 2 * 2 * 2 * 2 * 2  # K and V x layers x KV heads x head_dim x 2 bytes
    assert bf16.kv_cache == 32 * 10.5 and bf16.total == 2016 + 336
    assert bf16.dtype_bytes == 2
    f32 = decode_bytes(untied, dtype="float32", context_tokens=1)
    assert f32.weights == 32 + 256 + 512 + 32 + 3200 and f32.kv_cache_per_token == 64 and f32.total == 4032 + 64
    tied = decode_bytes(write_checkpoint(tmp_path / "tied", tied=True), dtype="bfloat16", context_tokens=0)
    assert tied.weights == 1600 + 128 + 256 + 16  # the LM head is the embedding: read whole
    auto = decode_bytes(write_checkpoint(tmp_path / "auto", tied=False, mixed=False), dtype="auto", context_tokens=2)
    assert auto.weights == 16 + 128 + 256 + 16 + 1600 and auto.dtype_bytes == 2 and auto.kv_cache_per_token == 32
    assert bf16.as_dict() == {"weights": 2016, "kv_cache_per_token": 32, "context_tokens": 10.5, "dtype_bytes": 2,
                              "kv_cache": 336.0, "total": 2352.0}  # fmt: skip


H100 = {"platform": "cuda", "accelerators": {"cuda": {"devices": [{"name": "NVIDIA H100 80GB HBM3"}]}}}
NPU = {"platform": "npu", "accelerators": {"npu_smi": {"parsed": {"model": "910B3"}}, "torch_npu": {"names": ["x"]}}}


def test_which_bandwidth_bounds_the_decode():
    configured = select_bandwidth(H100, 100.0, devices=2)
    assert configured["kind"] == "configured" and configured["bytes_per_s"] == 2e11
    assert configured["per_device_bytes_per_s"] == 1e11
    assert select_bandwidth(H100, None)["bytes_per_s"] == 3.35e12  # one device unless told otherwise
    nominal = select_bandwidth(H100, None, devices=2)
    assert nominal["kind"] == "nominal" and nominal["bytes_per_s"] == 2 * 3.35e12
    assert nominal["per_device_bytes_per_s"] == 3.35e12 and nominal["device_name"] == "NVIDIA H100 80GB HBM3"
    cpu = {"platform": "cpu", "hardware": {"memory_bandwidth": {"bytes_per_s": 2.5e10, "method": "copy",
                                                                "last_level_cache_bytes": 1 << 25}}}  # fmt: skip
    measured = select_bandwidth(cpu, None, devices=4)
    assert measured["kind"] == "measured" and measured["bytes_per_s"] == 2.5e10 and measured["devices"] == 1
    assert measured["last_level_cache_bytes"] == 1 << 25
    unmeasured = select_bandwidth({"platform": "cpu", "hardware": {}}, None)
    assert unmeasured["kind"] is None and unmeasured["reason"] == "env.json has no measured memory bandwidth (None)"
    npu = select_bandwidth(NPU, None)
    assert (
        npu["kind"] is None
        and npu["reason"].startswith("910B3: none found")
        and "bench.bandwidth_gb_s" in npu["reason"]
    )
    unknown = select_bandwidth({"platform": "cuda", "accelerators": {"cuda": {"devices": [{"name": "GPU X"}]}}}, None)
    assert unknown["kind"] is None and unknown["reason"].startswith("no datasheet bandwidth for ['GPU X']")
    assert accelerator_names(H100) == ["NVIDIA H100 80GB HBM3"]
    assert accelerator_names(NPU) == ["910B3", "x"] and accelerator_names({"platform": "cpu"}) == []
    assert nominal_bandwidth("NVIDIA H100 NVL").bytes_per_s == 3.9e12  # the NVL row before the plain H100 row


def single(input_len: int, tpot_ms: float | None, status: str = "ok", reason: str | None = None) -> PointResult:
    metrics = {"tpot_ms": {"mean": tpot_ms, "median": None, "p99": None}} if tpot_ms is not None else {}
    return PointResult(Point(input_len, 9, 1, 4), status, reason, metrics=metrics)


def test_efficiency_of_the_first_completed_single_stream_point(tmp_path):
    model = write_checkpoint(tmp_path / "m", tied=False)
    engine = EngineSettings.from_config({"dtype": "bfloat16"})
    settings = BenchSettings.from_config({"bandwidth_gb_s": 100})
    results = [
        PointResult(Point(16, 9, 2, 8), "ok", metrics={"tpot_ms": {"mean": 1.0}}),  # concurrency 2: not single-stream
        single(64, None, "failed", "boom"),
        single(16, 2.0),
        single(32, 4.0),
        single(128, None),  # completed without a TPOT
    ]
    eff = efficiency_check(results, model_dir=model, engine=engine, env={}, settings=settings)
    assert eff["status"] == "measured" and eff["bound"] == "configured"
    assert [row["point"] for row in eff["points"]] == ["in16-out9-c1", "in32-out9-c1"]
    head = eff["points"][0]
    total = 2016 + 32 * (16 + (9 - 1) / 2)  # weights + KV cache at the mean context of the decode steps
    assert head["bytes_per_token"]["total"] == total == 2656
    assert head["decode_tokens_per_s"] == 500.0  # 1000 / 2 ms
    assert head["bound_tokens_per_s"] == pytest.approx(1e11 / 2656)
    assert head["percent_of_bound"] == pytest.approx(100 * 500 / (1e11 / 2656))
    assert head["achieved_bytes_per_s"] == pytest.approx(500 * 2656) and head["note"] is None
    assert (
        eff["points"][1]["bytes_per_token"]["total"] == 2016 + 32 * 36
        and eff["points"][1]["decode_tokens_per_s"] == 250
    )
    assert eff["percent_of_bound"] == head["percent_of_bound"]
    assert eff["text"] == (f"{100 * 500 / (1e11 / 2656):.1f} % of the configured bandwidth bound (100.0 GB/s; "
                           f"in16-out9-c1: 500.0 of {1e11 / 2656:.1f} tok/s)")  # fmt: skip


def test_efficiency_notes_when_the_bound_bounds_nothing(tmp_path):
    model = write_checkpoint(tmp_path / "m", tied=False)
    engine, settings = EngineSettings.from_config({"dtype": "bfloat16"}), BenchSettings.from_config({})
    in_cache = {"platform": "cpu", "hardware": {"memory_bandwidth": {"bytes_per_s": 1e10,
                                                                     "last_level_cache_bytes": 2656}}}  # fmt: skip
    eff = efficiency_check([single(16, 2.0)], model_dir=model, engine=engine, env=in_cache, settings=settings)
    assert eff["bound"] == "measured" and eff["note"].startswith("The 0.0 MB a decode step reads fit in the 0 MiB")
    slow = {"platform": "cpu", "hardware": {"memory_bandwidth": {"bytes_per_s": 1000.0}}}
    eff = efficiency_check([single(16, 2.0)], model_dir=model, engine=engine, env=slow, settings=settings)
    assert eff["percent_of_bound"] == pytest.approx(100 * 500 / (1000 / 2656))
    assert "understates this host's memory bandwidth" in eff["note"]


def test_efficiency_not_measured_and_why(tmp_path):
    model = write_checkpoint(tmp_path / "m", tied=False)
    engine, settings = EngineSettings.from_config({"dtype": "bfloat16"}), BenchSettings.from_config({})
    none = efficiency_check([PointResult(Point(16, 9, 2, 8), "ok")], model_dir=model, engine=engine, env=H100,
                            settings=settings)  # fmt: skip
    assert none["status"] == "not measured" and none["reason"] == "the ladder has no concurrency-1 point"
    failed = efficiency_check([single(16, None, "timed out", "120 s")], model_dir=model, engine=engine, env=H100,
                              settings=settings)  # fmt: skip
    assert failed["reason"] == "no concurrency-1 point completed (timed out: 120 s)" and failed["points"] == []
    unknown = efficiency_check([single(16, 2.0)], model_dir=model, engine=engine, env=NPU, settings=settings)
    assert unknown["status"] == "not measured" and unknown["reason"].startswith("910B3: none found")
    assert unknown["percent_of_bound"] is None and unknown["text"] is None


# ---------------------------------------------------------------- regression against an earlier run


def bench_point(input_len: int, concurrency: int, throughput, status: str = "ok") -> dict:
    return {"name": f"in{input_len}-out8-c{concurrency}", "input_len": input_len, "output_len": 8,
            "concurrency": concurrency, "status": status, "output_throughput": throughput}  # fmt: skip


BASELINE = {
    "platform": {"device": "Ascend910B3"},
    "engine": {"version": "0.18.0"},
    "points": [bench_point(16, 1, 100.0), bench_point(16, 2, 200.0), bench_point(16, 4, 0.0),
               bench_point(32, 1, None), bench_point(64, 1, 50.0), bench_point(8, 1, 0.5)],
}  # fmt: skip


def test_regression_ratio_per_matching_point():
    now = [bench_point(16, 1, 97.0), bench_point(16, 2, 150.0), bench_point(16, 4, 80.0), bench_point(32, 1, 40.0),
           bench_point(64, 1, 60.0, status="failed"), bench_point(128, 1, 10.0)]  # fmt: skip
    check = regression_check(now, BASELINE, path="earlier/bench.json", min_ratio=0.97)
    rows = {p["point"]: (p["ratio"], p["passed"]) for p in check["points"]}
    assert rows == {
        "in16-out8-c1": (pytest.approx(0.97), True),  # exactly min_ratio passes
        "in16-out8-c2": (pytest.approx(0.75), False),
        "in16-out8-c4": (None, None),  # the baseline measured 0: nothing to compare with
        "in32-out8-c1": (None, None),  # the baseline has no figure
        "in64-out8-c1": (None, None),  # this run's point failed
        "in128-out8-c1": (None, None),  # not in the baseline
    }
    assert check["status"] == "failed" and check["reason"] == "below 0.97 x the baseline: ['in16-out8-c2']"
    assert check["baseline"] == "earlier/bench.json" and check["min_ratio"] == 0.97
    assert check["baseline_run"] == {"platform": "Ascend910B3", "engine": "0.18.0"}
    assert check["points"][0]["baseline_output_throughput"] == 100.0 and check["points"][0]["output_throughput"] == 97.0
    slow = regression_check([bench_point(8, 1, 0.49)], BASELINE, path="x", min_ratio=0.97)  # 0.5 tok/s before
    assert slow["points"][0]["ratio"] == pytest.approx(0.98) and slow["status"] == "passed"
    passed = regression_check(now[:1], BASELINE, path="x", min_ratio=0.97)
    assert passed["status"] == "passed" and passed["reason"] is None


def test_nothing_compared_is_not_measured_never_passed():
    unmatched = regression_check([bench_point(128, 1, 10.0), bench_point(64, 1, 60.0, status="failed")], BASELINE,
                                 path="x", min_ratio=0.97)  # fmt: skip
    assert unmatched["status"] == "not measured"
    assert unmatched["reason"] == "no point of this run matches a measured point of the baseline"
    none = regression_check([bench_point(16, 1, 97.0)], None, path=None, min_ratio=0.97)
    assert none["status"] == "not measured" and none["reason"].startswith("no bench.baseline configured")
    wrong = regression_check([bench_point(16, 1, 97.0)], ["not", "a", "document"], path="b.json", min_ratio=0.97)
    assert wrong["status"] == "not measured" and wrong["reason"] == "b.json is not a bench.json document"


# ---------------------------------------------------------------- the stage's status


def server(ready: bool = True, exited: int | None = None, left: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(ready=ready, failure="port in use", exited=lambda: exited,
                           shutdown={"processes_left": bool(left), "left_after_shutdown": left or []})  # fmt: skip


def test_stage_status():
    c1, c2, c4 = Point(16, 8, 1, 4), Point(16, 8, 2, 8), Point(16, 8, 4, 16)
    assert stage_status(server(), [ok(c1), ok(c2)]) == ("ok", None)
    assert stage_status(server(), []) == ("ok", None)
    assert stage_status(server(ready=False), []) == ("failed", "the server did not get ready: port in use")
    died = [ok(c1), PointResult(c2, "failed", "lost"), PointResult(c4, "not run", "the server exited with code -9")]
    status, reason = stage_status(server(exited=-9), died)
    assert status == "failed" and reason == (
        "the server exited during the ladder (code -9), before point in16-out8-c4; in16-out8-c2: failed (lost); "
        "in16-out8-c4: not run (the server exited with code -9)"
    )
    spent = [ok(c1), PointResult(c2, "not run", "bench.timeout_s (600 s) was spent")]
    assert stage_status(server(), spent) == ("failed", "in16-out8-c2: not run (bench.timeout_s (600 s) was spent)")
    status, reason = stage_status(server(left=[4242]), [ok(c1)])
    assert status == "failed" and reason == "server processes left after shutdown: [4242]"
