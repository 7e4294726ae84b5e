"""The `baseline` stage: Hugging Face transformers as the reference, same prompts and settings as `smoke`.

Generation is a manual greedy loop with a KV cache: it gives the exact time of every token and the
float32 log-softmax of the very logits each token was chosen from.
"""

from __future__ import annotations

import os
import platform as host_platform
import time
import traceback
from pathlib import Path
from typing import Any

from npuport.core.errors import NpuportError
from npuport.engines.records import (
    BASELINE_DEFAULTS,
    GENERATION_DEFAULTS,
    LOG_TAIL_LINES,
    document,
    encode_prompt,
    finite,
    load_tokenizer,
    prompt_record,
    remote_code_refusal,
    settings,
    stop_token_ids,
    throughput,
    tpot,
)

TIMING_METHOD = {
    "latency_s": "wall clock (perf_counter) from the prefill call to the last token of a greedy loop with KV cache",
    "ttft_s": "wall clock from the prefill call until the first token is chosen",
    "tpot_s": "(time of last token - time of first token) / (num_tokens - 1)",
}


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy(model, tokenizer, prompt_ids: list[int], max_tokens: int, stop_ids: set[int], k: int, device) -> dict:
    """Greedy decoding one token at a time; returns tokens, logprobs, top-k and per-token times.

    Like vLLM, the stop token is the last of ``token_ids`` but is left out of ``text``.
    """
    import torch

    tokens, chosen, tops, times = [], [], [], []
    inputs = torch.tensor([prompt_ids], device=device)
    past = None
    finish = "length"
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(max_tokens):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            token = int(torch.argmax(logits))  # same rule and tie-break as generate(do_sample=False)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(logprobs, k)
            synchronize(device)
            times.append(time.perf_counter())
            tokens.append(token)
            chosen.append(finite(logprobs[token]))
            tops.append([[int(t), finite(v)] for t, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)])
            if token in stop_ids:
                finish = "stop"
                break
            inputs = torch.tensor([[token]], device=device)
    return {
        "token_ids": tokens,
        "token_logprobs": chosen,
        "top_logprobs": tops,
        "finish_reason": finish,
        "stop_reason": tokens[-1] if finish == "stop" else None,
        "text": tokenizer.decode(tokens[:-1] if finish == "stop" else tokens, skip_special_tokens=True),
        "latency_s": times[-1] - start,
        "ttft_s": times[0] - start,
        "tpot_s": tpot(times[0], times[-1], len(tokens)),
    }


def resolve_device(name: str):
    """torch.device for ``name``, or a reason it cannot be used on this host."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return None, f"baseline.device is {name!r} but torch {torch.__version__} sees no CUDA device on this host"
    if device.type not in ("cpu", "cuda"):
        return None, f"baseline.device {name!r} is not supported (cpu or cuda)"
    return device, None


def resolve_dtype(name: str):
    import torch

    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise NpuportError(None, f"baseline settings: dtype {name!r} is not a torch floating point dtype")
    return dtype


def platform_info(device) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        return {"name": "cuda", "device": f"transformers on {torch.cuda.get_device_name(device)}"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "name": "cpu",
        "device": f"transformers on CPU ({host_platform.machine()}, {cores} cores, {torch.get_num_threads()} threads)",
    }


def engine_info(model, device, dtype) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "name": "transformers",
        "version": transformers.__version__,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "python": host_platform.python_version(),
    }


def run_baseline(
    model_dir: str | Path,
    baseline: dict[str, Any],
    generation: dict[str, Any],
    trust_remote_code: bool = False,
    log=print,
) -> dict[str, Any]:
    """Generate every prompt with transformers (greedy) and return the baseline.json document."""
    import torch

    model_dir = Path(model_dir).resolve()
    baseline = settings(BASELINE_DEFAULTS, baseline, "baseline")
    generation = settings(GENERATION_DEFAULTS, generation, "generation")
    base = {
        "settings": {"baseline": baseline, "generation": generation, "trust_remote_code": trust_remote_code,
                     "greedy": "argmax of the logits at every step (do_sample=False)"},
        "model_dir": str(model_dir),
        "timing_method": TIMING_METHOD,
    }  # fmt: skip
    refusal = remote_code_refusal(model_dir, trust_remote_code)
    if refusal:
        log(refusal)
        return document("baseline", "refused", refusal, **base)
    device, why = resolve_device(baseline["device"])
    if why:
        log(why)
        return document("baseline", "not run", why, **base)
    dtype = resolve_dtype(baseline["dtype"])
    torch.manual_seed(generation["seed"])

    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    prompt_ids = [encode_prompt(tokenizer, p, generation["chat_template"]) for p in generation["prompts"]]
    stop = stop_token_ids(model_dir, tokenizer)
    base["settings"].update(stop_token_ids=stop["ids"], stop_token_ids_source=stop["source"])
    try:
        fields = generate_all(
            model_dir, device, dtype, tokenizer, generation, stop["ids"], prompt_ids, trust_remote_code, log
        )
    except Exception as exc:  # noqa: BLE001 - a reference that cannot run is the stage's finding
        reason = f"transformers failed: {type(exc).__name__}: {exc}"
        log(reason)
        tail = traceback.format_exc().splitlines()[-LOG_TAIL_LINES:]
        return document("baseline", "failed", reason, log_tail=tail, **base)
    return document("baseline", "ok", None, **fields, **base)


def generate_all(model_dir, device, dtype, tokenizer, generation, stop_ids, prompt_ids, trust_remote_code, log):
    """Load the model, one warm-up request, then every prompt alone (timed)."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code)
    model = model.to(device).eval()
    synchronize(device)
    load_seconds = time.perf_counter() - start
    engine = engine_info(model, device, dtype)
    log(f"transformers {engine['version']}: model loaded in {load_seconds:.2f} s")

    def run(ids):
        return greedy(
            model, tokenizer, ids, generation["max_tokens"], set(stop_ids), generation["top_logprobs"], device
        )

    prompts = list(generation["prompts"])
    first = run(prompt_ids[0])
    warmup = {"prompt": prompts[0], "num_tokens": len(first["token_ids"]),
              **{key: first[key] for key in ("latency_s", "ttft_s", "tpot_s")},
              "note": "first request after load, carries one-time warm-up; not in throughput"}  # fmt: skip
    records = []
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        result = run(ids)
        records.append(prompt_record(prompt, ids, **result))
        log(f"prompt {len(records)}: {records[-1]['num_tokens']} tokens in {result['latency_s']:.2f} s")
    single = throughput(sum(r["num_tokens"] for r in records), sum(r["latency_s"] for r in records))
    log(f"throughput: single {single['tokens_per_s']:.1f} tok/s")
    return {
        "engine": engine,
        "platform": platform_info(device),
        "load_seconds": load_seconds,
        "warmup": warmup,
        "prompts": records,
        "throughput": {"single": single, "batch": None,
                       "batch_note": "not measured: the baseline runs one prompt at a time"},
        "kv_cache": {"note": "transformers DynamicCache grows with each request; it has no fixed capacity"},
    }  # fmt: skip
