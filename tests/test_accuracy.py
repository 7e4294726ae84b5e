"""Task accuracy: the gate's statistics on hand-computed examples, and real lm-eval runs (hf backend, offline) of
the shipped task resources/tasks/npuport_tiny on the fused embedded model, correct and broken."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TEST_KV_CACHE_BYTES
from test_accuracy_gate import mdd_by_bisection, wilson_by_hand

from npuport.accuracy import harness
from npuport.accuracy.gate import (
    accuracy_check,
    mcnemar_worse,
    minimum_detectable_drop,
    score_and_stderr,
    task_verdict,
    wilson_interval,
)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
TASKS = RESOURCES / "tasks"
MODEL_DIR = RESOURCES / "tiny-bitcpm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


# ---------------------------------------------------------------- statistics, by hand


def test_mcnemar_is_the_one_sided_binomial_tail_of_the_discordant_pairs():
    assert mcnemar_worse(engine_worse=9, engine_better=0) == pytest.approx(0.5**9)
    assert mcnemar_worse(engine_worse=5, engine_better=1) == pytest.approx(7 / 64)  # (C(6,5) + C(6,6)) / 2^6
    assert mcnemar_worse(engine_worse=1, engine_better=5) == pytest.approx(63 / 64)
    assert mcnemar_worse(engine_worse=0, engine_better=0) == 1.0


def test_wilson_interval_and_stderr():
    z2 = 1.959963984540054**2
    low, high = wilson_interval(8, 10)
    centre, half = (0.8 + z2 / 20) / (1 + z2 / 10), math.sqrt(z2) / (1 + z2 / 10) * math.sqrt(0.016 + z2 / 400)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(72, 72) == pytest.approx((72 / (72 + z2), 1.0))
    assert score_and_stderr([1, 1, 0, 0]) == pytest.approx((0.5, math.sqrt(0.25 / 3)))  # sample std / sqrt(n)


def test_minimum_detectable_drop_solves_connors_mcnemar_sample_size():
    z_a, z_b = 1.6448536269514722, 0.8416212335729143
    delta = minimum_detectable_drop(n=72)
    assert delta == pytest.approx(0.0834, abs=1e-4)
    assert (z_a * math.sqrt(delta) + z_b * math.sqrt(delta - delta**2)) ** 2 / delta**2 == pytest.approx(72)
    # about (z_a + z_b)^2 / n for large n; noise flips (engine_better) raise it; a tiny n detects nothing
    assert minimum_detectable_drop(n=10_000) == pytest.approx((z_a + z_b) ** 2 / 10_000, rel=0.02)
    # 5 flips the other way as noise: the discordant fraction is psi = delta + 2 x 5 / 72, both ways (not 5 / 72)
    noisy = minimum_detectable_drop(n=72, engine_better=5)
    psi = noisy + 2 * 5 / 72
    assert (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - noisy**2)) ** 2 / noisy**2 == pytest.approx(72)
    assert noisy == pytest.approx(mdd_by_bisection(72, 5), abs=1e-7)
    assert minimum_detectable_drop(n=2) == 1.0


def record(correct: list[int], status: str = "ok", **fields) -> dict:
    samples = [{"doc_id": i, "correct": c} for i, c in enumerate(correct)]
    return {"status": status, "reason": None, "metric": "acc", "samples": samples, "n": len(samples)} | fields


def test_gate_fails_on_a_real_drop_and_passes_on_noise():
    reference = record([1] * 90 + [0] * 10)
    dropped = record([0] * 12 + [1] * 78 + [0] * 10)
    verdict = task_verdict(engine=dropped, reference=reference, alpha=0.05, max_drop=20)
    assert verdict["status"] == "failed" and verdict["p_value"] == pytest.approx(0.5**12)
    assert verdict["difference"] == pytest.approx(-12.0) and verdict["engine_worse"] == 12
    noisy = record([0] * 3 + [1] * 87 + [1] * 3 + [0] * 7)  # 3 lost, 3 gained
    verdict = task_verdict(engine=noisy, reference=reference, alpha=0.05, max_drop=5)
    assert verdict["status"] == "passed", verdict["reason"]
    assert verdict["p_value"] == pytest.approx(42 / 64) and verdict["difference"] == 0.0
    assert verdict["engine"]["wilson95"] == pytest.approx([100 * x for x in wilson_by_hand(90, 100)])
    # the minimum detectable drop with the 3 gained items as noise, solved here: 9.8 points > 5
    assert verdict["mdd"] == pytest.approx(100 * mdd_by_bisection(100, 3), abs=1e-5) and verdict["too_small"] is True


def test_gate_fails_a_large_drop_that_is_not_significant_and_flags_too_few_items():
    verdict = task_verdict(engine=record([0, 0] + [1] * 8), reference=record([1] * 10), alpha=0.05, max_drop=10)
    assert verdict["p_value"] == pytest.approx(0.25) and verdict["status"] == "failed"
    assert verdict["too_small"] and "drop 20.0 points > 10" in verdict["reason"]


def test_gate_does_not_measure_unpaired_or_missing_tasks():
    reference = {"status": "ok", "tasks": {"a": record([1] * 10), "b": record([1] * 10), "c": record([1] * 10)}}
    engine = {
        "status": "ok",
        "tasks": {
            "a": record([1] * 9),  # one doc id missing
            "b": record([], status="not run", reason="dataset not available offline"),
            "c": record([1] * 10),
        },
    }
    verdicts = {v["task"]: v for v in accuracy_check(engine_run=engine, reference_run=reference)["tasks"]}
    assert verdicts["a"]["status"] == "not measured" and "doc ids differ" in verdicts["a"]["reason"]
    assert verdicts["b"]["status"] == "not measured" and "offline" in verdicts["b"]["reason"]
    check = accuracy_check(engine_run=engine, reference_run=reference, max_drop=50)
    assert check["status"] == "passed" and "not measured: a, b" in check["reason"]
    engine["tasks"]["c"] = record([], status="failed", reason="lm-eval failed: HTTP 500")
    assert accuracy_check(engine_run=engine, reference_run=reference)["status"] == "failed"
    assert accuracy_check(engine_run={"tasks": {}}, reference_run={"tasks": {}})["status"] == "not measured"


def test_server_model_args_and_the_equivalent_command():
    args = harness.server_model_args(base_url="http://127.0.0.1:8000", served_model="m", tokenizer_dir="/models/m")
    assert args["base_url"] == "http://127.0.0.1:8000/v1/completions" and args["tokenized_requests"]
    assert args["add_bos_token"]  # like hf: both sides score the same token sequences
    command = harness.lm_eval_command(model="local-completions", model_args={"model": "m", "x": object()},
                                      tasks=["a", "b"], num_fewshot=0, limit=None, seed=3, include_path=TASKS,
                                      output_dir=Path("/out"))  # fmt: skip
    assert command == (
        f"lm_eval --model local-completions --model_args 'model=m,x=<object>' --tasks a,b --num_fewshot 0 "
        f"--seed 3 --include_path {TASKS} --log_samples --output_path /out"
    )


# ---------------------------------------------------------------- real lm-eval runs


def _load_make_script():
    spec = importlib.util.spec_from_file_location("make_tiny_model", RESOURCES / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The fused embedded model (as the pipeline's fuse stage writes it), float32: (directory, model, tokenizer)."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'lm-eval[api]')")
    pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (pip install accelerate)")
    from transformers import AutoTokenizer

    latent = torch.load(MODEL_DIR / "pytorch_model.bin", map_location="cpu", weights_only=True)
    model = _load_make_script().load_fused(latent, torch.float32)
    directory = tmp_path_factory.mktemp("fused")
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy2(MODEL_DIR / name, directory / name)
    return directory, model, AutoTokenizer.from_pretrained(directory)


def run(model_args: dict, output_dir: Path | None = None, tasks=("npuport_tiny",)) -> dict:
    return harness.run_tasks(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=0,
                             include_path=TASKS, output_dir=output_dir, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(fused, tmp_path_factory):
    return run(harness.hf_model_args(model_dir=fused[0]), tmp_path_factory.mktemp("lm-eval") / "reference")


def test_shipped_task_data_is_what_the_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_accuracy_task", RESOURCES / "make_accuracy_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    for name in ("mc.jsonl", "gen.jsonl"):
        assert (tmp_path / name).read_bytes() == (TASKS / "npuport_tiny" / name).read_bytes()
    assert len((tmp_path / "mc.jsonl").read_text(encoding="utf-8").splitlines()) >= 60


def test_fused_model_scores_high_on_the_shipped_task(reference_run):
    assert reference_run["status"] == "ok", reference_run["reason"]
    tasks = reference_run["tasks"]
    assert set(tasks) == {"npuport_tiny_mc", "npuport_tiny_gen"}
    assert tasks["npuport_tiny_mc"]["metric"] == "acc" and tasks["npuport_tiny_mc"]["score"] >= 0.85
    assert tasks["npuport_tiny_gen"]["metric"] == "exact_match" and tasks["npuport_tiny_gen"]["score"] >= 0.5
    for task in tasks.values():
        assert task["n"] == len(task["samples"]) >= 60
        assert {s["correct"] for s in task["samples"]} <= {0, 1}
        assert sum(s["correct"] for s in task["samples"]) / task["n"] == pytest.approx(task["score"])
    assert reference_run["command"].startswith("lm_eval --model hf --model_args pretrained=")
    json.dumps(reference_run, allow_nan=False)


def test_lm_eval_outputs_are_written_in_its_formats(reference_run):
    output = Path(reference_run["command"].rsplit("--output_path ", 1)[1])
    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    assert results["results"]["npuport_tiny_mc"]["acc,none"] == reference_run["tasks"]["npuport_tiny_mc"]["score"]
    lines = (output / "samples_npuport_tiny_gen.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 72 and {"doc_id", "resps", "filtered_resps", "exact_match"} <= set(json.loads(lines[0]))


def test_a_task_without_its_dataset_offline_is_recorded_not_run(fused, tmp_path):
    shutil.copytree(TASKS / "npuport_tiny", tmp_path / "npuport_tiny")
    hub_task = {"task": "hub_only", "dataset_path": "openai/gsm8k", "dataset_name": "main", "test_split": "test"}
    hub_task |= {"output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}"}
    (tmp_path / "hub_only.yaml").write_text(json.dumps(hub_task), encoding="utf-8")  # JSON is YAML
    doc = harness.run_tasks(model="hf", model_args=harness.hf_model_args(model_dir=fused[0]),
                            tasks=["npuport_tiny_mc", "hub_only"], include_path=tmp_path, threads=1)  # fmt: skip
    assert doc["status"] == "ok" and doc["tasks"]["npuport_tiny_mc"]["status"] == "ok"
    assert doc["tasks"]["hub_only"]["status"] == "not run"
    assert "not available offline" in doc["tasks"]["hub_only"]["reason"] and "hub_only" in doc["reason"]


# ---------------------------------------------------------------- the engine's side, on a real vLLM server


@pytest.fixture(scope="module")
def faulty_server(fused, tmp_path_factory):
    """vLLM's OpenAI server on the fused model in bfloat16 (the pipeline's engine settings), its workers extended
    with tests/fault_injection.WorkerFaults so a test can break a layer in the running engine."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from npuport.core.settings import EngineSettings, ServeSettings
    from npuport.engines.serve_check import api_server_argv, free_port, served

    # eager: the injected faults are forward hooks, which fire only outside compiled graphs
    engine = EngineSettings.from_config({"kv_cache_memory_bytes": TEST_KV_CACHE_BYTES, "enforce_eager": True})
    port = free_port("127.0.0.1")
    argv = api_server_argv(fused[0], engine, host="127.0.0.1", port=port)
    argv += ["--worker-extension-cls", "fault_injection.WorkerFaults"]
    tests = str(Path(__file__).resolve().parent)
    serve = ServeSettings.from_config({})
    log = tmp_path_factory.mktemp("server") / "server.log"
    with pytest.MonkeyPatch.context() as env:  # the server's environment, restored after
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
        env.setenv("VLLM_SERVER_DEV_MODE", "1")  # the server's /collective_rpc route
        with served(argv, url=f"http://127.0.0.1:{port}", serve=serve, log_path=log) as server:
            assert server.ready, (server.failure, server.log_tail)
            yield server, engine


