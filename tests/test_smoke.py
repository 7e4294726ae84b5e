"""The `smoke` stage on the real vLLM engine (CPU backend here), with a tiny random Llama built in-process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TEST_KV_CACHE_BYTES

from npuport.core.settings import EngineSettings, GenerationSettings
from npuport.engines.deployment import DeploymentsSettings
from npuport.engines.smoke import run_smoke

REPO = Path(__file__).resolve().parents[1]
CORPUS = [
    "Hello, how are you? I am fine, thank you.",
    "Explain the concept of ternary quantization in one sentence.",
    "什么是三元量化? 三元量化把权重变成三个值。",
    "The capital of France is Paris.",
]
PROMPTS = ["Hello, how are you?", "什么是三元量化?", "The capital of France is"]
# eager: this module and test_bench.py test the stage's records on a model of their own, one quick engine start each;
# the compiled (deployed) engine runs in the default pipeline run and tests/test_deployments_engine.py
ENGINE = {"dtype": "bfloat16", "max_model_len": 512, "max_num_seqs": 4, "kv_cache_memory_bytes": TEST_KV_CACHE_BYTES,
          "enforce_eager": True}  # fmt: skip
# the deployment configurations' own engines run in the default pipeline run and test_deployments_engine.py
NO_MATRIX = {"enabled": False}
MAX_TOKENS = 12
TOP_K = 5
EOS = 2


def build_tokenizer(directory: Path) -> None:
    """Byte-level BPE trained on a few sentences (so Chinese round-trips), <s> prepended, </s> as eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 4096}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def build_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Random-weight LlamaForCausalLM (head_dim 32, GQA, LongRoPE, untied head) in bf16 safetensors.

    The head is scaled up so that logits are far apart: greedy choices are then stable across
    engines and dtypes. generation_config.json lists two eos ids: </s> and a token the model
    emits early for the first prompt, so that the stop-at-eos path really runs.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=EOS, initializer_range=0.3,
        rope_scaling={"rope_type": "longrope", "long_factor": [1.0] * 16, "short_factor": [1.0] * 16,
                      "original_max_position_embeddings": 4096},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.float().generate(ids, do_sample=False, max_new_tokens=6, eos_token_id=EOS)
    generated = out[0, ids.shape[1] :].tolist()
    early = [t for i, t in enumerate(generated) if i >= 2 and t != EOS and t not in generated[:i]]
    assert early, f"seed {seed} gives a degenerate greedy continuation {generated}; pick another seed"
    model.to(torch.bfloat16).generation_config.eos_token_id = [EOS, early[0]]
    model.save_pretrained(directory)
    return directory


def generation_settings(**overrides) -> dict:
    return {"prompts": PROMPTS, "temperature": 0.0, "seed": 42, "max_tokens": MAX_TOKENS,
            "top_logprobs": TOP_K, "chat_template": False} | overrides  # fmt: skip


def smoke_settings(engine: dict = ENGINE, **generation) -> dict:
    """run_smoke's typed settings from config sections (missing keys: the schema's defaults)."""
    return {
        "engine": EngineSettings.from_config(engine),
        "generation": GenerationSettings.from_config(generation_settings(**generation)),
        "deployments": DeploymentsSettings.from_config(NO_MATRIX),
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("smoke") / "model")


@pytest.fixture(scope="module")
def smoke(tiny_model) -> dict:
    """The one offline engine start of this module."""
    return run_smoke(tiny_model, **smoke_settings())


def test_smoke_runs_on_the_cpu_platform_and_says_so(smoke):
    assert smoke["status"] == "ok", smoke["reason"]
    assert smoke["platform"]["name"] == "cpu" and smoke["platform"]["is_cpu"]
    assert smoke["platform"]["device"].startswith("vLLM CPU backend")
    assert "npu" not in smoke["platform"]["device"].lower()
    engine = smoke["engine"]
    assert engine["name"] == "vllm" and engine["version"] and engine["distribution"] and engine["torch"]
    # the serve check moved to the bench stage; smoke.json says so (tests/test_bench.py tests the check)
    assert smoke["serve"] == {"status": "not run", "reason": "the serve check runs in the bench stage (bench.json)"}
    assert smoke["engine_shutdown"]["released"], smoke["engine_shutdown"]


