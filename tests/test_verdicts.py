"""The report's verdict rows (npuport.report.verdicts) and the overall status, from artifact objects written here:
every row's status for each state of the artifact field it reads, which rows may be "not measured" without touching
the overall status, and the symbols a reader sees. Expected values are literal: ✅ ❌ ⚠, "passed", "failed",
"not measured"."""

from __future__ import annotations

import copy

import pytest
from test_gates import GATES  # the nine gates, written out

from npuport.report.artifacts import Artifacts, Doc
from npuport.report.messages import Messages
from npuport.report.verdicts import (
    SYMBOLS,
    Verdict,
    accelerator_verdict,
    accuracy_verdict,
    baseline_verdict,
    bench_held_verdict,
    bench_regression_verdict,
    config_verdict,
    engine_verdict,
    fusion_verdict,
    gate_verdicts,
    layers_verdict,
    overall_status,
    qat_forward_verdict,
    serve_verdict,
    tokens_verdict,
    verdicts,
)

T = Messages("en")


def gate_check(name: str, passed: bool | None = True) -> dict:
    return {"threshold": name, "kind": "floor", "value": 1e-4, "floor": 1e-4, "limit": 2.01e-4, "op": "<=",
            "ratio_to_floor": 1.0, "passed": passed}  # fmt: skip


# One model's artifacts where every check passed, on an NPU.
GOOD = {
    "manifest": {}, "introspect": {}, "config": {},
    "repair": {"transformers_config_class": "LlamaConfig", "repaired": ["vocab_size"]},
    "fuse": {"all_linears_ternary": True, "linears_ternary": 14, "linears_checked": 14, "tensors_quantized": 14,
             "qat_forward_check": {"status": "passed", "max_abs_logit_diff": 0.0, "tolerance": 1e-3, "tokens": 16}},
    "env": {"platform": "npu"},
    "smoke": {"status": "ok", "platform": {"name": "npu", "device": "Ascend910B3"}},
    "baseline": {"status": "ok", "platform": {"device": "CPU"}},
    "compare": {"status": "passed", "prompts": [{"classification": "identical", "matched": 8, "compared": 8},
                                                {"classification": "benign divergence", "matched": 5, "compared": 8}],
                "checks": [gate_check(name) for name in GATES] + [{"threshold": "no_real_divergence", "passed": True}],
                "evaluation": {"status": "measured", "rope_switch": {"position": 256, "source": "longrope"}}},
    "layers": {"status": "passed", "points": [{"point": "embed"}], "first_divergent": None,
               "summary": {"max_ratio_rel_l2": 1.2, "point": "embed"}},
    "bench": {"status": "ok", "settings": {"bench": {"enabled": True}},
              "serve": {"status": "ok", "prompts": [{"text_equal_offline": True}] * 3, "startup_seconds": 4.0},
              "points": [{"completed": 4}], "held": {"status": "passed", "failed_requests": 0, "truncated_requests": 0},
              "regression": {"status": "passed", "points": [{"ratio": 1.02}], "min_ratio": 0.97, "baseline": "b.json"}},
    "accuracy": {"settings": {"enabled": True},
                 "check": {"status": "passed", "reason": "not worse on t",
                           "tasks": [{"task": "t", "status": "passed", "engine": {"score": 90.0},
                                      "reference": {"score": 91.0}, "n": 72}]}},
}  # fmt: skip
ROWS = ("config", "fusion", "qat_forward", "engine", "npu", "gpu", "serve", "baseline", "tokens", *GATES, "layers",
        "bench_held", "bench_regression", "accuracy")  # fmt: skip


def rows(edit=None) -> dict[str, Verdict]:
    docs = copy.deepcopy(GOOD)
    if edit:
        edit(docs)
    artifacts = Artifacts(**{name: Doc.of(value) for name, value in docs.items()})
    return {v.check: v for v in verdicts(T, artifacts)}


def status(edit=None) -> str:
    return overall_status(list(rows(edit).values()))


def test_symbols_a_reader_sees():
    assert SYMBOLS == {"passed": "✅", "failed": "❌", "not measured": "⚠"}


def test_every_row_of_a_good_npu_run():
    good = rows()
    assert [name for name in good if name in ROWS] == list(ROWS)  # these rows, in the report's order (among others)
    assert {name: good[name].status for name in ROWS} == dict.fromkeys(ROWS, "passed") | {"gpu": "not measured"}
    assert status() == "passed"  # the GPU row is optional: a run is on one platform


