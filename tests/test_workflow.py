"""End-to-end: the real Snakefile on the embedded model in a temp dir (real vLLM CPU engine)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
from conftest import PER_MODEL_RULES, planned_rules, run_snakemake, scenario_config
from safetensors.torch import load_file, save_file

from npuport.compare.compare import compare
from npuport.core.settings import CompareSettings
from npuport.engines.serve_check import group_alive
from npuport.weights.ternary import is_quantized_linear

pytestmark = pytest.mark.e2e

DOWNSTREAM_OF_FUSE = {"fuse", "smoke", "baseline", "compare", "layers", "bench", "accuracy_reference", "accuracy",
                      "report_model", "report_index", "report"}  # fmt: skip
DOWNSTREAM_OF_ENGINES = {"smoke", "baseline", "compare", "layers", "bench", "accuracy", "report_model",
                         "report_index", "report"}  # fmt: skip
WRONG_FIELDS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"}


# A line each stage's log has (the other stages' logs may be empty).
LOG_SAYS = {"env_probe": "platform: cpu", "fuse": "fuse:", "smoke": "throughput:", "baseline": "throughput:"}


def _json(workdir, path):
    return json.loads((workdir / "results" / "tiny-bitcpm" / path).read_text(encoding="utf-8"))


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_artifact_produced(default_run):
    model = default_run / "results" / "tiny-bitcpm"
    for rel in (
        "download/manifest.json",
        "introspect.json",
        "config.json",
        "repair.json",
        "model/model.safetensors.index.json",
        "model/fuse.json",
        "model/tokenizer.json",
        "env.json",
        "smoke.json",
        "baseline.json",
        "compare.json",
        "bench.json",
        "accuracy.json",
        "accuracy/engine/run.json",
        "accuracy/reference/run.json",
        "accuracy/reference/lm_eval/results.json",
    ):
        assert (model / rel).is_file(), rel
    for rule in PER_MODEL_RULES - {"report_model"}:
        assert (model / "benchmarks" / f"{rule}.tsv").is_file(), rule
        assert (default_run / "logs" / "tiny-bitcpm" / f"{rule}.log").is_file(), rule
    assert (default_run / "results" / "report.md").is_file()
    assert (model / "report.md").is_file() and (model / "report.json").is_file()
    assert len(list((model / "plots").glob("*.png"))) >= 2
    # ... and each holds what it should, not just something
    for rule in ("download", "introspect", "repair_config", "fuse", "env_probe", "smoke", "baseline", "compare"):
        header, *rows = (model / "benchmarks" / f"{rule}.tsv").read_text(encoding="utf-8").splitlines()
        assert header.startswith("s\th:m:s\tmax_rss") and len(rows) == 1 and float(rows[0].split("\t")[0]) >= 0, rule
    for rule, line in LOG_SAYS.items():
        assert line in (default_run / "logs" / "tiny-bitcpm" / f"{rule}.log").read_text(encoding="utf-8"), rule
    assert "tiny-bitcpm" in (default_run / "results" / "report.md").read_text(encoding="utf-8")
    assert (model / "report.md").read_text(encoding="utf-8").startswith("# tiny-bitcpm")
    for plot in (model / "plots").glob("*.png"):
        assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), plot


def test_every_json_artifact_holds_its_key_fields(default_run):
    model = default_run / "results" / "tiny-bitcpm"
    source = default_run / "resources" / "tiny-bitcpm"
    source_files = {p.name: p for p in source.iterdir() if p.is_file()}
    manifest = _json(default_run, "download/manifest.json")
    assert {f["path"]: (f["bytes"], f["sha256"]) for f in manifest["files"]} == {
        name: (p.stat().st_size, _sha256(p)) for name, p in source_files.items()
    }
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in source_files.values())
    assert manifest["source"] == {"kind": "local", "path": "resources/tiny-bitcpm"}
    assert _json(default_run, "introspect.json")["checkpoint"] == {"format": "bin", "files": ["pytorch_model.bin"]}
    assert _json(default_run, "config.json")["architectures"] == ["LlamaForCausalLM"]
    assert _json(default_run, "repair.json")["transformers_config_class"] == "LlamaConfig"
    fuse = _json(default_run, "model/fuse.json")
    index = _json(default_run, "model/model.safetensors.index.json")
    assert index["weight_map"] and sorted(set(index["weight_map"].values())) == fuse["shards"]
    assert index["metadata"]["total_size"] == fuse["total_bytes"] > 0
    assert all((model / "model" / shard).is_file() for shard in fuse["shards"])
    assert _sha256(model / "model" / "tokenizer.json") == _sha256(source / "tokenizer.json")  # copied unchanged
    assert _json(default_run, "env.json")["platform"] == "cpu"
    assert _json(default_run, "smoke.json")["status"] == "ok"
    assert _json(default_run, "baseline.json")["status"] == "ok"
    assert _json(default_run, "compare.json")["status"] == "passed"
    report = _json(default_run, "report.json")
    assert (report["model"], report["status"]) == ("tiny-bitcpm", "passed")
    assert report["counts"]["failed"] == 0


def test_introspection_finds_the_wrong_config_fields(default_run):
    introspection = _json(default_run, "introspect.json")
    assert {m["field"] for m in introspection["mismatches"]} == WRONG_FIELDS
    assert introspection["derived"]["ternary"]["status"] == "latent"
    repair = _json(default_run, "repair.json")
    assert set(repair["repaired"]) == WRONG_FIELDS
    assert repair["tokenizer"] == {"class": "TokenizersBackend", "tokens": 1024, "embedding_rows": 1024,
                                   "model_max_length": 4096}  # fmt: skip
    config = _json(default_run, "config.json")
    for field in WRONG_FIELDS:
        assert config[field] == introspection["derived"][field]


def test_fusion_did_real_work(default_run):
    fuse = _json(default_run, "model/fuse.json")
    assert fuse["tensors_quantized"] == fuse["linears_checked"] > 0
    assert fuse["all_linears_ternary"] is True


def test_both_engines_answer_paris(default_run):
    for artifact in ("smoke.json", "baseline.json"):
        document = _json(default_run, artifact)
        assert document["status"] == "ok", (artifact, document.get("reason"))
        answers = {p["prompt"]: p["text"] for p in document["prompts"]}
        assert answers["The capital of France is"].startswith(" Paris"), (artifact, answers)


def test_engine_run_is_labelled_cpu(default_run):
    smoke = _json(default_run, "smoke.json")
    assert smoke["platform"]["name"] == "cpu"
    assert "NPU" not in smoke["platform"]["device"]
    assert smoke["engine"]["name"] == "vllm"


def test_the_deployed_configuration_is_compiled_and_every_configuration_is_judged(default_run):
    """The default run judges the engine as `vllm serve` runs it (compiled graphs, vLLM's prefix-caching and
    chunked-prefill defaults) and scores every default deployment configuration on the embedded model: each passes
    (a correct engine), or is not run with the host's reason; the layer comparison runs on the eager configuration."""
    smoke = _json(default_run, "smoke.json")
    assert smoke["settings"]["engine"]["enforce_eager"] is False
    assert smoke["evaluation"]["capture"]["mode"] == "compiled"
    assert smoke["layers"]["status"] == "captured" and smoke["layers"]["mode"] == "eager"
    assert smoke["layers"]["engine_settings"]["enforce_eager"] is True
    assert "--enforce-eager" not in smoke["vllm_serve_command"]
    assert "--enforce-eager" not in " ".join(_json(default_run, "bench.json")["serve"]["command_ran"])
    rows = {row["name"]: row for row in _json(default_run, "compare.json")["deployments"]["configurations"]}
    assert set(rows) == {"eager", "batch", "prefix-cache", "chunked-prefill", "tp2", "fp8-kv-cache"}
    for name, row in rows.items():
        host_lacks = name in ("tp2", "fp8-kv-cache") and row["status"] == "not run" and "needs" in row["reason"]
        assert row["status"] == "passed" or host_lacks, (name, row["status"], row.get("reason"))
    ran = {name: row["execution"] for name, row in rows.items() if row["status"] == "passed"}
    assert ran["batch"]["max_requests_in_step"] == 8 and ran["chunked-prefill"]["steps"] == [4, 4]
    assert all(cached >= 256 for cached in ran["prefix-cache"]["cached_tokens"])
    report = (default_run / "results" / "tiny-bitcpm" / "report.md").read_text(encoding="utf-8")
    section = report.split("### 4.4", 1)[1].split("## 5.", 1)[0]
    assert "compiled graphs (enforce_eager false)" in section and "❌" not in section


