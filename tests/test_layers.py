"""The layer comparison names where a port diverges, and nothing on a correct one.

Unit parts: the streamed metrics, the gate, the sequences, the document when nothing can be measured. Then
the comparison on transformers alone (a bf16 "engine" with a fault hooked into one module), and on real engine
runs: one vLLM start on the default run's fused model serves every case, a port bug injected into one layer of
the running engine's workers (tests/fault_injection.py, through LLM.apply_model), the smoke stage's own capture
functions and the `layers` stage's library judging each run; a second, small start runs a MiniCPM checkpoint
after the fold. Last, the `layers` rule in the default run's workflow (no further engine start).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import EAGER_TEST_ENGINE

from npuport.compare.floor import Reference
from npuport.compare.hf_capture import ReferenceTaps
from npuport.compare.layer_plan import LAYER_FILE, LayerSequence, LayersSettings, depth, layer_sequences, point_kind
from npuport.compare.layers import Gate, PointPair, PointStats, compare_layers, first_divergent, point_record
from npuport.core.settings import EngineSettings, EvaluationSettings, GenerationSettings

REPO = Path(__file__).resolve().parents[1]
PROMPTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["generation"]["prompts"]
# eager: the injected faults are forward hooks in the engine's workers, which fire only outside compiled graphs
ENGINE = EngineSettings.from_config(EAGER_TEST_ENGINE)
GENERATION = GenerationSettings.from_config({"prompts": PROMPTS, "max_tokens": 32})
# Segments shorter than the MiniCPM engine's max_model_len (256): a capture request needs room for its one output
# token. The layer capture takes the first 256 text tokens, across the first two segments.
EVALUATION = EvaluationSettings.from_config({"max_tokens": 512, "segment_tokens": 200})
EVALUATION_TEXT = (REPO / "resources" / "evaluation.txt").read_text(encoding="utf-8")
LAYERS = LayersSettings.from_config({})

# Port bugs in one module of one layer, on the engine side only, and the point that must be named.
FAULTS = {
    "correct": (None, None),
    # the 3 % bugs of the README's "Layer gate" table, each named with a margin of 2 or more (larger scales only more)
    "mlp x1.03 (layer 1)": ("mlp_scale,1,1.03", "layers.1.mlp"),
    "attention x1.03 (layer 2)": ("attn_scale,2,1.03", "layers.2.self_attn"),
}
# Measured and stated in the README, not asserted: a smaller bug.
MEASURED = {"attention x1.01 (layer 2)": "attn_scale,2,1.01"}


# -- metrics and gate --------------------------------------------------------------------------------------------


def test_streamed_metrics_equal_the_whole_tensor_formulas():
    torch.manual_seed(0)
    reference = torch.randn(300, 48, dtype=torch.float64)
    side = reference + 0.01 * torch.randn(300, 48, dtype=torch.float64)
    stats = PointStats()
    for start in (0, 70, 200):  # three "sequences", chunked inside
        end = {0: 70, 70: 200, 200: 300}[start]
        stats.add(side[start:end].to(torch.bfloat16), reference[start:end].float())
    s, r = side.to(torch.bfloat16).double(), reference.float().double()
    assert stats.tokens == 300
    assert math.isclose(stats.cosine, float(torch.nn.functional.cosine_similarity(s.flatten(), r.flatten(), dim=0)))
    assert math.isclose(stats.rel_l2, float((s - r).norm() / r.norm()), rel_tol=1e-9)
    assert stats.max_abs == pytest.approx(float((s - r).abs().max()))


def test_non_finite_values_are_counted_and_fail_the_point():
    reference = torch.ones(4, 8)
    side = reference.clone()
    side[1, 2] = float("nan")
    pair = PointPair()
    pair.engine.add(side, reference)
    pair.floor.add(reference, reference)
    record = point_record("layers.0.mlp", pair, Gate(2.0, 1e-3))
    assert record["engine"]["nonfinite"] == 1 and record["passed"] is False
    json.dumps(record, allow_nan=False)  # layers.json is strict JSON


def _point(point: str, engine: float, floor: float, gate: Gate) -> dict:
    pair = PointPair()
    reference = torch.ones(2, 4)
    pair.engine.add(reference * (1 + engine), reference)
    pair.floor.add(reference * (1 + floor), reference)
    return point_record(point, pair, gate)


def test_first_divergent_point_is_the_first_outside_the_gate_in_depth_order():
    gate = Gate(2.0, 1e-3)
    names = ["embed", "layers.0.self_attn", "layers.0.mlp", "layers.0", "layers.1.self_attn", "layers.1.mlp",
             "layers.1", "norm", "logits"]  # fmt: skip
    assert sorted(reversed(names), key=depth) == names
    # (engine, floor) relative errors: within the gate up to layers.1.mlp, which is 5x its floor; later points too
    errors = {"embed": (0.0, 0.0), "layers.0.self_attn": (0.01, 0.006), "layers.0.mlp": (0.01, 0.01),
              "layers.0": (0.01, 0.01), "layers.1.self_attn": (0.0205, 0.01), "layers.1.mlp": (0.05, 0.01)}  # fmt: skip
    points = [_point(n, *errors.get(n, (0.2, 0.05)), gate) for n in names]
    assert points[0]["passed"] and points[0]["ratio_rel_l2"] is None  # floor 0: the epsilon decides
    divergent = first_divergent(points, gate)
    assert divergent["point"] == "layers.1.mlp" and divergent["kind"] == "mlp" and divergent["layer"] == 1
    assert divergent["ratio"] == pytest.approx(5.0) and divergent["previous"] == "layers.1.self_attn"
    assert "model.layers.1.mlp" in divergent["evidence"] and "within the gate" in divergent["evidence"]
    assert first_divergent(points[:5], gate) is None
    assert [point_kind(n)[0] for n in names] == ["embed", "attention", "mlp", "layer", "attention", "mlp", "layer",
                                                 "norm", "logits"]  # fmt: skip


def test_sequences_are_the_prompts_then_the_start_of_the_evaluation_text():
    prompts = [{"prompt_token_ids": [1, 5, 6], "token_ids": [7, 2]}, {"prompt_token_ids": [1, 9], "token_ids": []}]
    segments = [[1, *range(10, 20)], [1, *range(20, 30)]]
    sequences = layer_sequences(prompts, segments, 14)
    assert [s.token_ids for s in sequences] == [[1, 5, 6, 7, 2], [1, 9], segments[0], segments[1][:3]]
    assert sequences[3].source == "evaluation segment 1 (first 3 tokens)"
    assert len(layer_sequences(prompts, segments, 0)) == 2 and len(layer_sequences(prompts, None, 100)) == 2
    assert LayerSequence.from_dict(sequences[2].as_dict()) == sequences[2]


def test_layer_settings_come_from_the_schema():
    assert LAYERS.as_dict() == {
        "eval_tokens": 256,
        "ratio": 2.0,
        "epsilon": 0.0001,
        "gain_allowance": 0.5,
        "dumps": False,
    }


def test_the_engine_stage_does_not_rerun_for_a_change_of_the_comparison():
    from npuport.core.codehash import import_closure

    package = REPO / "src" / "npuport"
    smoke = {p.relative_to(package).as_posix() for p in import_closure(REPO / "workflow" / "scripts" / "smoke.py")}
    layers = {p.relative_to(package).as_posix() for p in import_closure(REPO / "workflow" / "scripts" / "layers.py")}
    assert "compare/layer_plan.py" in smoke and not smoke & {"compare/layers.py", "compare/hf_capture.py"}
    assert {"compare/layers.py", "compare/hf_capture.py", "compare/layer_plan.py"} <= layers
    # the engine side's code (its hooks in engines/capture.py included) is smoke's: the comparison reaches none of it
    assert "engines/capture.py" in smoke and not {p for p in layers if p.startswith("engines/")}


# -- nothing to measure ------------------------------------------------------------------------------------------


def test_an_engine_that_is_not_eager_is_not_hooked():
    from npuport.engines.smoke import capture_layers

    runner = SimpleNamespace(settings=EngineSettings.from_config({"enforce_eager": False}))  # capture() would fail
    record = capture_layers(runner, [LayerSequence("prompt 0", [1, 2, 3])], Path("unused"))
    assert record["status"] == "not run" and record["mode"] == "compiled"
    assert "enforce_eager" in record["reason"]


@pytest.mark.parametrize(
    ("smoke", "reason"),
    [
        ({"status": "failed", "reason": "engine did not start"}, "smoke status failed: engine did not start"),
        ({"status": "ok"}, "holds no layer capture"),
        ({"status": "ok", "layers": {"status": "not run", "mode": "compiled", "reason": "not eager"}},
         "layer capture not run: not eager"),
    ],
)  # fmt: skip
def test_without_a_capture_the_document_says_not_measured(smoke, reason, tmp_path):
    document = compare_layers(smoke, tmp_path, LAYERS, capture_dir=tmp_path, dumps_dir=tmp_path)
    assert document["status"] == "not measured" and reason in document["reason"]
    assert document["points"] == [] and document["first_divergent"] is None
    assert document["mode"] == (smoke.get("layers") or {}).get("mode")
    assert json.loads((tmp_path / "manifest.json").read_text())["kept"] is False


# -- transformers as the engine ----------------------------------------------------------------------------------


def _scale_hook(factor: float):
    def hook(_module, _args, output):
        return (output[0] * factor, *output[1:]) if isinstance(output, tuple) else output * factor

    return hook


def hf_engine_smoke(model_dir: Path, capture: Path, *, dtype: str, fault: tuple[str, float] | None) -> dict:
    """smoke.json's layer capture with transformers at ``dtype`` standing in for the engine (``fault``: a module
    of the model, e.g. "model.layers.1.mlp", whose output is scaled)."""
    from safetensors.torch import save_file

    ids = [1, *range(40, 80)]
    sequences = [LayerSequence("prompt 0", ids[:20]), LayerSequence("evaluation segment 0", ids)]
    reference = Reference(model_dir, dtype)
    modules = dict(reference.model.named_modules())
    handle = modules[fault[0]].register_forward_hook(_scale_hook(fault[1])) if fault else None
    capture.mkdir(parents=True, exist_ok=True)
    for index, sequence in enumerate(sequences):
        captured: dict = {}
        with ReferenceTaps(reference.model, lambda p, t, captured=captured: captured.__setitem__(p, t.clone())):
            reference.logits(sequence.token_ids)
        save_file(captured, str(capture / LAYER_FILE.format(index=index)))
    if handle:
        handle.remove()
    files = [LAYER_FILE.format(index=i) for i in range(len(sequences))]
    return {"status": "ok", "settings": {"engine": {"dtype": dtype}},
            "layers": {"status": "captured", "mode": "eager", "sequences": [s.as_dict() for s in sequences],
                       "capture": {"files": files}}}  # fmt: skip


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    from model_factory import write_plain_checkpoint

    return write_plain_checkpoint(tmp_path_factory.mktemp("random") / "model")


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        (None, None),
        (("model.layers.1.mlp", 1.05), "layers.1.mlp"),
        (("model.layers.0.self_attn", 1.05), "layers.0.self_attn"),
    ],
)
def test_transformers_at_the_engine_dtype_is_its_own_floor(random_model, tmp_path, fault, named):
    smoke = hf_engine_smoke(random_model, tmp_path / "capture", dtype="bfloat16", fault=fault)
    document = compare_layers(smoke, random_model, LAYERS, capture_dir=tmp_path / "capture")
    assert len(document["points"]) == 1 + 3 * 2 + 2 and document["tokens"] == 20 + 41
    if named is None:
        assert document["status"] == "passed", document["first_divergent"]
        # the same computation exactly as the default implementation's floor; the floor spans eager attention too
        assert all(p["engine"]["rel_l2"] == p["floor"]["rel_l2"] for p in document["points"])
        assert all(p["ratio_rel_l2"] is None or p["ratio_rel_l2"] <= 1.0 for p in document["points"])
        assert all(p["floor_rel_l2"] >= p["floor"]["rel_l2"] for p in document["points"])
        return
    assert document["status"] == "failed" and document["first_divergent"]["point"] == named


def test_dumps_hold_the_three_sides_at_every_point(random_model, tmp_path):
    from safetensors import safe_open

    smoke = hf_engine_smoke(random_model, tmp_path / "capture", dtype="bfloat16", fault=None)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    settings = LayersSettings.from_config({"dumps": True})
    document = compare_layers(smoke, random_model, settings, capture_dir=tmp_path / "capture", dumps_dir=dumps)
    names = {p.name for p in dumps.iterdir()}
    sides = ("engine", "floor-bfloat16", "floor-bfloat16-eager", "reference-float32")
    expected = {f"{side}-{i:03d}.safetensors" for side in sides for i in range(2)}
    assert names == expected | {"manifest.json"} and document["dumps"]["kept"] is True
    with safe_open(str(dumps / "reference-float32-001.safetensors"), "pt") as full:
        assert sorted(full.keys(), key=depth) == [p["point"] for p in document["points"]]
        assert full.get_tensor("layers.1.mlp").shape == (41, 128) and full.get_tensor("logits").shape == (41, 1024)
    assert not list((tmp_path / "capture").glob("floor-*"))


def test_without_dumps_no_tensor_is_left(random_model, tmp_path):
    smoke = hf_engine_smoke(random_model, tmp_path / "capture", dtype="bfloat16", fault=None)
    (tmp_path / "dumps").mkdir()
    document = compare_layers(
        smoke, random_model, LAYERS, capture_dir=tmp_path / "capture", dumps_dir=tmp_path / "dumps"
    )
    assert [p.name for p in (tmp_path / "dumps").iterdir()] == ["manifest.json"]
    assert document["dumps"] == {"kept": False, "reason": "layers.dumps is false"}


# -- real engine runs --------------------------------------------------------------------------------------------


def engine_case(runner, model_dir: Path, capture: Path, fault: str | None, *, generation=None, evaluation=None) -> dict:
    """The smoke stage's generation and capture on a running engine with ``fault`` injected; its smoke.json part
    (``generation``, ``evaluation``: this module's settings unless given)."""
    engine = runner.settings
    import fault_injection

    from npuport.engines.records import encode_prompts, load_tokenizer, stop_token_ids
    from npuport.engines.smoke import capture_engine, evaluation_plan, measure

    generation, evaluation = generation or GENERATION, evaluation or EVALUATION
    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, generation)
    stop = stop_token_ids(model_dir, tokenizer)
    plan = evaluation_plan(model_dir, tokenizer, engine=engine, evaluation=evaluation, text=EVALUATION_TEXT)
    with fault_injection.injected(runner, fault):
        run, _batch = measure(runner, prompts, generation=generation, stop_ids=stop.ids)
        fields = capture_engine(runner, run.records, evaluation=plan, layers=LAYERS, capture_dir=capture)
    return {"status": "ok", "settings": {"engine": engine.as_dict()}, "platform": runner.platform,
            "prompts": [r.as_dict() for r in run.records], **fields}  # fmt: skip