@pytest.mark.parametrize(
    ("artifact", "edit", "row", "expected", "overall"),
    [
        ("smoke", {"status": "failed", "reason": "OOM"}, "engine", "failed", "failed"),
        ("smoke", {"status": "not run", "reason": "no vLLM", "platform": {}}, "engine", "not measured", "failed"),
        # (failed overall through the NPU row: env.json chose the NPU and the engine did not run on it)
        ("baseline", {"status": "failed", "reason": "OOM"}, "baseline", "failed", "failed"),
        ("baseline", {"status": "not run"}, "baseline", "not measured", "not measured"),
        ("compare", {"status": "failed"}, "tokens", "passed", "passed"),  # the token row reads the prompts
        ("layers", {"status": "failed", "first_divergent": {"module": "model.layers.1.mlp", "ratio": 7.0}},
         "layers", "failed", "failed"),
        ("layers", {"status": "passed", "first_divergent": {"module": "model.layers.1.mlp", "ratio": 7.0}},
         "layers", "failed", "failed"),  # a divergent point fails the row whatever the status says
        ("layers", {"status": "not measured", "reason": "no capture"}, "layers", "not measured", "not measured"),
        ("fuse", {"all_linears_ternary": False}, "fusion", "failed", "failed"),
        ("fuse", {"all_linears_ternary": None}, "fusion", "not measured", "not measured"),
        ("fuse", {"qat_forward_check": {"status": "failed", "reason": "logits differ"}}, "fusion", "failed", "failed"),
        ("fuse", {"qat_forward_check": {"status": "not run", "reason": "no remote code"}}, "qat_forward",
         "not measured", "passed"),  # optional: nothing to check against
        ("fuse", {"ternary_expected": False, "ternary_expected_reason": "no QAT"}, "fusion", "not measured", "passed"),
        ("repair", {"transformers_config_class": "not checked: no transformers"}, "config", "not measured",
         "not measured"),
        ("repair", {"transformers_config_class": ""}, "config", "not measured", "not measured"),
        ("accuracy", {"check": {"status": "failed", "reason": "worse on t", "tasks": []}}, "accuracy", "failed",
         "failed"),
        ("accuracy", {"check": {"status": "not measured", "reason": "offline"}}, "accuracy", "not measured",
         "not measured"),  # enabled and not measured: the overall status says so
        ("accuracy", {"settings": {"enabled": False}, "check": {"status": "not measured", "reason": "off"}},
         "accuracy", "not measured", "passed"),
    ],
)  # fmt: skip
def test_each_row_follows_the_field_it_reads(artifact, edit, row, expected, overall):
    def apply(docs):
        docs[artifact] |= edit

    got = rows(apply)
    assert got[row].status == expected
    assert status(apply) == overall


def test_serve_row():
    def serve(value):
        def edit(docs):
            docs["bench"]["serve"] = value

        return edit

    differs = {"status": "ok", "prompts": [{"text_equal_offline": True}, {"text_equal_offline": False}]}
    assert rows(serve(differs))["serve"].status == "failed"  # a served text that differs from the offline one
    assert rows(serve({"status": "ok", "prompts": []}))["serve"].status == "failed"  # nothing compared: no pass
    assert rows(serve({"status": "failed", "reason": "no answer"}))["serve"].status == "failed"
    assert rows(serve({"status": "not run", "reason": "off"}))["serve"].status == "not measured"
    assert status(serve(differs)) == "failed"
    assert serve_verdict(T, None).status == "not measured"


def test_bench_rows_and_when_they_are_optional():
    def bench(**parts):
        def edit(docs):
            docs["bench"] |= parts

        return edit

    held_failed = bench(held={"status": "failed", "reason": "2 failed", "failed_requests": 2})
    assert rows(held_failed)["bench_held"].status == "failed" and status(held_failed) == "failed"
    held_missing = bench(held={"status": "not measured", "reason": "no point ran"})
    assert rows(held_missing)["bench_held"].status == "not measured"
    assert status(held_missing) == "not measured"  # the ladder was on: not measured counts
    ladder_off = bench(held={"status": "not measured", "reason": "off"}, settings={"bench": {"enabled": False}},
                       regression={"status": "not measured", "reason": "off", "baseline": "b.json"})  # fmt: skip
    assert status(ladder_off) == "passed"  # switched off in the config: both rows optional
    slower = bench(regression={"status": "failed", "reason": "below", "points": [{"ratio": 0.5}], "baseline": "b"})
    assert rows(slower)["bench_regression"].status == "failed" and status(slower) == "failed"
    no_baseline = bench(regression={"status": "not measured", "reason": "no bench.baseline", "baseline": None})
    assert rows(no_baseline)["bench_regression"].status == "not measured" and status(no_baseline) == "passed"
    unmatched = bench(regression={"status": "not measured", "reason": "no point matches", "baseline": "b.json"})
    assert status(unmatched) == "not measured"  # a baseline was named and nothing could be compared


