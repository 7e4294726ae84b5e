"""The gates on a model with trained-model statistics (tests/trained_stats_factory.py: massive activations from
layer 1 on, attention sinks on the first token, peaked first-layer attention, RMSNorm weights over 400x), saved by
transformers' save_pretrained: the real vLLM engine passes compare and layers, and a 3 % scale of one layer's
attention output and of one layer's MLP output (engine only) fail the layer gate at that layer and module, with
margin. One eager engine start (the faults are forward hooks in its workers); the printed summary is the README's
"Layer gate" table."""

from __future__ import annotations

import json
import os

import pytest
from conftest import EAGER_TEST_ENGINE
from test_layers import LAYERS, engine_case
from trained_stats_factory import shared_trained_stats_llama

from npuport.compare.compare import compare
from npuport.compare.layers import compare_layers
from npuport.core.settings import (
    BaselineSettings,
    CompareSettings,
    EngineSettings,
    EvaluationSettings,
    GenerationSettings,
)
from npuport.engines.baseline import run_baseline

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

ENGINE = EngineSettings.from_config(EAGER_TEST_ENGINE)
PROMPTS = ["The capital of France is", "Hello, how are you?", "def add(a, b):"]
GENERATION = GenerationSettings.from_config({"prompts": PROMPTS, "max_tokens": 24})
EVALUATION = EvaluationSettings.from_config({"max_tokens": 2048})
# the 3 % bugs and the point each must be named at: attention in the first sink layer, an MLP after it
FAULTS = {"attention x1.03 (layer 2)": ("attn_scale,2,1.03", "layers.2.self_attn"),
          "mlp x1.03 (layer 3)": ("mlp_scale,3,1.03", "layers.3.mlp")}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from npuport.engines.vllm_runner import VllmRunner

    model = shared_trained_stats_llama(tmp_path_factory)
    work = tmp_path_factory.mktemp("trained-stats-runs")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    cases = {"correct": None} | {name: spec for name, (spec, _point) in FAULTS.items()}
    smokes = {}
    with VllmRunner(model, engine=ENGINE, temperature=0.0, seed=42) as runner:
        for name, fault in cases.items():
            smokes[name] = engine_case(runner, model, work / name.replace(" ", "_"), fault,
                                       generation=GENERATION, evaluation=EVALUATION)  # fmt: skip
    layers = {name: compare_layers(smoke, model, LAYERS, capture_dir=work / name.replace(" ", "_"))
              for name, smoke in smokes.items()}  # fmt: skip
    baseline = run_baseline(model, baseline=BaselineSettings.from_config({}), generation=GENERATION,
                            max_model_len=ENGINE.max_model_len)  # fmt: skip
    verdict = compare(smokes["correct"], baseline, model, CompareSettings.from_config({}), capture_dir=work / "correct")
    summary = {
        "compare": {c["threshold"]: round(c["ratio_to_floor"], 2) if c.get("ratio_to_floor") else c["value"]
                    for c in verdict["checks"] if c.get("kind") == "floor"},
        "points (engine / floor, margin = the larger of rel L2 / limit and |gain| / limit)": {
            name: {p["point"]: (round(p["ratio_rel_l2"] or 0, 2), round(p["margin"] or 0, 2)) for p in doc["points"]}
            for name, doc in layers.items()
        },
        "first divergent": {name: (doc["first_divergent"] or {}).get("point") for name, doc in layers.items()},
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    return {"compare": verdict, "layers": layers}


def test_correct_engine_passes_compare_on_the_trained_model(runs):
    verdict = runs["compare"]
    assert verdict["status"] == "passed", [c for c in verdict["checks"] if c["passed"] is False]
    assert verdict["evaluation"]["full_vocabulary"] is True


def test_correct_engine_passes_every_layer_point_on_the_trained_model(runs):
    document = runs["layers"]["correct"]
    assert document["status"] == "passed", document["first_divergent"]
    assert len(document["points"]) == 1 + 3 * 6 + 2


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_three_percent_bug_is_named_at_its_layer_and_module_with_margin(runs, name):
    document = runs["layers"][name]
    named = FAULTS[name][1]
    assert document["status"] == "failed" and document["first_divergent"]["point"] == named, document["summary"]
    point = next(p for p in document["points"] if p["point"] == named)
    assert point["margin"] >= 2, point
