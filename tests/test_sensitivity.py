"""The comparison's verdict on real engine runs: correct engines pass, injected port bugs fail, with a margin.

One vLLM engine start per model: the stage's own functions (prompt generation, evaluation capture) run on it
with a fault injected into its workers (tests/fault_injection.py, through LLM.apply_model) or none, and the
real ``compare`` judges each run against the transformers reference and its noise floor. The margin rule:
a failing run has a failed gate at least 2x its limit, so it would still fail with every ratio loosened 2x.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import EAGER_TEST_ENGINE

from npuport.compare.compare import compare
from npuport.compare.gates import margin
from npuport.core.settings import (
    BaselineSettings,
    CompareSettings,
    EngineSettings,
    EvaluationSettings,
    GenerationSettings,
)
from npuport.engines.baseline import run_baseline
from npuport.engines.records import encode_prompts, load_tokenizer, stop_token_ids
from npuport.engines.smoke import capture_engine, evaluation_plan, measure

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
PROMPTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["generation"]["prompts"]
# eager: the injected faults are forward hooks in the engine's workers, which fire only outside compiled graphs
ENGINE = EngineSettings.from_config(EAGER_TEST_ENGINE)
GENERATION = GenerationSettings.from_config({"prompts": PROMPTS, "max_tokens": 32})
EVALUATION = EvaluationSettings.from_config({"max_tokens": 2048})
SETTINGS = CompareSettings.from_config({})
EVALUATION_TEXT = (REPO / "resources" / "evaluation.txt").read_text(encoding="utf-8")

# Port bugs that must fail with a margin, and one measured only (the detection limit at the logit level).
FAILING = {
    "mlp x1.03 (layer 0)": "mlp_scale,0,1.03",
    "mlp x1.10 (layer 0)": "mlp_scale,0,1.10",
    "mlp sign flipped (layer 1)": "mlp_sign,1",
    "layer 1 runs layer 2's weights": "swap_layers,1",
}
# Measured and stated in the README, not asserted: the same scale deeper in the model, and a smaller one.
MEASURED = {"mlp x1.03 (layer 1)": "mlp_scale,1,1.03", "mlp x1.01 (layer 0)": "mlp_scale,0,1.01"}
ROPE_BUG = "rope_long,2.0"


def _smoke_document(runner, model_dir: Path, work: Path, fault: str | None) -> tuple[dict, Path]:
    import fault_injection

    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, GENERATION)
    stop = stop_token_ids(model_dir, tokenizer)
    plan = evaluation_plan(model_dir, tokenizer, engine=ENGINE, evaluation=EVALUATION, text=EVALUATION_TEXT)
    capture = work / (fault or "correct").replace(",", "_")
    with fault_injection.injected(runner, fault):
        run, _batch = measure(runner, prompts, generation=GENERATION, stop_ids=stop.ids)
        evaluation = capture_engine(runner, run.records, evaluation=plan, layers=None, capture_dir=capture)[
            "evaluation"
        ]
    doc = {"status": "ok", "settings": {"engine": ENGINE.as_dict()}, "prompts": [r.as_dict() for r in run.records],
           "evaluation": evaluation}  # fmt: skip
    return doc, capture


def _judge(model_dir: Path, work: Path, faults: dict[str, str | None]) -> dict[str, dict]:
    """compare.json of every run, one engine start for all of them."""
    from npuport.engines.vllm_runner import VllmRunner

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    baseline = run_baseline(
        model_dir, baseline=BaselineSettings.from_config({}), generation=GENERATION, max_model_len=ENGINE.max_model_len
    )
    results = {}
    with VllmRunner(model_dir, engine=ENGINE, temperature=0.0, seed=42) as runner:
        for name, fault in faults.items():
            smoke, capture = _smoke_document(runner, model_dir, work, fault)
            results[name] = compare(smoke, baseline, model_dir, SETTINGS, capture_dir=capture)
    return results


def _failed(document: dict) -> list[dict]:
    return [c for c in document["checks"] if c["passed"] is False]


def _summary(document: dict) -> dict:
    """What the README states: status, the largest margin and the failing gates' ratios to their floors."""
    failed = _failed(document)
    return {
        "status": document["status"],
        "largest_margin": max((margin(c) or 0 for c in failed), default=None),
        "failed": {c["threshold"]: round(c["value"] / c["limit"], 2) for c in failed if c.get("limit")},
        "mean_kld": document["evaluation"]["engine"]["kld"]["mean"],
        "floor_mean_kld": document["evaluation"]["floor"]["kld"]["mean"],
    }