def test_gate_rows():
    def checks(*changed):
        def edit(docs):
            docs["compare"]["checks"] = [gate_check(n, False if n in changed else True) for n in GATES]

        return edit

    failed = rows(checks("after_switch_mean_kld"))
    assert failed["after_switch_mean_kld"].status == "failed" and failed["before_switch_mean_kld"].status == "passed"
    assert status(checks("after_switch_mean_kld")) == "failed"

    def missing(*names, switch=256):
        def edit(docs):
            docs["compare"]["checks"] = [gate_check(n) for n in GATES if n not in names]
            docs["compare"]["evaluation"]["rope_switch"] = {"position": switch, "source": "config"}

        return edit

    no_switch = missing("before_switch_mean_kld", "after_switch_mean_kld", switch=None)
    got = rows(no_switch)
    assert got["before_switch_mean_kld"].status == "not measured" and got["before_switch_mean_kld"].optional
    assert status(no_switch) == "passed"  # no RoPE switch in the text: the bucket gates do not apply
    with_switch = missing("after_switch_mean_kld")
    assert rows(with_switch)["after_switch_mean_kld"].status == "not measured"
    assert not rows(with_switch)["after_switch_mean_kld"].optional
    assert status(with_switch) == "not measured"  # the switch is inside the text and the gate is missing
    assert status(missing("eval_mean_kld", switch=None)) == "not measured"


def test_compare_not_measured_makes_every_gate_and_the_token_row_not_measured():
    def edit(docs):
        docs["compare"] = {"status": "not measured", "reason": "smoke status not run"}

    got = rows(edit)
    assert {got[name].status for name in (*GATES, "tokens")} == {"not measured"}
    assert status(edit) == "not measured"
    assert [v.check for v in gate_verdicts(T, None)] == list(GATES)
    assert {v.status for v in gate_verdicts(T, None)} == {"not measured"}


def test_fixed_thresholds_are_rows_too_and_the_token_check_is_not():
    compare = copy.deepcopy(GOOD["compare"])
    compare["checks"].append({"threshold": "max_mean_abs_logprob_diff", "kind": "fixed", "value": 0.3, "op": "<=",
                              "limit": 0.1, "passed": False})  # fmt: skip
    got = [(v.check, v.status) for v in gate_verdicts(T, compare)]
    assert got == [(name, "passed") for name in GATES] + [("max_mean_abs_logprob_diff", "failed")]


def test_token_row():
    compare = {"status": "passed", "prompts": [{"classification": "identical"}, {"classification": "real divergence"}]}
    assert tokens_verdict(T, compare).status == "failed"
    compare["prompts"][1]["classification"] = "benign divergence"
    assert tokens_verdict(T, compare).status == "passed"
    assert tokens_verdict(T, {"status": "failed", "prompts": []}).status == "not measured"
    assert tokens_verdict(T, {"status": "not measured"}).status == "not measured"
    assert tokens_verdict(T, None).status == "not measured"
    three = [{"classification": "identical", "matched": 4, "compared": 4}] * 2 + [
        {"classification": "benign divergence", "matched": 1, "compared": 4}
    ]
    assert tokens_verdict(T, {"status": "passed", "prompts": three}).detail == (
        "9 of 12 tokens matched; 2 of 3 prompts identical, 1 benign near-ties"
    )


def test_accelerator_rows():
    npu_ok = {"status": "ok", "platform": {"name": "npu", "device": "Ascend910B3"}}
    npu_failed = {"status": "failed", "reason": "x", "platform": {"name": "npu", "device": "Ascend910B3"}}
    cpu = {"status": "ok", "platform": {"name": "cpu", "device": "vLLM CPU backend"}}
    assert accelerator_verdict(T, "npu", platform="npu", smoke=npu_ok, env={}).status == "passed"
    assert accelerator_verdict(T, "npu", platform="npu", smoke=npu_failed, env={}).status == "failed"
    assert accelerator_verdict(T, "gpu", platform="cuda", smoke=npu_ok, env={}).status == "not measured"
    assert accelerator_verdict(T, "npu", platform="npu", smoke=cpu, env={"platform": "cpu"}).status == "not measured"
    meant = {"status": "failed", "reason": "x"}  # the probe chose the NPU, the engine failed before saying where
    assert accelerator_verdict(T, "npu", platform="npu", smoke=meant, env={"platform": "npu"}).status == "failed"
    assert accelerator_verdict(T, "gpu", platform="cuda", smoke=meant, env={"platform": "npu"}).status == "not measured"