def judge(model_dir: Path, work: Path, faults: dict[str, str | None], engine: EngineSettings = ENGINE) -> dict:
    """layers.json of every case, one engine start for all of them."""
    from npuport.engines.vllm_runner import VllmRunner

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    results = {}
    with VllmRunner(model_dir, engine=engine, temperature=0.0, seed=42) as runner:
        for name, fault in faults.items():
            capture = work / name.replace(" ", "_")
            smoke = engine_case(runner, model_dir, capture, fault)
            results[name] = compare_layers(smoke, model_dir, LAYERS, capture_dir=capture)
    return results


def brief(document: dict) -> dict:
    """What the README states: the first divergent point and the largest ratio to the floor."""
    return {"status": document["status"], "first_divergent": (document["first_divergent"] or {}).get("point"),
            "ratio": (document["first_divergent"] or {}).get("ratio"),
            "margin": (document["first_divergent"] or {}).get("margin"), "summary": document["summary"],
            "largest_margin": max((p["margin"] or 0) for p in document["points"]),
            "mode": document["mode"], "tokens": document["tokens"]}  # fmt: skip


@pytest.fixture(scope="module")
def engine_runs(default_run, tmp_path_factory):
    model = default_run / "results" / "tiny-bitcpm" / "model"
    faults = {name: spec for name, (spec, _point) in FAULTS.items()} | MEASURED
    results = judge(model, tmp_path_factory.mktemp("layers"), faults)
    print(json.dumps({name: brief(doc) for name, doc in results.items()}, indent=1))
    return results