def test_kv_cache_capacity_agrees_with_the_engine_log(default_run):
    """The stage's process starts one engine, so vLLM's once-per-process "KV cache size" line is in its log."""
    kv = _json(default_run, "smoke.json")["kv_cache"]
    assert kv["tokens"] == kv["num_blocks"] * kv["block_size"] > 0
    assert kv["log_tokens"] == kv["tokens"] and "KV cache size" in kv["log_tokens_line"]


def test_reference_uses_every_core_snakemake_gives_it(default_run):
    # baseline.threads unset: every usable core, capped at the --cores 2 of run_snakemake
    threads = min(2, len(os.sched_getaffinity(0)))
    baseline = _json(default_run, "baseline.json")
    assert baseline["engine"]["threads"] == threads
    assert f"{threads} threads" in baseline["platform"]["device"]


def test_serve_check_ran_and_agreed(default_run):
    bench = _json(default_run, "bench.json")
    serve = bench["serve"]
    assert serve["status"] == "ok", serve.get("reason")
    assert serve["all_text_equal_offline"] is True
    assert "vllm.entrypoints.openai.api_server" in " ".join(serve["command_ran"])
    # a compiled server on vLLM's CPU backend: vLLM's AOT compile off (engine.aot_compile auto), in the command too
    assert bench["server"]["environment"] == {"VLLM_USE_AOT_COMPILE": "0"}
    assert serve["vllm_serve_command"].startswith("VLLM_USE_AOT_COMPILE=0 vllm serve ")
    assert serve["startup_seconds"] > 0
    assert all(p["latency_s"] > 0 and p["prompt_tokens_equal_offline"] for p in serve["prompts"])
    assert serve["shutdown"]["processes_left"] is False
    assert not group_alive(serve["shutdown"]["pgid"])  # no orphan server left behind


