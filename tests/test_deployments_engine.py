"""Deployment configurations on the real vLLM engine (CPU backend, in-process, the embedded model).

1. The logit tap takes, in compiled mode, exactly the logprobs vLLM itself reports (prompt logprobs and the sampled
   position's top logprobs).
2. A fault that exists in exactly one configuration fails exactly that configuration's row, with margin, and leaves
   the other rows ✅: a 3 % scale of layer 0's MLP that only the compiled graph carries (the eager row fails, as
   "the deployed configuration fails where eager passes"), and faults that only appear with more than one request in
   a step, on a prefix-cache hit, or in a prefill's later chunks. (The correct engine passes every row: the default
   run's, tests/test_workflow.py.)

Cost: two eager engine starts for the three workload faults (each fault switched on and off on the running
engines, tests/fault_injection.pattern_fault; the faults are out of the graph), two for the graph fault (compiled,
with the fault traced in, and eager). The correct engine passes every default configuration here on the
trained-statistics model (tests/trained_stats_factory.py), and on the pipeline runs of the embedded model and of the
save_pretrained checkpoint (tests/test_workflow.py, tests/test_save_pretrained.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TEST_KV_CACHE_BYTES

from npuport.compare.compare import compare
from npuport.core.settings import (
    BaselineSettings,
    CompareSettings,
    EngineSettings,
    EvaluationSettings,
    GenerationSettings,
)
from npuport.engines.baseline import run_baseline
from npuport.engines.deployment import (
    DeploymentsSettings,
    cannot_run,
    configurations,
    engine_groups,
    engine_key,
    host_facts,
)
from npuport.engines.records import encode_prompts, load_tokenizer, stop_token_ids
from npuport.engines.smoke import Matrix, capture_engine, configuration_row, evaluation_plan, measure, run_group

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
PROMPTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["generation"]["prompts"]
DEPLOYED = EngineSettings.from_config({"max_num_seqs": 8, "kv_cache_memory_bytes": TEST_KV_CACHE_BYTES})
# the workload faults are out of the graph (the model runner's step), so their engines run eagerly: two quick starts
# instead of two compilations (the compiled path: the graph fault below, and the default run's every configuration)
EAGER = DEPLOYED.with_overrides({"enforce_eager": True})
GENERATION = GenerationSettings.from_config({"prompts": PROMPTS, "max_tokens": 32})
EVALUATION = EvaluationSettings.from_config({"max_tokens": 1024})  # one segment of 1024 tokens
MATRIX = DeploymentsSettings.from_config(
    {
        "segments": 1,
        "configurations": [
            {"name": "batch", "workload": {"kind": "batch", "concurrent": 8}},
            {"name": "prefix-cache", "workload": {"kind": "prefix_hit", "prefix_tokens": 512}},
            {"name": "chunked-prefill", "engine": {"max_num_batched_tokens": 256}},
        ],
    }
)
TEXT = (REPO / "resources" / "evaluation.txt").read_text(encoding="utf-8")
# each workload fault and the row it must fail
PATTERN_FAULTS = {"batch": "batch", "prefix_hit": "prefix-cache", "chunked": "chunked-prefill"}


def _matrix(model_dir: Path, settings: DeploymentsSettings, deployed: EngineSettings) -> tuple[Matrix, dict]:
    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, GENERATION)
    stop = stop_token_ids(model_dir, tokenizer)
    plan = evaluation_plan(model_dir, tokenizer, engine=deployed, evaluation=EVALUATION, text=TEXT)
    segments = plan["segments"]
    pool = [t for s in segments for t in s[1:]]
    matrix = Matrix(configurations(settings, deployed), [list(s) for s in segments[: settings.segments]], pool,
                    tokenizer.bos_token_id, list(prompts), GENERATION, stop.ids)  # fmt: skip
    return matrix, plan


def _runs(model_dir: Path, work: Path, settings: DeploymentsSettings, conditions: dict, *, deployed: EngineSettings,
          build=None, inspect=None):  # fmt: skip
    """smoke.json-like documents (and capture directories) of each condition (name -> the workload fault to switch
    on, or None), one engine start per engine group for all of them; ``inspect(runner)`` runs once on the deployed
    engine (its result under the "inspected" key)."""
    import fault_injection

    from npuport.engines.vllm_runner import VllmRunner

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    matrix, plan = _matrix(model_dir, settings, deployed)
    docs = {name: {"status": "ok", "settings": {"engine": deployed.as_dict()}, "rows": {}} for name in conditions}
    records: dict[str, list] = {}
    host = host_facts()
    for engine, group in engine_groups(matrix.deployments):
        is_deployed = engine_key(engine) == engine_key(deployed)
        reason = cannot_run(engine, host)
        if reason is not None:  # as the smoke stage records it: "not run", with what the host lacks
            for doc in docs.values():
                doc["rows"] |= {d.name: configuration_row(matrix, d) | {"status": "not run", "reason": reason}
                                for d in group}  # fmt: skip
            continue
        with (build or _nothing)(), VllmRunner(model_dir, engine=engine, temperature=0.0, seed=42) as runner:
            if is_deployed and inspect is not None:
                inspected = inspect(runner, matrix)
            for name, fault in conditions.items():
                capture = work / name
                with fault_injection.pattern_fault(fault):
                    if is_deployed:
                        if not records:  # each prompt alone: no workload fault reaches it, measured once
                            measured, _ = measure(runner, matrix.prompts, generation=GENERATION,
                                                  stop_ids=matrix.stop_ids)  # fmt: skip
                            records["prompts"] = measured.records
                        docs[name]["platform"] = runner.platform
                        docs[name]["prompts"] = [r.as_dict() for r in records["prompts"]]
                        docs[name] |= capture_engine(runner, records["prompts"], evaluation=plan, layers=None,
                                                     capture_dir=capture)  # fmt: skip
                    docs[name]["rows"] |= run_group(runner, matrix, engine, records["prompts"], capture)
    for doc in docs.values():
        rows = doc.pop("rows")
        doc["deployments"] = {"segments": len(matrix.segments),
                              "configurations": [rows[d.name] for d in matrix.deployments[1:]]}  # fmt: skip
    if inspect is not None:
        docs["inspected"] = inspected
    return docs


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _judge(model_dir: Path, work: Path, docs: dict) -> dict:
    baseline = run_baseline(model_dir, baseline=BaselineSettings.from_config({}), generation=GENERATION,
                            max_model_len=DEPLOYED.max_model_len)  # fmt: skip
    return {
        name: compare(doc, baseline, model_dir, CompareSettings.from_config({}), capture_dir=work / name)
        for name, doc in docs.items()
    }


def _rows(document: dict) -> dict[str, dict]:
    return {r["name"]: r for r in document["deployments"]["configurations"]}


def _summary(document: dict) -> dict:
    rows = {n: (r["status"], r.get("fault_on"), round(r.get("margin") or 0, 2)) for n, r in _rows(document).items()}
    return {"compare": document["status"], "rows": rows}


@pytest.fixture(scope="module")
def embedded(default_run) -> Path:
    return default_run / "results" / "tiny-bitcpm" / "model"


def _tap_against_vllm(runner, matrix: Matrix) -> dict:
    """The logit tap on the running compiled engine beside vLLM's own prompt logprobs and sampled logprobs."""
    from safetensors.torch import load_file
    from vllm import SamplingParams

    from npuport.engines import logit_tap

    llm, ids = runner._llm, matrix.segments[0][:300]
    llm.collective_rpc(logit_tap.install)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5, prompt_logprobs=0,
                            extra_args={logit_tap.MARK: "x"})  # fmt: skip
    llm.reset_prefix_cache()
    out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
    path = runner.model_dir.parent / f"tap-check-{os.getpid()}.safetensors"
    try:
        found = llm.collective_rpc(logit_tap.collect, args=({"x": str(path)},))[0]["x"]
        captured = load_file(str(path))
    finally:
        path.unlink(missing_ok=True)
        llm.collective_rpc(logit_tap.remove)
    return {"ids": ids, "found": found, "captured": captured, "out": out,
            "compiled": llm.llm_engine.vllm_config.compilation_config.mode}  # fmt: skip