@pytest.mark.engine
@pytest.mark.e2e
def test_a_correct_engine_names_no_point(engine_runs):
    document = engine_runs["correct"]
    assert document["status"] == "passed", document["first_divergent"]
    assert document["mode"] == "eager" and document["engine_dtype"] == "bfloat16"
    points = [p["point"] for p in document["points"]]
    assert points[0] == "embed" and points[-2:] == ["norm", "logits"] and len(points) == 1 + 3 * 4 + 2
    assert document["tokens"] > LAYERS.eval_tokens  # the prompts with their outputs, and the text's start
    assert all(p["engine"]["cosine"] > 0.99 for p in document["points"])


@pytest.mark.engine
@pytest.mark.e2e
@pytest.mark.parametrize("name", [n for n, (spec, _) in FAULTS.items() if spec])
def test_a_bug_in_one_layer_is_named_at_that_layer_and_module(engine_runs, name):
    document = engine_runs[name]
    named = FAULTS[name][1]
    assert document["status"] == "failed"
    assert document["first_divergent"]["point"] == named, document["first_divergent"]
    before = [p for p in document["points"] if depth(p["point"]) < depth(named)]
    assert before and all(p["passed"] for p in before)
    assert document["first_divergent"]["margin"] >= 2, document["first_divergent"]