@pytest.fixture(scope="module")
def embedded_runs(default_run, tmp_path_factory):
    model = default_run / "results" / "tiny-bitcpm" / "model"
    faults = {"correct": None, **FAILING, **MEASURED, "rope past the switch": ROPE_BUG}
    results = _judge(model, tmp_path_factory.mktemp("embedded"), faults)
    print(json.dumps({name: _summary(doc) for name, doc in results.items()}, indent=1))
    return results


@pytest.fixture(scope="module")
def random_model_run(tmp_path_factory):
    from model_factory import write_plain_checkpoint

    from npuport.core.atomic import read_json
    from npuport.weights.fuse import fuse
    from npuport.weights.introspect import introspect_checkpoint

    work = tmp_path_factory.mktemp("random")
    source = write_plain_checkpoint(work / "source")
    # a plain model goes through `fuse.mode: auto` untouched (no ternary QAT evidence), then both engines run it
    record = fuse(source, read_json(source / "config.json"), introspect_checkpoint(source), work / "model")
    assert record["fused"] is False and "no sign of ternary QAT: not fused" in record["decision"], record["decision"]
    model = work / "model"
    document = _judge(model, tmp_path_factory.mktemp("random-capture"), {"correct": None})["correct"]
    gates = {c["threshold"]: (c["value"], c.get("floor")) for c in document["checks"] if c.get("kind") == "floor"}
    print(json.dumps({"random model": _summary(document), "gates (engine, floor)": gates}, indent=1))
    return document


def test_correct_engine_passes_on_the_embedded_model(embedded_runs):
    document = embedded_runs["correct"]
    assert document["status"] == "passed", _failed(document)
    gates = {c["threshold"] for c in document["checks"] if c.get("kind") == "floor"}
    assert {"eval_mean_kld", "eval_p99_kld", "eval_top1_disagreement", "prompt_mean_topk_kl"} <= gates
    assert document["evaluation"]["full_vocabulary"] is True


def test_correct_engine_passes_on_a_random_model_with_flat_distributions(random_model_run):
    document = random_model_run
    assert document["status"] == "passed", _failed(document)
    statistics = document["evaluation"]["engine"]
    # flat: the reference is unsure at most positions (a trained model is not)
    assert statistics["perplexity"]["base"] > 50
    assert document["evaluation"]["floor"]["kld"]["mean"] > 0


@pytest.mark.parametrize("name", sorted(FAILING))
def test_injected_port_bug_fails_with_a_margin(embedded_runs, name):
    document = embedded_runs[name]
    assert document["status"] == "failed"
    margins = [margin(c) for c in _failed(document) if margin(c) is not None]
    assert max(margins) >= 2, [(c["threshold"], c["value"], c["limit"]) for c in _failed(document)]


def test_rope_bug_past_the_switch_fails_after_it_and_not_before(embedded_runs):
    document = embedded_runs["rope past the switch"]
    switch = document["evaluation"]["rope_switch"]
    assert switch["position"] is not None, switch
    checks = {c["threshold"]: c for c in document["checks"]}
    assert checks["before_switch_mean_kld"]["passed"] is True
    assert checks["after_switch_mean_kld"]["passed"] is False
    assert margin(checks["after_switch_mean_kld"]) >= 2


def test_the_floor_is_measured_on_the_engines_own_tokens(embedded_runs):
    document = embedded_runs["correct"]
    assert document["floor"]["engine_dtype"] == "bfloat16" and document["floor"]["reference_dtype"] == "float32"
    engine, floor = document["evaluation"]["engine"], document["evaluation"]["floor"]
    assert engine["n"] == floor["n"] >= 2000 - 2 * document["evaluation"]["segments"]
    assert torch.isfinite(torch.tensor([engine["kld"]["mean"], floor["kld"]["mean"]])).all()
