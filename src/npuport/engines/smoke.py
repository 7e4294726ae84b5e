"""The `smoke` stage: the real vLLM engine (``VllmRunner``) on whatever platform vLLM picks, greedy
generation, timings, the engine's own logits and hidden states captured (for `compare` and `layers`), KV cache
capacity. (The `vllm serve` check runs in the `bench` stage, on the server its load ladder uses: smoke.json's
"serve" says so.)

smoke.json has every key of ``records.document`` whatever happened: an engine that is missing or fails
is recorded as status "not run" / "failed", never raised.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npuport.compare.layer_plan import LAYER_FILE, LayerSequence, LayersSettings, layer_sequences
from npuport.core.atomic import atomic_dir, read_json
from npuport.core.settings import EngineSettings, EvaluationSettings, GenerationSettings
from npuport.engines import workloads
from npuport.engines.deployment import (
    Deployment,
    DeploymentsSettings,
    HostFacts,
    Workload,
    cannot_run,
    configurations,
    differs,
    eager_diagnostic,
    engine_groups,
    engine_key,
    host_facts,
)
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
NOT_EAGER = "engine.enforce_eager is false: forward hooks do not fire inside compiled graphs"
LAYERS_ENGINE = "the deployed settings run eagerly (enforce_eager: true): the layer comparison's diagnostic engine"


@dataclass(frozen=True)
class OfflineRun:
    """What happened while the offline engine lived: status, the document fields it measured, its records."""

    status: str
    reason: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    records: list[PromptRecord] = field(default_factory=list)
    shutdown: dict[str, Any] | None = None


@dataclass(frozen=True)
class Matrix:
    """What every engine of the run needs to run its configurations' workloads: the configurations (the deployed
    one first), the sequences they score and the prompts they generate, and where their captures go."""

    deployments: list[Deployment]
    segments: list[list[int]]  # the evaluation segments each configuration scores
    pool: list[int]  # tokens the other sequences of a batch are cut from
    bos: int | None
    prompts: list[Prompt]
    generation: GenerationSettings
    stop_ids: list[int]
    host: HostFacts | None = None

    @property
    def deployed(self) -> Deployment:
        return self.deployments[0]


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
    deployments: DeploymentsSettings | None = None,
) -> dict[str, Any]:
    """Run the engine under test on ``model_dir`` in its deployed configuration (``engine``) and return the
    smoke.json document. With ``evaluation_text`` and ``capture_dir``, the engine's logits at every position of the
    text's segments are captured there (npuport.engines.evaluation), for compare's full-distribution statistics; the
    deployment configurations (``deployments``, None: the schema's) score the first segments each under their own
    engine settings and workload (``capture_dir/<name>/``), engines with the same settings shared; with
    ``capture_dir``, the layer comparison's eager engine also captures its hidden states at every layer point
    (``layers``, None: the schema's defaults)."""
    model_dir = Path(model_dir).resolve()
    deployments = deployments or DeploymentsSettings.from_config({})
    base = {
        "settings": {"engine": engine.as_dict(), "generation": generation.as_dict(),
                     "trust_remote_code": trust_remote_code, "prompt_format": prompt_format(generation),
                     "deployments": deployments.as_dict()},
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
    segments = (plan or {}).get("segments") or []
    matrix = Matrix(configurations(deployments, engine), [list(s) for s in segments[: deployments.segments]],
                    [t for s in segments for t in s[1:]] or [t for p in prompts for t in p.token_ids],
                    tokenizer.bos_token_id, list(prompts), generation, stop.ids)  # fmt: skip
    layers = layers or LayersSettings.from_config({})

    with captured_output() as log_file, _staging(capture_dir) as staging:
        run = offline_run(model_dir, prompts, log_file, engine=engine, generation=generation, stop_ids=stop.ids,
                          trust_remote_code=trust_remote_code, evaluation=plan, capture_dir=staging,
                          layers=layers, matrix=matrix)  # fmt: skip
        fields = dict(run.fields)
        if run.status == "ok":
            fields.update(other_engines(model_dir, matrix, run, staging, layers=layers,
                                        trust_remote_code=trust_remote_code))  # fmt: skip
        else:
            fields["deployments"] = not_run_matrix(matrix, f"the deployed configuration did not run: {run.reason}")
        log_tail = tail_lines(log_file)
    if run.reason:
        log.warning("smoke: %s: %s", run.status, run.reason)
    doc = document("smoke", run.status, run.reason, log_tail=log_tail, **base, **fields)
    if run.records:
        doc["timing_method"] = run.records[0].generation.timing.method
    sys.stdout.flush()
    return doc


@contextlib.contextmanager
def _staging(capture_dir: str | Path | None):
    """Where the run's captures go: a staging directory that replaces ``capture_dir`` when the run completes."""
    if capture_dir is None:
        yield None
        return
    with atomic_dir(capture_dir) as staging:
        yield staging


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
    matrix: Matrix | None = None,
) -> OfflineRun:
    """Start the deployed configuration's offline engine, measure everything, run the configurations that share its
    settings, shut it down. ``log_file`` holds what the engine printed so far (its KV cache lines)."""
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
            eager = engine.enforce_eager
            fields.update(capture_engine(runner, records, evaluation=evaluation, layers=layers if eager else None,
                                         capture_dir=capture_dir))  # fmt: skip
            if not eager and layers is not None:
                fields["layers"] = {"status": "not run", "mode": "compiled", "reason": NOT_EAGER}
            if matrix is not None:
                rows = run_group(runner, matrix, engine, records, capture_dir)
                fields["_rows"] = rows
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


def run_group(
    runner: VllmRunner,
    matrix: Matrix,
    engine: EngineSettings,
    records: Sequence[PromptRecord],
    capture_dir: str | Path | None,
) -> dict[str, dict[str, Any]]:
    """The rows of the configurations (other than the deployed one) whose engine settings are ``engine``, run on
    ``runner``: name -> row. A configuration that fails is recorded, not raised."""
    rows = {}
    key = engine_key(engine)
    for deployment in matrix.deployments[1:]:
        if engine_key(deployment.engine) != key:
            continue
        rows[deployment.name] = run_configuration(runner, matrix, deployment, records, capture_dir)
    return rows


def run_configuration(
    runner: VllmRunner,
    matrix: Matrix,
    deployment: Deployment,
    records: Sequence[PromptRecord],
    capture_dir: str | Path | None,
) -> dict[str, Any]:
    """One configuration on its (running) engine: its logits on the scored segments under its workload, and the
    prompts generated greedily under it against the deployed configuration's tokens."""
    row = configuration_row(matrix, deployment) | {"status": "captured", "reason": None,
                                                    "engine_start_s": runner.load_s}  # fmt: skip
    llm = runner._llm
    try:
        started = time.perf_counter()
        params = runner._sampling(matrix.generation.max_tokens, matrix.generation.top_logprobs, matrix.stop_ids)
        outputs = workloads.greedy(llm, [p.token_ids for p in matrix.prompts], workload=deployment.workload,
                                   params=params, pool=matrix.pool, bos=matrix.bos)  # fmt: skip
        row["greedy"] = greedy_against(outputs, records)
        if capture_dir is None or not matrix.segments:
            row |= {"status": "not run", "reason": NO_CAPTURE_DIR if capture_dir is None else "no evaluation text"}
        else:
            directory = Path(capture_dir) / deployment.name
            captured = workloads.score(llm, matrix.segments, directory, workload=deployment.workload,
                                       pool=matrix.pool, bos=matrix.bos)  # fmt: skip
            row["capture"] = captured | {"directory": deployment.name}
        row["seconds"] = round(time.perf_counter() - started, 3)
        log.info("configuration %s: %s in %.1f s", deployment.name, row["status"], row["seconds"])
    except Exception as exc:  # noqa: BLE001 - one configuration's failure is its row's finding
        log.exception("configuration %s failed", deployment.name)
        row |= {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return row


def configuration_row(matrix: Matrix, deployment: Deployment) -> dict[str, Any]:
    """The fields every row has, whatever happened to it."""
    return deployment.as_dict() | {"differs": differs(deployment, matrix.deployed.engine)}


def greedy_against(outputs: Sequence[dict[str, Any]], records: Sequence[PromptRecord]) -> list[dict[str, Any]]:
    """Each prompt's greedy tokens under a configuration against the deployed configuration's (each prompt alone):
    identical, or the first position where they differ."""
    compared = []
    for output, record in zip(outputs, records, strict=True):
        mine, deployed = output["token_ids"], record.generation.token_ids
        first = next((i for i, (a, b) in enumerate(zip(mine, deployed, strict=False)) if a != b), None)
        if first is None and len(mine) != len(deployed):
            first = min(len(mine), len(deployed))
        compared.append({"prompt": record.prompt, "tokens": len(mine), "identical": first is None,
                         "first_divergence": first} | {k: v for k, v in output.items() if k != "token_ids"}
                        | {"token_ids": mine})  # fmt: skip
    return compared


def other_engines(
    model_dir: Path,
    matrix: Matrix,
    run: OfflineRun,
    capture_dir: str | Path | None,
    *,
    layers: LayersSettings,
    trust_remote_code: bool,
) -> dict[str, Any]:
    """The engines other than the deployed one, one start per group of configurations with the same settings (and
    the eager engine of the layer comparison, which an "eager" configuration shares); smoke.json's "deployments"
    (every configuration's row, in config order) and, when the deployed engine is compiled, "layers"."""
    fields: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = dict(run.fields.get("_rows") or {})
    deployed = matrix.deployed.engine
    layers_engine = None if deployed.enforce_eager else eager_diagnostic(deployed)
    groups = [(e, g) for e, g in engine_groups(matrix.deployments) if engine_key(e) != engine_key(deployed)]
    if layers_engine is not None and engine_key(layers_engine) not in {engine_key(e) for e, _ in groups}:
        groups.append((layers_engine, []))
    host = matrix.host or _host()
    for engine, group in groups:
        reason = cannot_run(engine, host) if host is not None else "vLLM's platform could not be read"
        capture_layers_here = layers_engine is not None and engine_key(engine) == engine_key(layers_engine)
        if reason is not None:
            rows.update({d.name: configuration_row(matrix, d) | {"status": "not run", "reason": reason} for d in group})
            continue
        group_rows, layer_fields = engine_run(model_dir, matrix, engine, group, run.records, capture_dir,
                                              layers=layers if capture_layers_here else None,
                                              trust_remote_code=trust_remote_code)  # fmt: skip
        rows.update(group_rows)
        if capture_layers_here:
            fields["layers"] = layer_fields | {"engine_settings": engine.as_dict(), "engine": LAYERS_ENGINE}
    run.fields.pop("_rows", None)
    fields["deployments"] = {
        "host": host.as_dict() if host is not None else None,
        "segments": len(matrix.segments),
        "configurations": [rows[d.name] for d in matrix.deployments[1:] if d.name in rows],
    }
    return fields


def _host() -> HostFacts | None:
    try:
        return host_facts()
    except Exception:  # noqa: BLE001 - without vLLM's platform nothing else can run either
        log.exception("vLLM's platform could not be read")
        return None


def engine_run(
    model_dir: Path,
    matrix: Matrix,
    engine: EngineSettings,
    group: Sequence[Deployment],
    records: Sequence[PromptRecord],
    capture_dir: str | Path | None,
    *,
    layers: LayersSettings | None,
    trust_remote_code: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One more engine start for ``group`` (and the layer capture when ``layers`` is given): its rows and the layer
    capture's fields. An engine that does not start fails its rows, not the stage."""
    names = ", ".join(d.name for d in group) or "the layer comparison"
    log.info("starting the engine of %s", names)
    layer_fields: dict[str, Any] = {}
    try:
        runner = VllmRunner(model_dir, engine=engine, temperature=matrix.generation.temperature,
                            seed=matrix.generation.seed, trust_remote_code=trust_remote_code)  # fmt: skip
        with runner:
            rows = run_group(runner, matrix, engine, records, capture_dir)
            if layers is not None:
                layer_fields = capture_engine(runner, records, evaluation=None, layers=layers,
                                              capture_dir=capture_dir, segments=matrix.segments)["layers"]  # fmt: skip
        for row in rows.values():
            row["engine_shutdown"] = runner.shutdown
    except Exception as exc:  # noqa: BLE001 - this engine's failure is its rows' finding
        log.exception("the engine of %s failed", names)
        reason = f"engine failed: {type(exc).__name__}: {exc}"
        rows = {d.name: configuration_row(matrix, d) | {"status": "failed", "reason": reason} for d in group}
        if layers is not None:
            layer_fields = {"status": "failed", "mode": "eager", "reason": reason}
    return rows, layer_fields


def not_run_matrix(matrix: Matrix, reason: str) -> dict[str, Any]:
    return {"host": None, "segments": len(matrix.segments),
            "configurations": [configuration_row(matrix, d) | {"status": "not run", "reason": reason}
                               for d in matrix.deployments[1:]]}  # fmt: skip


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
    """The engine's logits on every evaluation segment of ``plan``, each segment alone, written to ``directory``."""
    captured = workloads.score(runner._llm, plan["segments"], directory, workload=Workload(),
                               pool=[], bos=None)  # fmt: skip
    log.info("captured the engine's logits on %d evaluation segments", len(plan["segments"]))
    mode = "eager" if runner.settings.enforce_eager else "compiled"
    return plan | {"capture": captured | {"mode": mode}}


def capture_engine(
    runner: VllmRunner,
    records: Sequence[PromptRecord],
    *,
    evaluation: dict[str, Any] | None,
    layers: LayersSettings | None,
    capture_dir: str | Path | None,
    segments: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """smoke.json's "evaluation" and "layers" fields: the engine's logits on the evaluation segments, and its hidden
    states at every layer capture point on the prompts (with the engine's outputs) and on the first
    ``layers.eval_tokens`` tokens of the evaluation text (``segments``, else the evaluation's); both written to
    ``capture_dir`` (the stage publishes it when the run completes)."""
    fields: dict[str, Any] = {}
    if capture_dir is None:
        if evaluation is not None:
            fields["evaluation"] = evaluation | {"capture": None, "reason": NO_CAPTURE_DIR}
        if layers is not None:
            fields["layers"] = {"status": "not run", "mode": None, "reason": NO_CAPTURE_DIR}
        return fields
    directory = Path(capture_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if evaluation is not None:
        fields["evaluation"] = evaluation_logits(runner, evaluation, directory)
    if layers is not None:
        pieces = segments if segments is not None else (evaluation or {}).get("segments")
        sequences = layer_sequences([r.as_dict() for r in records], pieces, layers.eval_tokens)
        fields["layers"] = capture_layers(runner, sequences, directory)
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