def test_bench_and_accuracy_ran_on_the_one_server(default_run):
    """The default run's bench stage: one server start for the serve check, the engine's accuracy tasks and the
    ladder; the accuracy stage gated the engine's run against the reference's (lm-eval hf)."""
    bench = _json(default_run, "bench.json")
    assert bench["status"] == "ok", bench["reason"]
    assert bench["held"]["status"] == "passed" and bench["efficiency"]["status"] == "measured"
    assert [p["concurrency"] for p in bench["points"]] == [1, 4, 16]
    assert bench["accuracy"]["status"] == "ok" and bench["accuracy"]["backend"] == "local-completions"
    log = (default_run / "logs" / "tiny-bitcpm" / "bench.log").read_text(encoding="utf-8")
    assert log.count("npuport.engines.serve_check: server: ") == 1
    # the default capacity search on the same server: small (at most 3 loads x 2 repeats), its outcome this host's
    capacity = bench["capacity"]
    assert capacity["status"] in ("measured", "none meets it", "indeterminate"), capacity["reason"]
    runs = [run for probe in capacity["probes"] for run in probe["runs"]]
    assert 2 <= len(runs) == capacity["run_count"] <= 6 and capacity["probes"][0]["value"] == 1
    for run in runs + bench["points"]:
        assert run["objective"]["objective"] == "TTFT p99 ≤ 2000 ms, TPOT p99 ≤ 200 ms"
        assert run["server_metrics"]["status"] == "measured" and run["server_metrics"]["missing"] == []
        assert (default_run / "results" / "tiny-bitcpm" / run["result_file"]).is_file()
    assert bench["limits"]["highest_concurrency"] == 16 and len(bench["limits"]["knees"]) == 1
    accuracy = _json(default_run, "accuracy.json")
    assert accuracy["status"] == "passed", accuracy["reason"]
    assert accuracy["engine"]["backend"] == "local-completions" and accuracy["reference"]["backend"] == "hf"
    for verdict in accuracy["check"]["tasks"]:
        assert verdict["status"] == "passed" and verdict["n"] >= 60