@pytest.fixture(scope="module")
def folded_minicpm(tmp_path_factory) -> Path:
    """A MiniCPM checkpoint (remote code, scale_emb / scale_depth / dim_model_base) after the pipeline's fold."""
    from minicpm_factory import GROUP_SIZE, MiniCPMArch, minicpm_state_dict, write_minicpm_checkpoint

    from npuport.weights.fuse import fuse
    from npuport.weights.introspect import introspect_checkpoint
    from npuport.weights.repair_config import repair

    arch = MiniCPMArch()
    source = write_minicpm_checkpoint(
        tmp_path_factory.mktemp("minicpm") / "ckpt", arch, minicpm_state_dict(arch, seed=3)
    )
    introspection = introspect_checkpoint(source)
    config, _ = repair(source / "config.json", introspection)
    out = tmp_path_factory.mktemp("folded") / "model"
    assert fuse(source, config, introspection, out, group_size=GROUP_SIZE)["minicpm"]["folded"] is True
    return out


@pytest.mark.engine
@pytest.mark.e2e
def test_a_folded_minicpm_model_names_no_point(folded_minicpm, tmp_path):
    """A second, small engine start: vLLM and transformers both on the folded plain-Llama directory."""
    engine = EngineSettings.from_config(EAGER_TEST_ENGINE | {"max_model_len": 256})
    document = judge(folded_minicpm, tmp_path, {"correct": None}, engine)["correct"]
    print(json.dumps(brief(document)))
    assert document["status"] == "passed", document["first_divergent"]
    assert len(document["points"]) == 1 + 3 * 2 + 2 and document["summary"]["max_ratio_rel_l2"] < LAYERS.ratio


