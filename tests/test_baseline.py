"""The `baseline` stage: transformers greedy decoding, checked against generate() and a plain forward."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_smoke import PROMPTS, REPO, TOP_K, build_tiny_llama, generation_settings

from npuport.core.settings import BaselineSettings, GenerationSettings
from npuport.engines.baseline import run_baseline

BASELINE = {"device": "cpu", "dtype": "float32"}


def baseline_settings(baseline: dict = BASELINE, **generation) -> dict:
    """run_baseline's typed settings from config sections."""
    return {
        "baseline": BaselineSettings.from_config(baseline),
        "generation": GenerationSettings.from_config(generation_settings(**generation)),
        "max_model_len": 2048,
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("baseline") / "model")


@pytest.fixture(scope="module")
def baseline(tiny_model) -> dict:
    return run_baseline(tiny_model, **baseline_settings())


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


def stop_ids(model_dir: Path) -> list[int]:
    return json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]


def test_baseline_document(baseline):
    assert baseline["status"] == "ok", baseline["reason"]
    assert baseline["stage"] == "baseline"
    assert baseline["engine"]["name"] == "transformers" and baseline["engine"]["dtype"] == "float32"
    assert baseline["engine"]["threads"] >= 1 and baseline["engine"]["torch"] == torch.__version__
    assert baseline["platform"]["name"] == "cpu"
    assert [r["prompt"] for r in baseline["prompts"]] == PROMPTS
    assert baseline["load_seconds"] > 0 and baseline["warmup"]["latency_s"] > 0


def test_greedy_tokens_equal_generate(baseline, hf_model, tiny_model):
    eos = stop_ids(tiny_model)
    for record in baseline["prompts"]:
        ids = torch.tensor([record["prompt_token_ids"]])
        with torch.no_grad():
            out = hf_model.generate(ids, do_sample=False, max_new_tokens=generation_settings()["max_tokens"],
                                    eos_token_id=eos, pad_token_id=eos[0])  # fmt: skip
        assert record["token_ids"] == out[0, ids.shape[1] :].tolist()
        ended = record["token_ids"][-1] in eos
        assert record["finish_reason"] == ("stop" if ended else "length")
    assert baseline["prompts"][0]["finish_reason"] == "stop"  # the fixture's second eos id is reached


def test_logprobs_equal_a_full_forward(baseline, hf_model):
    for record in baseline["prompts"]:
        sequence = record["prompt_token_ids"] + record["token_ids"]
        with torch.no_grad():
            logits = hf_model(torch.tensor([sequence])).logits[0].float()
        start = len(record["prompt_token_ids"]) - 1
        reference = torch.log_softmax(logits[start : start + record["num_tokens"]], dim=-1)
        for pos, (token, chosen, top) in enumerate(
            zip(record["token_ids"], record["token_logprobs"], record["top_logprobs"], strict=True)
        ):
            assert chosen == pytest.approx(reference[pos, token].item(), rel=1e-4, abs=1e-4)
            assert len(top) == TOP_K
            expected = torch.topk(reference[pos], TOP_K)
            assert [t for t, _ in top] == expected.indices.tolist()
            assert [v for _, v in top] == pytest.approx(expected.values.tolist(), rel=1e-4, abs=1e-4)
            assert top[0][0] == token  # greedy


def test_baseline_timings(baseline):
    for record in baseline["prompts"]:
        assert 0 < record["ttft_s"] <= record["latency_s"]
        assert record["num_tokens"] == 1 or record["tpot_s"] > 0
    single = baseline["throughput"]["single"]
    assert single["tokens"] == sum(r["num_tokens"] for r in baseline["prompts"])
    assert single["seconds"] == pytest.approx(sum(r["latency_s"] for r in baseline["prompts"]))
    assert baseline["timing_method"]["ttft_s"]