def test_rows_of_missing_artifacts_are_not_measured():
    for verdict in (
        config_verdict(T, None, None),
        fusion_verdict(T, None),
        qat_forward_verdict(T, None),
        layers_verdict(T, None),
        engine_verdict(T, None),
        baseline_verdict(T, None),
        bench_held_verdict(T, None),
        bench_regression_verdict(T, None),
        accuracy_verdict(T, None),
    ):
        assert verdict.status == "not measured", verdict.check  # fmt: skip
    assert qat_forward_verdict(T, {"qat_forward_check": {"status": "failed", "reason": "x"}}).status == "failed"


def v(check: str, status: str, optional: bool = False) -> Verdict:
    return Verdict(check, status, "", "", optional)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([("a", "passed"), ("b", "passed")], "passed"),
        ([("a", "passed"), ("b", "failed")], "failed"),
        ([("a", "failed"), ("b", "not measured")], "failed"),  # a failure outranks anything not measured
        ([("a", "passed"), ("b", "not measured")], "not measured"),
        ([("a", "passed"), ("npu", "not measured"), ("gpu", "not measured")], "passed"),  # one platform per run
        ([("a", "passed"), ("npu", "failed")], "failed"),  # optional rows still fail the run
        ([("npu", "not measured"), ("gpu", "not measured")], "not measured"),  # nothing passed
        ([], "not measured"),
    ],
)
def test_overall_status(statuses, expected):
    assert overall_status([v(c, s) for c, s in statuses]) == expected


def test_overall_status_with_rows_marked_optional():
    assert overall_status([v("a", "passed"), v("b", "not measured", optional=True)]) == "passed"
    assert overall_status([v("a", "passed"), v("b", "failed", optional=True)]) == "failed"
    assert overall_status([v("b", "not measured", optional=True)]) == "not measured"
    assert overall_status([v("a", "passed"), v("c", "not measured")], optional=("c",)) == "passed"


def test_row_details_carry_what_was_measured():
    good = rows()
    assert good["config"].detail.endswith("; the engine loaded the fused model with it")
    unloaded = rows(lambda docs: docs["smoke"].update(status="failed", reason="OOM"))
    assert "the engine loaded" not in unloaded["config"].detail
    # prompts: 8 + 5 of 8 + 8 tokens matched, one identical, one a benign near-tie
    assert good["tokens"].detail == "13 of 16 tokens matched; 1 of 2 prompts identical, 1 benign near-ties"
    assert good["bench_held"].detail == "1 points, 4 requests completed; 0 failed, 0 truncated"
    assert good["accuracy"].detail.startswith("`t`: engine 90 vs reference 91 (n 72)")

    def diverged(docs):
        docs["layers"] |= {"status": "failed", "first_divergent": {"module": "model.layers.1.mlp", "ratio": 7.0}}

    assert rows(diverged)["layers"].detail == "diverges first at `model.layers.1.mlp` (engine / floor ×7.00)"

    def slower(docs):
        docs["bench"]["regression"] = {"status": "failed", "points": [{"ratio": 0.5}, {"ratio": None}, {"ratio": 0.8}],
                                       "min_ratio": 0.97, "baseline": "b.json", "reason": "below"}  # fmt: skip

    assert rows(slower)["bench_regression"].detail.startswith("lowest ratio to the baseline 0.50 (limit ≥ 0.97)")


def test_a_cuda_run_passes_the_gpu_row():
    def on_cuda(docs):
        docs["smoke"]["platform"] = {"name": "cuda", "device": "NVIDIA H100 80GB HBM3"}
        docs["env"]["platform"] = "cuda"

    got = rows(on_cuda)
    assert got["gpu"].status == "passed" and got["npu"].status == "not measured"
    assert status(on_cuda) == "passed"


def test_each_deployment_configuration_is_a_row():
    def deployed(docs):
        docs["compare"]["deployments"] = {"configurations": [{"name": "tp2", "status": "failed", "reason": "x"}]}

    got = rows(deployed)
    assert got["deployment:tp2"].status == "failed" and status(deployed) == "failed"
