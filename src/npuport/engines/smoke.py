"""The `smoke` stage: the real vLLM engine (``VllmRunner``) on whatever platform vLLM picks, greedy
generation, timings, the engine's own logits and hidden states captured (for `compare` and `layers`), KV cache
capacity. (The `vllm serve` check runs in the `bench` stage, on the server its load ladder uses: smoke.json's
"serve" says so.)

smoke.json has every key of ``records.document`` whatever happened: an engine that is missing or fails
is recorded as status "not run" / "failed", never raised.
"""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npuport.compare.layer_plan import LAYER_FILE, LayerSequence, LayersSettings, layer_sequences
from npuport.core.atomic import atomic_dir, read_json
from npuport.core.settings import EngineSettings, EvaluationSettings, GenerationSettings
from npuport.engines.evaluation import plan_segments, rope_switch, segment_length
from npuport.engines.records import (
    Prompt,
    PromptRecord,
    PromptRun,
    captured_output,
    check_prompts_fit,
    document,
    encode_prompts,
    load_tokenizer,
    prompt_format,
    remote_code_refusal,
    run_prompts,
    stop_token_ids,
    tail_lines,
    throughput,
)
from npuport.engines.serve_check import SERVE_MOVED, vllm_serve_command
from npuport.engines.vllm_runner import VllmRunner

log = logging.getLogger(__name__)

WARMUP_NOTE = "first request after engine start, carries one-time warm-up; not in throughput"
LAYER_CAPTURE_METHOD = (
    "forward hooks registered through LLM.apply_model in the engine's workers, one teacher-forced request per "
    "sequence (prefix cache reset): outputs of model.embed_tokens, each model.layers.N.self_attn (o_proj) and "
    ".mlp, each decoder layer (its hidden + residual: the residual stream after it), model.norm, and the model's "
    "compute_logits on the norm's output, at every position, in the engine's dtype"
)
NOT_EAGER = (
    "engine.enforce_eager is false: forward hooks do not fire inside captured graphs, and the default run starts "
    "no second engine; set engine.enforce_eager: true for the layer comparison"
)


@dataclass(frozen=True)
class OfflineRun:
    """What happened while the offline engine lived: status, the document fields it measured, its records."""

    status: str
    reason: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    records: list[PromptRecord] = field(default_factory=list)
    shutdown: dict[str, Any] | None = None


def run_smoke(
    model_dir: str | Path,
    *,
    engine: EngineSettings,
    generation: GenerationSettings,
    trust_remote_code: bool = False,
    evaluation: EvaluationSettings | None = None,
    evaluation_text: str | None = None,
    capture_dir: str | Path | None = None,
    layers: LayersSettings | None = None,
) -> dict[str, Any]:
    """Run the engine under test on ``model_dir`` and return the smoke.json document. With ``evaluation_text``
    and ``capture_dir``, the engine's logits at every position of the text's segments are captured there
    (npuport.engines.evaluation), for compare's full-distribution statistics; with ``capture_dir``, also its
    hidden states at every layer capture point (``layers``, None: the schema's defaults), for the `layers` stage."""
    model_dir = Path(model_dir).resolve()
    base = {
        "settings": {"engine": engine.as_dict(), "generation": generation.as_dict(),
                     "trust_remote_code": trust_remote_code, "prompt_format": prompt_format(generation)},
        "model_dir": str(model_dir),
        "vllm_serve_command": vllm_serve_command(model_dir, engine, trust_remote_code),
        "serve": dict(SERVE_MOVED),
    }  # fmt: skip
    refusal = remote_code_refusal(model_dir, trust_remote_code)
    if refusal:
        log.warning(refusal)
        return document("smoke", "refused", refusal, **base)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    prompts = encode_prompts(tokenizer, generation)
    check_prompts_fit(prompts, engine.max_model_len)
    stop = stop_token_ids(model_dir, tokenizer)
    base["settings"].update(stop_token_ids=stop.ids, stop_token_ids_source=stop.source)
    plan = evaluation_plan(model_dir, tokenizer, engine=engine, evaluation=evaluation, text=evaluation_text)

    with captured_output() as log_file:
        run = offline_run(model_dir, prompts, log_file, engine=engine, generation=generation, stop_ids=stop.ids,
                          trust_remote_code=trust_remote_code, evaluation=plan, capture_dir=capture_dir,
                          layers=layers or LayersSettings.from_config({}))  # fmt: skip
        log_tail = tail_lines(log_file)
    if run.reason:
        log.warning("smoke: %s: %s", run.status, run.reason)
    doc = document("smoke", run.status, run.reason, log_tail=log_tail, **base, **run.fields)
    if run.records:
        doc["timing_method"] = run.records[0].generation.timing.method
    sys.stdout.flush()
    return doc