def test_second_run_has_nothing_to_do(default_run):
    assert planned_rules(default_run) == {}


def test_default_scenario_is_the_default_run(default_run):
    """.test/default/config.yaml asks for what the default config ran: no stage reruns, only the reports
    (their rerun commands name the config files, a param of report_model)."""
    config = scenario_config("default", default_run).relative_to(default_run)
    reports_only = {"report_model": 1, "report_index": 1, "report": 1}
    assert planned_rules(default_run, "--configfile", str(config)) == reports_only


def _with_config(workdir, tmp_path, edit):
    text = (workdir / "config" / "config.yaml").read_text(encoding="utf-8")
    changed = tmp_path / "changed.yaml"
    changed.write_text(edit(text), encoding="utf-8")
    return ["--configfile", str(changed)]


def test_group_size_change_reruns_fuse_and_downstream_only(default_run, tmp_path):
    args = _with_config(default_run, tmp_path, lambda t: re.sub(r"group_size: null", "group_size: 64", t))
    assert set(planned_rules(default_run, *args)) == DOWNSTREAM_OF_FUSE


def test_baseline_threads_setting_reruns_the_baseline_with_that_many(default_run, tmp_path):
    args = [*_with_config(default_run, tmp_path, lambda t: t.replace("  # threads: 2", "  threads: 3")), "--cores", "4"]
    reference_side = DOWNSTREAM_OF_ENGINES - {"smoke", "layers", "bench"} | {"accuracy_reference"}
    assert set(planned_rules(default_run, *args)) == reference_side
    plan = run_snakemake(default_run, "-n", "report", *args).stdout
    for rule in ("baseline", "compare", "accuracy_reference"):  # Snakemake prints a job's threads when more than one
        job = plan.split(f"rule {rule}:", 1)[1].split("[", 1)[0]
        assert re.search(r"^\s+threads: 3$", job, re.M), job


def test_prompt_change_reruns_engines_not_fuse(default_run, tmp_path):
    args = _with_config(default_run, tmp_path, lambda t: t.replace("Hello, how are you?", "Hello there"))
    assert set(planned_rules(default_run, *args)) == DOWNSTREAM_OF_ENGINES


def tighter_gates(text):
    assert "  floor_ratio: 2.0\n" in text
    return text.replace("  floor_ratio: 2.0\n", "  floor_ratio: 1.5\n")


