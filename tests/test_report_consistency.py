"""The report says one thing once: the group size §3.3 used also in §1.3, each QAT evidence sentence once, a plain
(not fused) model never ❌ for not being ternary, commands that read the same on any host, and a layer plot that
stays readable at the depth of real models. Rendered from the recorded artifact set (tests/test_report.py's)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image
from test_report import MODEL, NOT_MEASURED, Report, artifact_set, label, load, render, row_status, save

from npuport.report.plots import layers_plot

# What fuse.json and introspect.json say of a plain Llama under fuse.mode auto (the save-pretrained scenario's run).
PLAIN_QAT = {"found": False, "summary": "no sign of ternary QAT (no quantizer tensors, no bundled modeling code "
             "defining a ternary fake quantizer, no config declaration)", "evidence": [], "group_size": None,
             "group_size_from": [], "group_size_conflict": False, "group_sizes_named": [], "scale": None,
             "notes": []}  # fmt: skip


def _section(markdown: str, start: str, end: str) -> str:
    return markdown.split(start, 1)[1].split(end, 1)[0]


def _cells(report: Report, section: int, first: str) -> dict[str, str]:
    """label -> value of the (label, value, source) tables of ``section`` whose first column is ``first``."""
    found = {}
    for rows in report.section_tables(section):
        if rows[0][0] == first:
            found |= {row[0]: row[1] for row in rows[1:]}
    return found


def plain_set(tmp_path: Path) -> Path:
    """The recorded set, turned into a plain model's: no QAT evidence, nothing fused, linears not ternary."""
    directory = artifact_set(tmp_path)
    intro = load(directory, "introspect.json")
    intro["derived"]["qat"] = PLAIN_QAT
    intro["derived"]["ternary"] |= {"status": "latent", "group_size": None, "per_row": False}
    save(directory, "introspect.json", intro)
    fuse = load(directory, "model/fuse.json")
    reason = f"not fused: {PLAIN_QAT['summary']}, so the latent linears need not be ternary"
    fuse |= {"fused": False, "ternary_expected": False, "ternary_expected_reason": reason, "tensors_quantized": 0,
             "linears_ternary": 0, "all_linears_ternary": False, "qat_evidence": PLAIN_QAT, "group_size": 128,
             "group_size_source": "default", "decision": "fuse mode 'auto': no sign of ternary QAT: not fused",
             "qat_forward_check": {"status": "not run", "reason": "nothing was fake-quantized"}}  # fmt: skip
    for record in fuse["tensors"]:
        if "ternary" in record:
            record |= {"ternary": False, "action": "converted"}
    save(directory, "model/fuse.json", fuse)
    return directory


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_plain_model_is_never_shown_failing_for_not_being_ternary(tmp_path, language):
    markdown, report = render(plain_set(tmp_path), language)
    weights = _cells(report, 1, label(language, "col.property"))
    assert weights[label(language, "weights.ternary")] == label(language, "ternary.plain")
    assert weights[label(language, "weights.group_size")] == label(language, "weights.group_size_none")
    fusion = _cells(report, 3, label(language, "col.item"))
    assert fusion[label(language, "fuse.all_ternary")] == label(language, "fuse.not_expected")
    assert fusion[label(language, "fuse.group_size")] == label(language, "fuse.group_size_unused")
    assert fusion[label(language, "fuse.linears")] == label(language, "fuse.linears_not_fused").format(
        ternary=0, checked=28
    )
    assert all("❌" not in value for value in {**weights, **fusion}.values())
    assert row_status(report, "fusion", language) == NOT_MEASURED


def test_a_fused_model_still_shows_its_verdict(tmp_path):
    """The same rows of a model that was fused: ✅ when every linear is ternary, ❌ when one is not."""
    directory = artifact_set(tmp_path)
    _, report = render(directory)
    assert _cells(report, 3, label("en", "col.item"))[label("en", "fuse.all_ternary")] == "✅"
    fuse = load(directory, "model/fuse.json")
    save(directory, "model/fuse.json", fuse | {"all_linears_ternary": False, "linears_ternary": 27})
    _, report = render(directory)
    assert _cells(report, 3, label("en", "col.item"))[label("en", "fuse.all_ternary")] == "❌"


def test_weight_structure_shows_the_group_size_the_evidence_gave(tmp_path):
    """Latent weights carry no group size; §1.3 shows the one the QAT evidence named (and §3.3 used), with where."""
    directory = artifact_set(tmp_path)
    qat = load(directory, "introspect.json")["derived"]["qat"]
    assert qat["group_size"] == 128 and load(directory, "introspect.json")["derived"]["ternary"]["group_size"] is None
    _, report = render(directory)
    shown = _cells(report, 1, label("en", "col.property"))[label("en", "weights.group_size")]
    assert shown.startswith("128") and all(where in shown for where in qat["group_size_from"])
    fused = _cells(report, 3, label("en", "col.item"))[label("en", "fuse.group_size")]
    assert fused.startswith("128")