def offline_run(
    model_dir: Path,
    prompts: Sequence[Prompt],
    log_file: Path,
    *,
    engine: EngineSettings,
    generation: GenerationSettings,
    stop_ids: list[int],
    trust_remote_code: bool,
    evaluation: dict[str, Any] | None = None,
    capture_dir: str | Path | None = None,
    layers: LayersSettings | None = None,
) -> OfflineRun:
    """Start the offline engine, measure everything, shut it down. ``log_file`` holds what the engine
    printed so far (its KV cache lines)."""
    try:
        runner = VllmRunner(model_dir, engine=engine, temperature=generation.temperature, seed=generation.seed,
                            trust_remote_code=trust_remote_code)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a broken install or plugin is reported, not raised
        return OfflineRun("not run", f"vLLM cannot be imported: {type(exc).__name__}: {exc}")
    fields: dict[str, Any] = {"engine": runner.versions}
    status, reason, records = "ok", None, []
    try:
        with runner:
            fields["platform"], fields["engine"] = runner.platform, runner.engine
            measured, batch = measure(runner, prompts, generation=generation, stop_ids=stop_ids)
            records = measured.records
            fields.update(warmup=measured.warmup, prompts=[r.as_dict() for r in records],
                          throughput={"single": measured.single, "batch": batch})  # fmt: skip
            fields.update(
                capture_engine(runner, records, evaluation=evaluation, layers=layers, capture_dir=capture_dir)
            )
            fields["kv_cache"] = runner.kv_cache(log_file.read_text(encoding="utf-8", errors="replace"))
    except Exception as exc:  # an engine that does not start or fails to generate is the stage's finding
        log.error("vLLM failed: %s: %s", type(exc).__name__, exc)
        # to the captured output itself: the log tail must hold the traceback wherever logging is routed
        traceback.print_exc(file=sys.stderr)
        what = "generation failed" if runner.started else "vLLM engine did not start"
        status, reason = "failed", f"{what}: {type(exc).__name__}: {exc}"
    if runner.started:
        fields["load_seconds"] = runner.load_s
        fields["engine_shutdown"] = runner.shutdown
    return OfflineRun(status, reason, fields, records, runner.shutdown)


def evaluation_plan(
    model_dir: Path, tokenizer, *, engine: EngineSettings, evaluation: EvaluationSettings | None, text: str | None
) -> dict[str, Any] | None:
    """The evaluation text's segments for this model (None without a text): bos-led, crossing the RoPE switch."""
    if evaluation is None or not text:
        return None
    switch = rope_switch(read_json(model_dir / "config.json"), engine.max_model_len)
    length = segment_length(evaluation.segment_tokens, engine.max_model_len, switch)
    token_ids = tokenizer(text)["input_ids"]
    segments = plan_segments(token_ids, length=length, bos=tokenizer.bos_token_id, max_tokens=evaluation.max_tokens)
    return {"text_tokens": len(token_ids), "segment_length": length, "rope_switch": switch.as_dict(),
            "segments": segments}  # fmt: skip


NO_CAPTURE_DIR = "no capture directory given"