@pytest.fixture(scope="module")
def pattern_runs(embedded, tmp_path_factory):
    work = tmp_path_factory.mktemp("patterns")
    # the correct engine's rows: the default run's (tests/test_workflow.py), every default configuration on it
    conditions = {kind: kind for kind in PATTERN_FAULTS}
    results = _judge(embedded, work, _runs(embedded, work, MATRIX, conditions, deployed=EAGER))
    print(json.dumps({name: _summary(doc) for name, doc in results.items()}, indent=1))
    return results


@pytest.fixture(scope="module")
def graph_run(embedded, tmp_path_factory):
    import fault_injection

    work = tmp_path_factory.mktemp("graph")
    settings = DeploymentsSettings.from_config(
        {"segments": 1, "configurations": [{"name": "eager", "engine": {"enforce_eager": True}},
                                           {"name": "batch", "workload": {"kind": "batch"}}]}
    )  # fmt: skip
    docs = _runs(embedded, work, settings, {"graph": None}, deployed=DEPLOYED, build=fault_injection.graph_fault,
                 inspect=_tap_against_vllm)  # fmt: skip
    inspected = docs.pop("inspected")
    result = _judge(embedded, work, docs)["graph"]
    print(json.dumps(_summary(result), indent=1))
    return {"compare": result, "inspected": inspected}