def test_chat_template_prompt_has_one_bos(tiny_model, tmp_path):
    model = tmp_path / "chat"
    shutil.copytree(tiny_model, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|a|>"
    config_path.write_text(json.dumps(config))
    doc = run_baseline(model, **baseline_settings(prompts=[PROMPTS[2]], max_tokens=2, chat_template=True))
    assert doc["status"] == "ok", doc["reason"]
    ids = doc["prompts"][0]["prompt_token_ids"]
    assert ids[0] == 1 and 1 not in ids[1:]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(model)).decode(ids) == f"<s><|user|>{PROMPTS[2]}<|a|>"


def test_auto_map_is_refused(tiny_model, tmp_path):
    model = tmp_path / "remote"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    doc = run_baseline(model, **baseline_settings())
    assert doc["status"] == "refused" and "trust_remote_code: true" in doc["reason"]
    assert doc["prompts"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_cuda_device_without_gpu_is_not_run(tiny_model):
    doc = run_baseline(tiny_model, **baseline_settings({"device": "cuda", "dtype": "float32"}))
    assert doc["status"] == "not run" and "no CUDA device" in doc["reason"]


SNAKEFILE = """
rule baseline:
    input: model="{model}"
    output: "out/baseline.json"
    log: "logs/baseline.log"
    params:
        baseline={baseline!r},
        engine={{"max_model_len": 2048}},
        generation={generation!r},
        trust_remote_code=False,
    script: "{script}"
"""


@pytest.mark.e2e
def test_baseline_script_runs_under_snakemake(tiny_model, tmp_path, baseline):
    snakefile = SNAKEFILE.format(model=tiny_model, baseline=BASELINE, generation=generation_settings(),
                                 script=REPO / "workflow/scripts/baseline.py")  # fmt: skip
    (tmp_path / "Snakefile").write_text(snakefile)
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "out/baseline.json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=os.environ.copy())  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "out/baseline.json").read_text())
    assert doc["status"] == "ok"
    assert [r["token_ids"] for r in doc["prompts"]] == [r["token_ids"] for r in baseline["prompts"]]
    assert "throughput" in (tmp_path / "logs/baseline.log").read_text()


def test_stop_ids_are_generation_config_eos_plus_tokenizer_eos(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from npuport.engines.records import stop_token_ids

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    stop = stop_token_ids(model, AutoTokenizer.from_pretrained(str(model)))
    assert stop.ids == [7, 9, 2]
    assert stop.source == "generation_config.json: eos_token_id + tokenizer eos_token_id"


def test_tokenizer_auto_map_is_refused_too(tiny_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tok.MyTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    doc = run_baseline(model, **baseline_settings())
    assert doc["status"] == "refused" and "tokenizer_config.json" in doc["reason"]


def test_both_runners_offer_the_same_interface():
    import inspect

    from npuport.engines.hf_runner import HfRunner
    from npuport.engines.vllm_runner import VllmRunner

    for name in ("__enter__", "__exit__", "generate_greedy", "platform", "engine"):
        assert hasattr(HfRunner, name) and hasattr(VllmRunner, name), name
    assert inspect.signature(HfRunner.generate_greedy) == inspect.signature(VllmRunner.generate_greedy)


def test_hf_runner_generates_what_the_baseline_records(baseline, tiny_model):
    from transformers import AutoTokenizer

    from npuport.engines.hf_runner import HfRunner

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    runner = HfRunner(tiny_model, device=torch.device("cpu"), dtype=torch.float32, tokenizer=tokenizer)
    with runner:
        generations = runner.generate_greedy(
            [r["prompt_token_ids"] for r in baseline["prompts"]],
            generation_settings()["max_tokens"],
            TOP_K,
            baseline["settings"]["stop_token_ids"],
        )
    assert runner.load_s > 0
    assert [g.token_ids for g in generations] == [r["token_ids"] for r in baseline["prompts"]]
    assert [g.text for g in generations] == [r["text"] for r in baseline["prompts"]]