def test_each_qat_evidence_sentence_is_printed_once(tmp_path):
    directory = artifact_set(tmp_path)
    qat = load(directory, "introspect.json")["derived"]["qat"]
    detail = qat["evidence"][0]["detail"]
    _, report = render(directory)
    cells = [
        _cells(report, 1, label("en", "col.property"))[label("en", "weights.qat")],
        _cells(report, 3, label("en", "col.item"))[label("en", "fuse.qat_evidence")],
    ]
    for cell in cells:
        assert cell.count(detail) == 1, cell
    # a second piece of evidence, not quoted by the summary, is still shown (once)
    intro = load(directory, "introspect.json")
    other = intro["derived"]["qat"]["evidence"][0] | {"detail": "config.json declares ternary QAT (quant_method)"}
    intro["derived"]["qat"]["evidence"] += [other, other]
    save(directory, "introspect.json", intro)
    _, report = render(directory)
    assert _cells(report, 1, label("en", "col.property"))[label("en", "weights.qat")].count("quant_method") == 1


def test_commands_read_relative_to_the_workflow_directory(tmp_path, monkeypatch):
    """The artifacts hold the absolute paths of the host that ran the stages; §4 and §5 show them relative to the
    workflow directory (the report runs there, with results/<model>/ as Snakemake declares it)."""
    monkeypatch.chdir(tmp_path)
    directory = artifact_set(tmp_path).relative_to(tmp_path)  # results/tiny-bitcpm
    host = "/home/alice/work/npuport"
    model = f"{host}/results/{MODEL}/model"
    smoke = load(directory, "smoke.json")
    smoke["vllm_serve_command"] = f"vllm serve {model} --dtype bfloat16 --enforce-eager"
    save(directory, "smoke.json", smoke)
    bench = load(directory, "bench.json")
    bench["serve"]["command_ran"] = [f"{host}/.venv/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                                     "--model", model, "--port", "1"]  # fmt: skip
    for point in bench["points"]:
        point["command"] = f"vllm bench serve --model {model} --result-dir {host}/results/{MODEL}/bench"
    save(directory, "bench.json", bench)
    accuracy = load(directory, "accuracy.json")
    for side in ("engine", "reference"):
        accuracy[side]["command"] = f"lm_eval --model_args pretrained={model} --output_path {host}/results/{MODEL}/x"
    save(directory, "accuracy.json", accuracy)
    markdown, report = render(directory)
    assert host not in markdown.split("## 6.", 1)[0].split("## 4.", 1)[1]
    fences = [body for section, body in report.fences if section.startswith(("4. ", "5. "))]
    assert fences[0].startswith(f"vllm serve results/{MODEL}/model")
    assert any(body.startswith(f"python -m vllm.entrypoints.openai.api_server --model results/{MODEL}/model")
               for body in fences)  # fmt: skip
    assert any(f"--result-dir results/{MODEL}/bench" in body for body in fences)
    assert sum(f"pretrained=results/{MODEL}/model" in body for body in fences) == 2


def _layers(count: int, bug: tuple[int, str] | None = None) -> dict:
    """A layers.json of ``count`` layers, every point at 0.85-1.35x its floor but ``bug`` (layer, kind) at 5x."""
    rng = random.Random(count)

    def point(name, kind, layer, floor, ratio):
        engine = floor * ratio
        return {"point": name, "kind": kind, "layer": layer, "engine": {"rel_l2": engine},
                "floor": {"rel_l2": floor}, "passed": engine <= 2 * floor + 1e-4}  # fmt: skip

    points = [point("embed", "embed", None, 0.0, 1.0)]
    for layer in range(count):
        for kind, name in (("attention", f"layers.{layer}.self_attn"), ("mlp", f"layers.{layer}.mlp"),
                           ("layer", f"layers.{layer}")):  # fmt: skip
            ratio = 5.0 if bug == (layer, kind) else rng.uniform(0.85, 1.35)
            points.append(point(name, kind, layer, 0.003 * (1 + layer / 10), ratio))
    points += [point("norm", "norm", None, 0.01, 1.0), point("logits", "logits", None, 0.008, 1.0)]
    first = next((p["point"] for p in points if not p["passed"]), None)
    return {"points": points, "gate": {"ratio": 2.0, "epsilon": 1e-4}, "engine_dtype": "bfloat16",
            "reference_dtype": "float32", "first_divergent": {"point": first} if first else None}  # fmt: skip


def test_layer_plot_keeps_its_size_at_any_depth(tmp_path):
    """Layer index on the x axis, one line per module kind: 4, 30 and 80 layers give the same readable figure
    (the depth-order strip it replaces was 3603 px wide for 30 layers, one label per point)."""
    sizes = {}
    for count in (4, 30, 80):
        path = layers_plot(_layers(count, bug=(count // 2, "attention")), tmp_path / f"layers-{count}.png")
        sizes[count] = Image.open(path).size
    assert len(set(sizes.values())) == 1, sizes
    width, height = sizes[30]
    assert width <= 1100 and height <= 800, sizes


def test_layer_plot_of_the_recorded_run(tmp_path):
    layers = json.loads((Path(artifact_set(tmp_path)) / "layers.json").read_text(encoding="utf-8"))
    assert layers_plot(layers, tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert layers_plot({"points": []}, tmp_path / "none.png") is None