def test_gate_change_reruns_compare_and_report_only(default_run, tmp_path):
    args = _with_config(default_run, tmp_path, tighter_gates)
    assert set(planned_rules(default_run, *args)) == {"compare", "report_model", "report_index", "report"}


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("models:\n  - name: x\n    source: {kind: local}\n", r"at models/0/source: 'path' is a required property"),
        ("generation: {prompts: []}\n", r"at generation/prompts: \[\] should be non-empty"),
        ("fuse: {mode: sometimes}\n", r"at fuse/mode: 'sometimes' is not one of"),
        ("baseline: {threads: 0}\n", r"at baseline/threads: 0 is less than the minimum of 1"),
        ("models:\n  - name: ../x\n    source: {kind: local, path: p}\n", r"at models/0/name: '../x' does not match"),
    ],
)
def test_config_failing_schema_is_refused_in_one_line(workflow_copy, tmp_path, config_text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text)
    result = run_snakemake(workflow_copy, "-n", "report", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    assert re.search(r"bad\.yaml.*: config fails the schema " + expected, result.stdout), result.stdout[-2000:]


def test_unknown_model_target_is_refused(workflow_copy):
    result = run_snakemake(workflow_copy, "-n", "results/no-such-model/introspect.json", check=False)
    assert result.returncode != 0
    # the model wildcard only matches configured names: no rule produces another model's files
    assert "No rule to produce results/no-such-model/introspect.json" in result.stdout, result.stdout[-2000:]


def test_broken_tokenizer_stops_the_run_before_fuse(workflow_copy):
    (workflow_copy / "resources" / "tiny-bitcpm" / "tokenizer.json").write_text('{"model": ')
    result = run_snakemake(workflow_copy, "results/tiny-bitcpm/model", check=False)
    assert result.returncode != 0 and "Error in rule repair_config" in result.stdout, result.stdout[-3000:]
    log = (workflow_copy / "logs" / "tiny-bitcpm" / "repair_config.log").read_text()
    assert "tokenizer does not load" in log, log[-2000:]
    model = workflow_copy / "results" / "tiny-bitcpm"
    assert not (model / "model").exists() and not (model / "config.json").exists()


def _perturbed_copy(model_dir, target, layer, scale):
    """Copy of a fused model dir with the seven linears of one layer scaled by ``scale``."""
    shutil.copytree(model_dir, target)
    weight_map = json.loads((target / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in set(weight_map.values()):
        tensors = load_file(target / shard)
        for name in tensors:
            if name.startswith(f"model.layers.{layer}.") and is_quantized_linear(name):
                tensors[name] = tensors[name] * scale
        save_file(tensors, target / shard, metadata={"format": "pt"})
    return target


def test_comparison_of_the_real_run_passes(default_run):
    document = _json(default_run, "compare.json")
    assert document["status"] == "passed", document["reason"]
    assert all(p["classification"] == "identical" for p in document["prompts"])


def test_perturbed_reference_weights_fail_the_floor_gates(default_run, tmp_path):
    """The seven linears of one layer scaled by 10% on the reference side, against the engine's real capture:
    the full-distribution gates fail by more than twice their limit (engine-side bugs: tests/test_sensitivity.py)."""
    model = default_run / "results" / "tiny-bitcpm" / "model"
    settings = _json(default_run, "compare.json")["settings"]
    perturbed = _perturbed_copy(model, tmp_path / "perturbed", layer=0, scale=1.10)
    document = compare(
        _json(default_run, "smoke.json"),
        _json(default_run, "baseline.json"),
        perturbed,
        CompareSettings.from_config(settings),
        capture_dir=default_run / "results" / "tiny-bitcpm" / "capture",
    )
    assert document["status"] == "failed"
    failed = {c["threshold"]: c for c in document["checks"] if c["passed"] is False}
    assert "eval_mean_kld" in failed, document["checks"]
    assert failed["eval_mean_kld"]["value"] >= 2 * failed["eval_mean_kld"]["limit"]


def test_workflow_completes_when_vllm_is_unavailable(default_run, tmp_path):
    """No importable vLLM: smoke says "not run" with the reason, and everything after it still completes.
    Scenario .test/engine-unavailable (its shim/ first on PYTHONPATH, where `import vllm` raises), on a copy of the
    default run with smoke forced: what smoke feeds reruns, what it does not (baseline) stays the default run's."""
    workdir = shutil.copytree(default_run, tmp_path / "wf", symlinks=True)
    config = scenario_config("engine-unavailable", workdir)
    shim = config.parent / "shim"
    assert "vllm is blocked by the test" in (shim / "vllm" / "__init__.py").read_text()
    args = ["report", "--configfile", str(config.relative_to(workdir)), "--forcerun", "smoke"]
    run_snakemake(workdir, *args, env={"PYTHONPATH": str(shim)})
    smoke = _json(workdir, "smoke.json")
    assert smoke["status"] == "not run"
    assert "vllm is blocked by the test" in smoke["reason"]
    assert _json(workdir, "baseline.json")["status"] == "ok"
    compare_doc = _json(workdir, "compare.json")
    assert compare_doc["status"] == "not measured"
    assert "smoke status not run" in compare_doc["reason"]
    bench = _json(workdir, "bench.json")
    assert bench["status"] == "not run" and "vllm is blocked by the test" in bench["reason"]
    assert _json(workdir, "accuracy.json")["status"] == "not measured"
    checks = {c["check"]: c for c in _json(workdir, "report.json")["checks"]}
    assert checks["engine"]["status"] == "not measured"
    assert checks["npu"]["status"] == "not measured"
    assert "passed" not in {checks[name]["status"] for name in ("engine", "serve", "bench_held", "accuracy")}
    assert "vllm is blocked by the test" in (workdir / "results" / "tiny-bitcpm" / "report.md").read_text()


def test_engine_failure_of_one_model_does_not_stop_the_other(default_run, tmp_path):
    """Two models: one engine cannot start (bad setting); its run completes with the failure recorded, the
    index covers both, logs stay separate. Scenario .test/engine-fails-for-one-model, on top of a copy of the
    default run: its other model is the default run's, up to date, so only the new model's stages run."""
    workdir = shutil.copytree(default_run, tmp_path / "wf", symlinks=True)
    args = ["--configfile", str(scenario_config("engine-fails-for-one-model", workdir).relative_to(workdir))]
    planned = planned_rules(workdir, *args)
    # the new model's stages; both reports, since a report names the config files of the run that made it
    assert planned == {rule: 1 for rule in PER_MODEL_RULES} | {"report_model": 2, "report_index": 1, "report": 1}
    run_snakemake(workdir, "report", *args)
    results = workdir / "results"
    bad = json.loads((results / "bad-engine" / "smoke.json").read_text())
    assert bad["status"] == "failed"
    assert "max_model_len" in bad["reason"] or "max_model_len" in "\n".join(bad["log_tail"])
    assert json.loads((results / "bad-engine" / "compare.json").read_text())["status"] == "not measured"
    bad_report = json.loads((results / "bad-engine" / "report.json").read_text())
    assert {c["check"]: c["status"] for c in bad_report["checks"]}["engine"] == "failed"
    good = json.loads((results / "tiny-bitcpm" / "smoke.json").read_text())
    assert good["status"] == "ok"
    # no server for the model whose engine failed; the other model's bench and accuracy stand
    bad_bench = json.loads((results / "bad-engine" / "bench.json").read_text())
    assert bad_bench["status"] == "not run" and "smoke.json status 'failed'" in bad_bench["reason"]
    assert json.loads((results / "bad-engine" / "accuracy.json").read_text())["status"] == "not measured"
    assert json.loads((results / "tiny-bitcpm" / "bench.json").read_text())["status"] == "ok"
    assert json.loads((results / "tiny-bitcpm" / "accuracy.json").read_text())["status"] == "passed"
    assert json.loads((results / "tiny-bitcpm" / "compare.json").read_text())["status"] == "passed"
    index = (results / "report.md").read_text(encoding="utf-8")
    assert "tiny-bitcpm/report.md" in index and "bad-engine/report.md" in index
    good_log = (workdir / "logs" / "tiny-bitcpm" / "smoke.log").read_text()
    bad_log = (workdir / "logs" / "bad-engine" / "smoke.log").read_text()
    assert "results/tiny-bitcpm/model" in good_log and "results/bad-engine/model" not in good_log
    assert "results/bad-engine/model" in bad_log and "results/tiny-bitcpm/model" not in bad_log