def rpc(server, method: str, *args: str) -> dict:
    from npuport.engines.serve_check import http_json

    return http_json(server.url + "/collective_rpc", {"method": method, "args": list(args)}, 60)


@pytest.mark.engine
def test_engine_side_on_the_server_passes_and_an_injected_layer_bug_fails(
    fused, reference_run, faulty_server, tmp_path
):
    """The accuracy stage's engine side (the bench stage runs it on its server) on a real vLLM server: the correct
    engine passes against the transformers reference; the same running engine with layer 1's MLP output negated in
    its workers (the noise-floor issue's injected bug) fails the gate, significantly, on both tasks."""
    from npuport.accuracy.accuracy import AccuracySettings, engine_side

    server, engine = faulty_server
    settings = AccuracySettings.from_config({})
    common = {"base_url": server.url, "served_model": server.served_model, "model_dir": fused[0],
              "settings": settings, "include_path": TASKS, "max_length": engine.max_model_len,
              "timeout_s": 120}  # fmt: skip
    correct = engine_side(**common, output_dir=tmp_path / "correct")
    assert correct["status"] == "ok", correct["reason"]
    assert correct["command"].startswith("lm_eval --model local-completions --model_args base_url=http://127.0.0.1:")
    assert (tmp_path / "correct" / "lm_eval" / "samples_npuport_tiny_mc.jsonl").is_file()
    passed = accuracy_check(engine_run=correct, reference_run=reference_run, max_drop=settings.max_drop)
    assert passed["status"] == "passed", passed["reason"]
    assert rpc(server, "npuport_set_fault", "mlp_sign,1") == {"results": ["mlp_sign,1"]}
    try:
        broken = engine_side(**common, output_dir=tmp_path / "broken")
    finally:
        rpc(server, "npuport_clear_fault")
    failed = accuracy_check(engine_run=broken, reference_run=reference_run, max_drop=settings.max_drop)
    assert failed["status"] == "failed", failed["reason"]
    verdicts = {v["task"]: v for v in failed["tasks"]}
    assert set(verdicts) == {"npuport_tiny_mc", "npuport_tiny_gen"}
    assert all(v["status"] == "failed" and v["p_value"] < 0.05 and v["engine_worse"] > 0 for v in verdicts.values())
    print(f"\nengine side: correct {[(t, r['score']) for t, r in correct['tasks'].items()]} in {correct['wall_s']} s; "
          f"broken {[(v['task'], v['engine']['score'], v['p_value']) for v in verdicts.values()]}")  # fmt: skip