def test_smoke_records_every_prompt_with_tokens_and_stop_ids(smoke, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    stop_ids = json.loads((tiny_model / "generation_config.json").read_text())["eos_token_id"]
    assert smoke["settings"]["stop_token_ids"] == stop_ids
    assert [r["prompt"] for r in smoke["prompts"]] == PROMPTS
    for record in smoke["prompts"]:
        assert record["prompt_token_ids"] == tokenizer(record["prompt"])["input_ids"]
        assert record["engine_prompt_token_ids"] == record["prompt_token_ids"]
        assert record["num_tokens"] == len(record["token_ids"]) > 0
        shown = record["token_ids"][:-1] if record["finish_reason"] == "stop" else record["token_ids"]
        # vLLM leaves the stop token out of the text and holds back a tail that is not yet whole UTF-8
        assert tokenizer.decode(shown, skip_special_tokens=True).startswith(record["text"])
        stops = [i for i, t in enumerate(record["token_ids"]) if t in stop_ids]
        if record["finish_reason"] == "stop":
            assert stops == [record["num_tokens"] - 1]
        else:
            assert record["finish_reason"] == "length" and not stops and record["num_tokens"] == MAX_TOKENS
    # the first prompt's second eos id is a token the model emits within its first six tokens
    assert smoke["prompts"][0]["finish_reason"] == "stop"


def test_smoke_logprobs_are_top_k_and_greedy(smoke):
    for record in smoke["prompts"]:
        assert len(record["token_logprobs"]) == len(record["top_logprobs"]) == record["num_tokens"]
        rows = zip(record["token_ids"], record["token_logprobs"], record["top_logprobs"], strict=True)
        for token, chosen, top in rows:
            assert len(top) == TOP_K
            values = [lp for _, lp in top]
            assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
            assert chosen <= 0
            assert top[0][0] == token and top[0][1] == pytest.approx(chosen)


def test_smoke_timings_and_throughput(smoke):
    assert smoke["load_seconds"] > 0
    assert smoke["warmup"]["latency_s"] > 0 and smoke["warmup"]["ttft_s"] > 0
    for record in smoke["prompts"]:
        assert 0 < record["ttft_s"] <= record["latency_s"]
        assert record["tpot_s"] > 0
        assert "metrics" in record["timing_method"]["ttft_s"]
    single, batch = smoke["throughput"]["single"], smoke["throughput"]["batch"]
    assert single["tokens"] == sum(r["num_tokens"] for r in smoke["prompts"])
    assert single["tokens_per_s"] == pytest.approx(single["tokens"] / single["seconds"])
    assert batch["num_prompts"] == len(PROMPTS) and batch["tokens_per_s"] > 0
    assert len(batch["token_ids_equal_single"]) == len(PROMPTS)


def test_smoke_reports_kv_cache_capacity(smoke):
    kv = smoke["kv_cache"]
    assert kv["tokens"] == kv["num_blocks"] * kv["block_size"] > 0
    # vLLM logs the capacity once per process: a test worker that started an engine before has no line for this one
    # (the pipeline's stage starts one: tests/test_workflow.py checks the line there)
    assert kv.get("log_tokens", kv["tokens"]) == kv["tokens"]
    assert kv["gib"] > 0 and kv["gib_source"]


def test_serve_command_matches_engine_settings(smoke, tiny_model):
    command = smoke["vllm_serve_command"]
    assert command.startswith(f"vllm serve {tiny_model}")
    flags = ("--dtype bfloat16", "--max-model-len 512", "--max-num-seqs 4", "--enforce-eager",
             f"--kv-cache-memory-bytes {TEST_KV_CACHE_BYTES}", "--tensor-parallel-size 1", "--seed 42")  # fmt: skip
    for flag in flags:
        assert flag in command


def test_engine_start_failure_is_recorded_with_log_tail(tiny_model):
    doc = run_smoke(tiny_model, **smoke_settings(ENGINE | {"max_model_len": 10**6}))
    assert doc["status"] == "failed"
    assert "did not start" in doc["reason"]
    assert doc["log_tail"] and doc["prompts"] == []


def test_auto_map_is_refused_without_trust_remote_code(tmp_path, tiny_model):
    model = tmp_path / "remote"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        (model / name).symlink_to(tiny_model / name)
    config = json.loads((tiny_model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    doc = run_smoke(model, **smoke_settings())
    assert doc["status"] == "refused"
    assert "trust_remote_code: true" in doc["reason"] and "auto_map" in doc["reason"]
    assert doc["prompts"] == [] and doc["load_seconds"] is None


def test_missing_vllm_gives_not_run(tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["vllm"] = None  # as if vLLM were not installed
        from npuport.core.settings import EngineSettings, GenerationSettings
        from npuport.engines.deployment import DeploymentsSettings
        from npuport.engines.smoke import run_smoke
        doc = run_smoke({str(tiny_model)!r}, engine=EngineSettings.from_config({ENGINE!r}),
                        deployments=DeploymentsSettings.from_config({NO_MATRIX!r}),
                        generation=GenerationSettings.from_config({generation_settings()!r}))
        print("DOC" + json.dumps({{k: doc[k] for k in ("status", "reason", "prompts", "serve")}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.split("DOC", 1)[1])
    assert doc["status"] == "not run"
    assert "vLLM cannot be imported" in doc["reason"]
    assert doc["prompts"] == [] and doc["serve"]["status"] == "not run"


def test_serve_check_that_cannot_start_fails_and_leaves_no_process(smoke, tiny_model, tmp_path):
    """The bench stage's server with an engine setting it refuses (max_model_len above the model's): the check fails
    with the server's log tail, the ladder does not run, no server process is left."""
    from npuport.core.settings import ServeSettings
    from npuport.engines.bench import BenchSettings, run_bench
    from npuport.engines.serve_check import group_alive

    engine = EngineSettings.from_config({**ENGINE, "max_model_len": 10**6})
    serve = ServeSettings.from_config({"startup_timeout_s": 240, "request_timeout_s": 10})
    doc = run_bench(tiny_model, smoke=smoke, env={}, engine=engine, generation=smoke_settings()["generation"],
                    serve=serve, settings=BenchSettings.from_config({"enabled": False}), result_dir=tmp_path / "bench",
                    server_log=tmp_path / "serve.log")  # fmt: skip
    result = doc["serve"]
    assert result["status"] == "failed" and doc["status"] == "failed"
    assert "exited" in result["reason"]
    assert any("max_model_len" in line for line in result["log_tail"])
    assert result["shutdown"]["processes_left"] is False and not group_alive(result["shutdown"]["pgid"])


def test_an_orphaned_engine_process_is_found_killed_and_reported(monkeypatch):
    """A worker whose parent died is reparented away from this process: shut_down still finds it by the pids the
    engine had started (pid and creation time), kills it and reports it as left."""
    import psutil

    from npuport.engines import vllm_runner
    from npuport.engines.vllm_runner import engine_children, host_available_gib, shut_down, started_processes

    monkeypatch.setattr(vllm_runner, "CHILD_EXIT_TIMEOUT_S", 1)  # how long shutdown waits for it to exit by itself

    # a child that starts a grandchild and exits at once: the grandchild is an orphan, as a worker whose engine
    # core died would be
    spawner = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; "
         "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True, "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
         "print(p.pid)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    orphan = int(spawner.stdout)
    try:
        assert orphan not in engine_children()  # no child of ours: the children check alone would miss it
        report = shut_down(object(), engine_children(), host_available_gib(), started=started_processes({orphan}))
        assert report["engine_processes_left"] == [orphan] and report["released"] is False
        deadline = time.monotonic() + 60  # a hang guard: SIGKILL ends it as soon as the kernel gets to it
        while psutil.pid_exists(orphan) and psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the orphan was not killed"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
