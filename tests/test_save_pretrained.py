"""Checkpoints exactly as transformers' save_pretrained writes them (tests/pretrained_factory.py), read by every
stage: each file on its own first, then the whole workflow (`snakemake --cores 2 report`) on the
`.test/save-pretrained` scenario, one checkpoint written by the installed transformers and one by 4.46.3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, copy_workflow, run_snakemake, scenario_config
from pretrained_factory import GITATTRIBUTES, save_pretrained_checkpoint

from npuport.compare.floor import engine_dtype
from npuport.core import untrusted_json
from npuport.engines.records import encode_prompt, load_tokenizer, remote_code_refusal, stop_token_ids
from npuport.weights.checkpoint import Checkpoint
from npuport.weights.introspect import introspect_checkpoint
from npuport.weights.tokenizer_check import VERY_LARGE_INTEGER, check_tokenizer

SCENARIO = REPO / ".test" / "save-pretrained"
# model name in the scenario -> its checkpoint directory under .test/save-pretrained/, and whether it is tied
CHECKPOINTS = {"saved-installed": ("installed", True), "saved-transformers-4.46": ("transformers-4.46", False)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A checkpoint written now by the installed transformers (the committed `installed/` may be older)."""
    directory = save_pretrained_checkpoint(tmp_path_factory.mktemp("saved") / "installed")
    (directory / ".gitattributes").unlink()
    return directory


@pytest.fixture(params=["installed", "transformers-4.46"])
def checkpoint(request, installed) -> Path:
    return installed if request.param == "installed" else SCENARIO / request.param


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_checkpoints_carry_what_save_pretrained_writes(installed):
    """What the scenario is about, read from the files the libraries wrote (not from the factory's arguments)."""
    legacy = SCENARIO / "transformers-4.46"
    for directory in (installed, legacy):
        assert _json(directory / "tokenizer_config.json")["model_max_length"] == VERY_LARGE_INTEGER  # 31 digits
        index = _json(directory / "model.safetensors.index.json")
        assert len(set(index["weight_map"].values())) > 1  # sharded
        assert _json(directory / "generation_config.json")["eos_token_id"] == [2, 4]
        assert (directory / "README.md").is_file()
    assert "lm_head.weight" not in _json(installed / "model.safetensors.index.json")["weight_map"]  # tied
    assert "lm_head.weight" in _json(legacy / "model.safetensors.index.json")["weight_map"]
    config = _json(legacy / "config.json")
    assert config["transformers_version"] == "4.46.3" and config["torch_dtype"] == "bfloat16" and "dtype" not in config
    assert config["rope_scaling"] is None
    tokenizer_config = _json(legacy / "tokenizer_config.json")
    assert "added_tokens_decoder" in tokenizer_config and "chat_template" in tokenizer_config
    assert (legacy / "special_tokens_map.json").is_file()
    assert "dtype" in _json(installed / "config.json")
    assert (installed / "chat_template.jinja").is_file()


def test_every_json_file_is_read_within_the_limits(checkpoint):
    for path in sorted(checkpoint.glob("*.json")):
        assert isinstance(untrusted_json.read(path), dict), path


def test_each_file_is_read_for_what_it_says(checkpoint):
    config = _json(checkpoint / "config.json")
    assert remote_code_refusal(checkpoint, trust_remote_code=False) is None
    assert engine_dtype("auto", config) == "bfloat16"  # dtype or torch_dtype
    tokenizer = load_tokenizer(checkpoint)
    stops = stop_token_ids(checkpoint, tokenizer)
    assert stops.ids == [2, 4] and stops.source == "generation_config.json: eos_token_id"
    checked = check_tokenizer(checkpoint, config["vocab_size"])
    assert checked["model_max_length"] is None  # VERY_LARGE_INTEGER: no limit
    chat = encode_prompt(tokenizer, "什么是三元量化?", chat_template=True)
    assert chat[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    assert encode_prompt(tokenizer, "Hello", chat_template=False)[0] == tokenizer.bos_token_id


def test_introspection_reads_the_sharded_and_tied_checkpoints(checkpoint):
    tied = checkpoint.name == "installed"
    with Checkpoint.open(checkpoint) as opened:
        assert opened.format == "safetensors" and len(opened.files) == 3
    found = introspect_checkpoint(checkpoint)
    assert found["mismatches"] == [] and found["declared"]["dtype"] == "bfloat16"
    assert found["derived"]["tie_word_embeddings"] is tied
    assert found["derived"]["num_hidden_layers"] == 2 and found["derived"]["num_key_value_heads"] == 1
    assert found["derived"]["qat"]["found"] is False


@pytest.mark.e2e
def test_save_pretrained_checkpoints_run_through_every_stage(tmp_path, installed):
    """`snakemake --cores 2 report --configfile .test/save-pretrained/config.yaml` in a workflow copy, with
    `installed/` written again by the installed transformers and each checkpoint's .gitattributes in place."""
    workdir = copy_workflow(tmp_path / "wf")
    copy = workdir / ".test" / "save-pretrained"
    shutil.rmtree(copy / "installed")
    shutil.copytree(installed, copy / "installed")
    for directory, _ in CHECKPOINTS.values():
        (copy / directory / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    config = scenario_config("save-pretrained", workdir).relative_to(workdir)
    run_snakemake(workdir, "report", "--configfile", str(config))
    for model, (_, tied) in CHECKPOINTS.items():
        results = workdir / "results" / model
        assert _json(results / "smoke.json")["status"] == "ok", model
        assert _json(results / "baseline.json")["status"] == "ok", model
        assert _json(results / "compare.json")["status"] == "passed", model
        repair = _json(results / "repair.json")
        assert repair["repaired"] == [] and repair["tokenizer"]["model_max_length"] is None, model
        fuse = _json(results / "model" / "fuse.json")
        assert fuse["fused"] is False and "no sign of ternary QAT: not fused" in fuse["decision"], model
        assert {"README.md", ".gitattributes", "tokenizer_config.json"} <= set(fuse["side_files"]), model
        assert _json(results / "introspect.json")["derived"]["tie_word_embeddings"] is tied, model
        assert _json(results / "bench.json")["status"] == "not run", model  # the scenario turns the server off
        layers = _json(results / "layers.json")
        assert layers["status"] == "passed", (model, layers["first_divergent"])  # a correct engine, a plain model
        assert _json(results / "compare.json")["deployments"]["configurations"] == [], model  # off in the scenario
        report = _json(results / "report.json")
        checks = {c["check"]: c["status"] for c in report["checks"]}
        assert checks["fusion"] == "not measured" and checks["engine"] == "passed", (model, checks)
        text = (results / "report.md").read_text(encoding="utf-8")
        fusion = text.split("### 3.3", 1)[1].split("### 3.4", 1)[0]
        assert "❌" not in fusion and "not applicable: not fused" in fusion, model  # a plain model reads as plain
        assert "not ternary: plain weights" in text.split("### 1.3", 1)[1].split("## 2.", 1)[0], model
        assert str(workdir) not in text.split("## 4.", 1)[1].split("## 6.", 1)[0], model  # the same on any host
        assert f"vllm serve results/{model}/model" in text, model
    index = (workdir / "results" / "report.md").read_text(encoding="utf-8")
    assert all(model in index for model in CHECKPOINTS)
