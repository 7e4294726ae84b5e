"""Task accuracy with lm-evaluation-harness: run tasks on one backend, record per-task scores and per-sample results.

Backends are lm-eval's own: ``hf`` (transformers, the reference; ``hf_model_args``) and ``local-completions``
against an OpenAI-compatible server such as ``vllm serve`` (the engine; ``server_model_args``), where
log-likelihoods come from ``echo`` + ``logprobs`` on /v1/completions and generations from the same endpoint.
Both sides encode with the model's Hugging Face tokenizer with its special tokens (``add_bos_token``), so they
score the same token sequences.

Datasets are read offline: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE default to 1 while a run imports and uses
lm-eval (``offline_env``; a value the user set is kept, and the process's environment is restored afterwards, so
nothing started later inherits them). A task whose dataset is not available offline is recorded as not run; the
other tasks still run. Nothing here raises for an lm-eval failure: it is recorded in the returned document.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npuport.core.atomic import atomic_dir
from npuport.core.errors import one_line

log = logging.getLogger(__name__)

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
# Sample-statistic stderr of mean metrics is closed-form; bootstrap only serves other aggregations.
BOOTSTRAP_ITERS = 1000
OFFLINE_HINT = (
    "dataset not available offline (HF_DATASETS_OFFLINE=1): put it in HF_DATASETS_CACHE beforehand, or set "
    "HF_DATASETS_OFFLINE=0 and HF_ENDPOINT to a reachable mirror"
)


def hf_model_args(
    *,
    model_dir: str | Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
    dtype: str = "float32",
    device: str = "cpu",
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """lm-eval ``hf`` model_args for a model directory, or for a loaded ``PreTrainedModel`` (``model``, with its
    ``tokenizer``: a tokenizer object or directory)."""
    if (model_dir is None) == (model is None):
        raise ValueError("give exactly one of model_dir and model")
    args: dict[str, Any] = {"pretrained": str(model_dir) if model is None else model, "device": device}
    if model is None:
        args["dtype"] = dtype
    if tokenizer is not None:
        args["tokenizer"] = str(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    args |= {"batch_size": batch_size, "add_bos_token": True}
    if max_length is not None:
        args["max_length"] = max_length
    return args


def server_model_args(
    *,
    base_url: str,
    served_model: str,
    tokenizer_dir: str | Path,
    max_length: int = 2048,
    max_gen_toks: int = 256,
    batch_size: int = 32,
    num_concurrent: int = 2,
    max_retries: int = 3,
    timeout_s: int = 300,
) -> dict[str, Any]:
    """lm-eval ``local-completions`` model_args for an OpenAI-compatible server.

    ``base_url``: the server root (http://HOST:PORT) or the full /v1/completions URL; ``served_model``: the name
    the server lists under /v1/models (vLLM: the ``--model`` argument unless ``--served-model-name``);
    ``max_length``: the server's max model length. Requests go as token ids (``tokenized_requests``), batched
    ``batch_size`` prompts a request, ``num_concurrent`` requests in flight.
    """
    url = base_url.rstrip("/")
    if not url.endswith("/completions"):
        url = url + ("/completions" if url.endswith("/v1") else "/v1/completions")
    return {
        "base_url": url,
        "model": served_model,
        "tokenizer": str(tokenizer_dir),
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "add_bos_token": True,
        "max_length": max_length,
        "max_gen_toks": max_gen_toks,
        "batch_size": batch_size,
        "num_concurrent": num_concurrent,
        "max_retries": max_retries,
        "timeout": timeout_s,
    }


def lm_eval_command(
    *,
    model: str,
    model_args: dict[str, Any] | str,
    tasks: list[str],
    num_fewshot: int | None,
    limit: int | float | None,
    seed: int,
    include_path: Path | None,
    output_dir: Path | None,
) -> str:
    """The ``lm_eval`` command line that runs the same evaluation (an in-memory model shows as ``<ClassName>``)."""
    if isinstance(model_args, dict):
        model_args = ",".join(f"{key}={_arg_text(value)}" for key, value in model_args.items())
    argv = ["lm_eval", "--model", model, "--model_args", model_args, "--tasks", ",".join(tasks)]
    if num_fewshot is not None:
        argv += ["--num_fewshot", str(num_fewshot)]
    argv += ["--seed", str(seed)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if include_path is not None:
        argv += ["--include_path", str(include_path)]
    argv.append("--log_samples")
    if output_dir is not None:
        argv += ["--output_path", str(output_dir)]
    return shlex.join(argv)


def _arg_text(value: Any) -> str:
    return str(value) if isinstance(value, str | int | float | bool | Path) else f"<{type(value).__name__}>"


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars to numbers, NaN/inf to None, tuples/sets to lists, objects to str."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(item) for item in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def run_tasks(
    *,
    model: str,
    model_args: dict[str, Any] | str,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    seed: int = 1234,
    include_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    threads: int | None = None,
    published_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on ``tasks`` (task, group or tag names) with backend ``model`` ("hf",
    "local-completions", ...) and record the outcome as a JSON-safe document.

    ``include_path``: a folder of task YAMLs (lm-eval's ``--include_path``); lm-eval's own tasks are indexed only
    when a name is not found there (that index takes 10-20 s). ``seed`` seeds python, numpy, torch and the
    few-shot sampler, like ``lm_eval --seed N``. ``output_dir``: where lm-eval's results.json and one
    samples_<task>.jsonl per task go (lm-eval's formats, fixed names). ``threads``: torch's intra-op threads
    during the run (the ``hf`` backend; on a shared host torch's default of one per core is several times
    slower), restored afterwards. ``published_dir``: where ``output_dir`` ends up when it is a staging directory,
    as the recorded command names it. Returns ``{"status": "ok" | "failed" |
    "not run", "reason", "backend", "command", "lm_eval_version", "wall_s", "tasks": {task: {"status",
    "reason", "metric", "filter", "score", "stderr", "n", "samples": [{"doc_id", "correct"}]}}, "results"}``.
    """
    include_path = None if include_path is None else Path(include_path)
    output_dir = None if output_dir is None else Path(output_dir)
    doc: dict[str, Any] = {
        "status": "not run", "reason": None, "backend": model, "lm_eval_version": None, "wall_s": None,
        "command": lm_eval_command(model=model, model_args=model_args, tasks=tasks, num_fewshot=num_fewshot,
                                   limit=limit, seed=seed, include_path=include_path,
                                   output_dir=Path(published_dir) if published_dir else output_dir),
        "tasks": {}, "results": {},
    }  # fmt: skip
    started = time.monotonic()
    with offline_env():
        doc = _run(doc, model=model, model_args=model_args, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                   seed=seed, include_path=include_path, output_dir=output_dir, threads=threads)  # fmt: skip
    doc["wall_s"] = round(time.monotonic() - started, 3)
    log.info("lm-eval %s on %s: %s in %.1f s", model, ",".join(tasks), doc["status"], doc["wall_s"])
    return doc


def _run(doc: dict[str, Any], *, model, model_args, tasks, num_fewshot, limit, seed, include_path, output_dir,
         threads) -> dict[str, Any]:  # fmt: skip
    """run_tasks' work, offline: import lm-eval, index and load the tasks, evaluate those that loaded."""
    try:
        import lm_eval
    except ImportError as exc:
        doc["reason"] = one_line(f"lm-eval is not installed ({exc}): pip install 'lm-eval[api]' accelerate")
        return doc
    doc["lm_eval_version"] = lm_eval.__version__
    try:
        task_manager = _task_manager(tasks, include_path)
    except Exception as exc:  # noqa: BLE001 -- a broken task YAML in include_path
        doc |= {"status": "failed", "reason": one_line(f"lm-eval could not index the tasks: {exc}")}
        return doc
    loaded, not_run = _load_tasks(task_manager, tasks)
    skipped = "; ".join(f"{name}: {record['reason']}" for name, record in not_run.items())
    if loaded:
        with torch_threads(threads):
            doc |= _evaluate(lm_eval, task_manager, loaded, model=model, model_args=model_args,
                             num_fewshot=num_fewshot, limit=limit, seed=seed, output_dir=output_dir)  # fmt: skip
        doc["tasks"] = dict(sorted((not_run | doc.pop("evaluated")).items()))
        doc["reason"] = doc["reason"] or (skipped and f"not run: {skipped}") or None
    else:
        doc |= {"tasks": not_run, "reason": f"no task could be loaded: {skipped}"}
    return doc


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """HF_DATASETS_OFFLINE and HF_HUB_OFFLINE set to 1 inside the block unless already set (datasets and
    huggingface_hub read them when first imported, which happens inside it), restored afterwards."""
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    for key in OFFLINE_ENV:
        os.environ.setdefault(key, "1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (unchanged when None)."""
    if threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _task_manager(tasks: list[str], include_path: Path | None):
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in manager.all_tasks for name in tasks):
            return manager
    started = time.monotonic()
    manager = TaskManager(include_path=None if include_path is None else str(include_path), include_defaults=True)
    log.info("indexed lm-eval's own tasks in %.1f s", time.monotonic() - started)
    return manager


def _load_tasks(task_manager, names: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Each name's Task/Group objects (loading reads its dataset), and a not-run record per name that failed."""
    loaded, not_run = [], {}
    for name in names:
        try:
            built = task_manager.load([name])
        except KeyError:
            not_run[name] = _task_record("not run", f"no lm-eval task, group or tag named {name!r}")
            continue
        except Exception as exc:  # noqa: BLE001 -- datasets and task code raise anything
            not_run[name] = _task_record("not run", _load_failure(exc))
            continue
        if name in built["groups"]:
            loaded.append(built["groups"][name])
        elif name in built["tasks"]:
            loaded.append(built["tasks"][name])
        else:  # a tag: its tasks
            loaded.extend(built["tasks"].values())
    return loaded, not_run


def _load_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    offline = isinstance(exc, ConnectionError) or any(
        marker in text for marker in ("OfflineModeIsEnabled", "HF_DATASETS_OFFLINE", "DatasetNotFoundError")
    )
    return one_line(f"{OFFLINE_HINT} ({text})" if offline else f"lm-eval could not load the task ({text})")


def _task_record(status: str, reason: str | None, **fields: Any) -> dict[str, Any]:
    record = {"status": status, "reason": reason, "metric": None, "filter": None, "score": None, "stderr": None,
              "n": 0, "samples": []}  # fmt: skip
    return record | fields


def _leaf_names(loaded: list[Any]) -> list[str]:
    names = []
    for item in loaded:
        names += (
            [task.task_name for task in item.get_all_tasks()] if hasattr(item, "get_all_tasks") else [item.task_name]
        )
    return names


def _evaluate(lm_eval, task_manager, loaded: list[Any], *, model, model_args, num_fewshot, limit, seed, output_dir):
    """simple_evaluate on the loaded tasks: {"status", "reason", "results", "evaluated": per-task records}."""
    try:
        out = lm_eval.simple_evaluate(
            model=model, model_args=model_args, tasks=loaded, num_fewshot=num_fewshot, limit=limit,
            log_samples=True, task_manager=task_manager, bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- backends raise anything (HTTP errors, OOM, bad arguments)
        reason = one_line(f"lm-eval failed: {type(exc).__name__}: {exc}")
        log.warning("%s", reason)
        failed = {name: _task_record("failed", reason) for name in _leaf_names(loaded)}
        return {"status": "failed", "reason": reason, "results": {}, "evaluated": failed}
    config = out.get("config") or {}
    if isinstance(config.get("model_args"), dict):  # an in-memory model would be dumped as its whole repr
        config["model_args"] = {key: _arg_text(value) for key, value in config["model_args"].items()}
    evaluated = {name: task_result(out, name) for name in out["samples"]}
    if output_dir is not None:
        write_outputs(output_dir=output_dir, out=out)
    bad = [name for name, record in evaluated.items() if record["status"] != "ok"]
    return {
        "status": "failed" if bad else "ok",
        "reason": f"no per-sample scores for {', '.join(bad)}" if bad else None,
        "results": json_safe({key: out.get(key) for key in ("results", "groups", "n-samples", "versions", "n-shot",
                                                              "higher_is_better", "config")}),
        "evaluated": evaluated,
    }  # fmt: skip


def primary_metric(config: dict[str, Any], row: dict[str, Any]) -> tuple[str, str] | None:
    """The task's first metric (its ``metric_list`` order) under its first filter that has a score in ``row``
    (lm-eval's results entry, keys "<metric>,<filter>")."""
    metrics = [str(entry.get("metric")) for entry in config.get("metric_list") or []]
    filters = [str(entry.get("name")) for entry in config.get("filter_list") or []] or ["none"]
    for metric in metrics:
        for filter_name in filters:
            if f"{metric},{filter_name}" in row:
                return metric, filter_name
    for key in row:  # a task without metric_list: its default metrics
        if "," in key and "_stderr," not in key:
            metric, filter_name = key.split(",", 1)
            return metric, filter_name
    return None


def task_result(out: dict[str, Any], task: str) -> dict[str, Any]:
    """One task's record from simple_evaluate's output: the primary metric's score, stderr, n, and per sample
    its doc_id and 0/1 correctness (``value`` instead when the metric is not 0/1 per sample)."""
    row = out["results"].get(task, {})
    chosen = primary_metric(out.get("configs", {}).get(task, {}), row)
    if chosen is None:
        return _task_record("failed", f"lm-eval reported no metric for {task}")
    metric, filter_name = chosen
    samples = [s for s in out["samples"][task] if s.get("filter", "none") == filter_name]
    values = [json_safe(s.get(metric)) for s in samples]
    binary = all(isinstance(v, int | float) and v in (0, 1) for v in values)
    per_sample = [
        {"doc_id": int(s["doc_id"]), ("correct" if binary else "value"): (int(v) if binary else v)}
        for s, v in zip(samples, values, strict=True)
    ]
    stderr = json_safe(row.get(f"{metric}_stderr,{filter_name}"))
    return _task_record(
        "ok", None, metric=metric, filter=filter_name, score=json_safe(row[f"{metric},{filter_name}"]),
        stderr=stderr if isinstance(stderr, int | float) else None, n=len(per_sample), samples=per_sample,
    )  # fmt: skip


def write_outputs(*, output_dir: Path, out: dict[str, Any]) -> list[str]:
    """lm-eval's results document (results.json) and per-task samples (samples_<task>.jsonl), in the formats of
    its EvaluationTracker but under fixed names (it dates them), replacing ``output_dir``."""
    from lm_eval.utils import handle_non_serializable

    names = []
    with atomic_dir(output_dir) as tmp:
        document = {key: value for key, value in out.items() if key != "samples"}
        text = json.dumps(document, indent=2, default=handle_non_serializable, ensure_ascii=False)
        (tmp / "results.json").write_text(text + "\n", encoding="utf-8")
        names.append("results.json")
        for task, samples in out["samples"].items():
            lines = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n" for s in samples]
            (tmp / f"samples_{task}.jsonl").write_text("".join(lines), encoding="utf-8")
            names.append(f"samples_{task}.jsonl")
    return names