@pytest.mark.engine
@pytest.mark.e2e
def test_the_layers_stage_in_the_workflow_starts_no_engine(default_run, tmp_path):
    from conftest import run_snakemake

    default_run = shutil.copytree(default_run, tmp_path / "wf", symlinks=True)  # others read the shared run
    target = "results/tiny-bitcpm/layers.json"
    smoke = default_run / "results" / "tiny-bitcpm" / "smoke.json"
    before = smoke.stat().st_mtime_ns
    # mtime triggers only: code edited in the checkout meanwhile must not make this a rerun of the engine stage
    triggers = ("--rerun-triggers", "mtime")
    planned = run_snakemake(default_run, "-n", target, *triggers).stdout
    assert "Nothing to be done" in planned or re.search(r"^layers\s+1$", planned, re.M), planned[-2000:]
    assert not re.search(r"^(smoke|baseline|compare)\s+\d+$", planned, re.M), planned[-2000:]
    run_snakemake(default_run, target, *triggers)
    assert smoke.stat().st_mtime_ns == before
    document = json.loads((default_run / target).read_text(encoding="utf-8"))
    assert document["status"] == "passed" and document["mode"] == "eager" and document["first_divergent"] is None
    assert (default_run / "results" / "tiny-bitcpm" / "benchmarks" / "layers.tsv").is_file()
    dumps = default_run / "results" / "tiny-bitcpm" / "dumps"
    assert [p.name for p in dumps.iterdir() if not p.name.startswith(".")] == ["manifest.json"]
    capture = json.loads(smoke.read_text(encoding="utf-8"))["layers"]
    assert capture["status"] == "captured" and len(capture["capture"]["files"]) == len(capture["sequences"])