@pytest.fixture(scope="module")
def trained_correct(tmp_path_factory):
    """The correct engine, every default configuration (the schema's list), on the trained-statistics model."""
    from trained_stats_factory import shared_trained_stats_llama

    model = shared_trained_stats_llama(tmp_path_factory)
    work = tmp_path_factory.mktemp("trained-correct")
    settings = DeploymentsSettings.from_config({"segments": 1})
    result = _judge(model, work, _runs(model, work, settings, {"correct": None}, deployed=DEPLOYED))["correct"]
    print(json.dumps(_summary(result), indent=1))
    return result


def test_the_correct_engine_passes_every_default_row_on_the_trained_statistics_model(trained_correct):
    """A model other than the embedded one, with trained-model statistics (massive activations, attention sinks):
    every default configuration passes, or is "not run" with what this host lacks (never passed by argument)."""
    rows = _rows(trained_correct)
    assert trained_correct["status"] == "passed", _summary(trained_correct)
    assert set(rows) == {"eager", "batch", "prefix-cache", "chunked-prefill", "tp2", "fp8-kv-cache"}
    for name, row in rows.items():  # tp2 and fp8 need what the host may not have (NUMA nodes, AVX-512)
        host_lacks = name in ("tp2", "fp8-kv-cache") and row["status"] == "not run" and "needs" in row["reason"]
        assert row["status"] == "passed" or host_lacks, (name, row["status"], row.get("reason"))
    assert rows["eager"]["status"] == rows["batch"]["status"] == "passed"


def test_the_tap_takes_vllms_own_logprobs_in_compiled_mode(graph_run):
    # on the compiled engine that carries the graph fault: the tap takes what vLLM computed, fault or not
    tap = graph_run["inspected"]
    ids, captured, out = tap["ids"], tap["captured"], tap["out"]
    assert tap["compiled"] != 0  # the deployed engine is compiled (0: no compilation)
    assert tap["found"]["rows"] == len(ids) and captured["positions"].tolist() == list(range(len(ids)))
    logprobs = torch.log_softmax(captured["logits"].float(), dim=-1)
    own = torch.tensor([out.prompt_logprobs[i + 1][ids[i + 1]].logprob for i in range(len(ids) - 1)])
    mine = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert torch.allclose(mine, own, atol=1e-5), (mine - own).abs().max()
    last = out.outputs[0].logprobs[0]
    assert all(abs(entry.logprob - logprobs[-1, token].item()) < 1e-5 for token, entry in last.items())


@pytest.mark.parametrize(("fault", "row"), sorted(PATTERN_FAULTS.items()))
def test_a_workload_fault_fails_exactly_its_row(pattern_runs, fault, row):
    document = pattern_runs[fault]
    rows = _rows(document)
    assert document["status"] == "passed"  # the deployed configuration (each sequence alone) does not carry it
    assert rows[row]["status"] == "failed" and rows[row]["fault_on"] == "this configuration", _summary(document)
    assert rows[row]["margin"] >= 2, _summary(document)
    assert all(r["status"] == "passed" for name, r in rows.items() if name != row), _summary(document)


def test_a_graph_only_fault_fails_the_eager_row_as_the_deployed_paths(graph_run):
    graph_run = graph_run["compare"]
    rows = _rows(graph_run)
    assert graph_run["status"] == "failed"  # the deployed (compiled) configuration carries it
    eager = rows["eager"]
    assert eager["status"] == "failed" and eager["fault_on"] == "the deployed configuration", _summary(graph_run)
    assert eager["margin"] >= 2, _summary(graph_run)
    # batching runs on the same compiled graph: it shares the fault and differs in nothing from the deployed run
    assert rows["batch"]["status"] == "passed" and rows["batch"]["shared_failures"], _summary(graph_run)
