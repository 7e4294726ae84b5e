"""The `baseline` stage: Hugging Face transformers (``HfRunner``) as the reference, same prompts and
settings as `smoke`."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from npuport.core.errors import NpuportError
from npuport.core.settings import BaselineSettings, GenerationSettings
from npuport.engines.hf_runner import HfRunner
from npuport.engines.records import (
    LOG_TAIL_LINES,
    check_prompts_fit,
    document,
    encode_prompts,
    load_tokenizer,
    remote_code_refusal,
    run_prompts,
    stop_token_ids,
)

log = logging.getLogger(__name__)

TIMING_METHOD = {
    "latency_s": "wall clock (perf_counter) from the prefill call to the last token of a greedy loop with KV cache",
    "ttft_s": "wall clock from the prefill call until the first token is chosen",
    "tpot_s": "(time of last token - time of first token) / (num_tokens - 1)",
}
WARMUP_NOTE = "first request after load, carries one-time warm-up; not in throughput"


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


def run_baseline(
    model_dir: str | Path,
    *,
    baseline: BaselineSettings,
    generation: GenerationSettings,
    max_model_len: int,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Generate every prompt with transformers (greedy) and return the baseline.json document; prompt and output
    together stay within ``max_model_len`` (the engine's), as they do on the engine."""
    import torch

    model_dir = Path(model_dir).resolve()
    base = {
        "settings": {"baseline": baseline.as_dict(), "generation": generation.as_dict(),
                     "trust_remote_code": trust_remote_code,
                     "greedy": "argmax of the logits at every step (do_sample=False)"},
        "model_dir": str(model_dir),
        "timing_method": TIMING_METHOD,
    }  # fmt: skip
    refusal = remote_code_refusal(model_dir, trust_remote_code)
    if refusal:
        log.warning(refusal)
        return document("baseline", "refused", refusal, **base)
    device, why = resolve_device(baseline.device)
    if why:
        log.warning(why)
        return document("baseline", "not run", why, **base)
    dtype = resolve_dtype(baseline.dtype)
    torch.manual_seed(generation.seed)

    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    prompts = encode_prompts(tokenizer, generation)
    check_prompts_fit(prompts, max_model_len)
    stop = stop_token_ids(model_dir, tokenizer)
    base["settings"].update(stop_token_ids=stop.ids, stop_token_ids_source=stop.source)
    runner = HfRunner(model_dir, device=device, dtype=dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    try:
        with runner:
            run = run_prompts(runner, prompts, generation=generation, stop_ids=stop.ids, warmup_note=WARMUP_NOTE,
                              max_model_len=max_model_len)  # fmt: skip
            engine, platform = runner.engine, runner.platform
    except Exception as exc:  # noqa: BLE001 - a reference that cannot run is the stage's finding
        reason = f"transformers failed: {type(exc).__name__}: {exc}"
        log.error(reason)
        tail = traceback.format_exc().splitlines()[-LOG_TAIL_LINES:]
        return document("baseline", "failed", reason, log_tail=tail, **base)
    log.info("throughput: single %.1f tok/s", run.single["tokens_per_s"])
    return document(
        "baseline",
        "ok",
        None,
        engine=engine,
        platform=platform,
        load_seconds=runner.load_s,
        warmup=run.warmup,
        prompts=[r.as_dict() for r in run.records],
        throughput={"single": run.single, "batch": None,
                    "batch_note": "not measured: the baseline runs one prompt at a time"},
        kv_cache={"note": "transformers DynamicCache grows with each request; it has no fixed capacity"},
        **base,
    )  # fmt: skip