def evaluation_logits(runner: VllmRunner, plan: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The engine's logits on every evaluation segment of ``plan``, written to ``directory``."""
    captured = runner.capture(plan["segments"], directory)
    log.info("captured the engine's logits on %d evaluation segments", len(plan["segments"]))
    return plan | {"capture": captured}


def capture_engine(
    runner: VllmRunner,
    records: Sequence[PromptRecord],
    *,
    evaluation: dict[str, Any] | None,
    layers: LayersSettings | None,
    capture_dir: str | Path | None,
) -> dict[str, Any]:
    """smoke.json's "evaluation" and "layers" fields: the engine's logits on the evaluation segments, and its hidden
    states at every layer capture point on the prompts (with the engine's outputs) and on the first
    ``layers.eval_tokens`` tokens of the evaluation text; both written to ``capture_dir`` and published together."""
    fields: dict[str, Any] = {}
    if capture_dir is None:
        if evaluation is not None:
            fields["evaluation"] = evaluation | {"capture": None, "reason": NO_CAPTURE_DIR}
        if layers is not None:
            fields["layers"] = {"status": "not run", "mode": None, "reason": NO_CAPTURE_DIR}
        return fields
    with atomic_dir(capture_dir) as staging:
        if evaluation is not None:
            fields["evaluation"] = evaluation_logits(runner, evaluation, staging)
        if layers is not None:
            segments = (evaluation or {}).get("segments")
            sequences = layer_sequences([r.as_dict() for r in records], segments, layers.eval_tokens)
            fields["layers"] = capture_layers(runner, sequences, staging)
    return fields


def capture_layers(runner: VllmRunner, sequences: Sequence[LayerSequence], directory: Path) -> dict[str, Any]:
    """The engine's hidden states after the embedding, every decoder layer and its attention and MLP, the final norm,
    and its logits (npuport.engines.capture, points "all"), teacher-forced on each of ``sequences``, as
    ``directory/layers-NNN.safetensors``; or why not. Only an eager engine is hooked: hooks do not fire inside
    captured graphs. A failed capture is recorded, not raised: the generation results stand without it."""
    record = {"sequences": [s.as_dict() for s in sequences]}
    if not runner.settings.enforce_eager:
        return {"status": "not run", "mode": "compiled", "reason": NOT_EAGER} | record
    if not sequences:
        return {"status": "not run", "mode": "eager", "reason": "no sequence to capture"} | record
    scratch = directory / ".layers"
    try:
        captured = runner.capture([s.token_ids for s in sequences], scratch, points="all")
    except Exception as exc:  # noqa: BLE001 - the stage's finding, beside the results that stand
        log.exception("layer capture failed")
        shutil.rmtree(scratch, ignore_errors=True)
        return {"status": "failed", "mode": "eager", "reason": f"{type(exc).__name__}: {exc}"} | record
    files = []
    for index, name in enumerate(captured["files"]):
        (scratch / name).rename(directory / LAYER_FILE.format(index=index))
        files.append(LAYER_FILE.format(index=index))
    scratch.rmdir()
    log.info("captured the engine at %d points on %d sequences", len(captured["points"]), len(sequences))
    mode = captured["mode"].split(" ")[0]
    capture = captured | {"files": files, "method": LAYER_CAPTURE_METHOD}
    return {"status": "captured", "mode": mode, "reason": None} | record | {"capture": capture}


def measure(
    runner: VllmRunner, prompts: Sequence[Prompt], *, generation: GenerationSettings, stop_ids: list[int]
) -> tuple[PromptRun, dict[str, Any]]:
    """Warm-up request, each prompt alone (timed), then all prompts as one batch."""
    run = run_prompts(runner, prompts, generation=generation, stop_ids=stop_ids, warmup_note=WARMUP_NOTE,
                      max_model_len=runner.settings.max_model_len)  # fmt: skip
    token_ids, seconds = runner.generate_batch(
        [p.token_ids for p in prompts], generation.max_tokens, generation.top_logprobs, stop_ids
    )
    batch = throughput(sum(len(ids) for ids in token_ids), seconds)
    batch["num_prompts"] = len(token_ids)
    batch["token_ids_equal_single"] = [
        ids == record.generation.token_ids for ids, record in zip(token_ids, run.records, strict=True)
    ]
    log.info("throughput: single %.1f tok/s, batch %.1f tok/s", run.single["tokens_per_s"], batch["tokens_per_s"])
    return run, batch
