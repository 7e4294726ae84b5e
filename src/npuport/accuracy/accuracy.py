"""The `accuracy` stage: the same lm-eval tasks on both sides and the paired gate (accuracy.json).

The engine's side runs inside the `bench` stage, on its server (``engine_side``: lm-eval ``local-completions``
against vLLM's OpenAI server, the one server start of the model's run); the reference's side in the
`accuracy_reference` stage (npuport.accuracy.accuracy_reference: lm-eval's ``hf`` backend, transformers at
``compare.reference_dtype``, the same tasks, few-shot, seed and limit), which needs only the fused model and so runs
beside the engine stages. This stage gates the engine per task against the reference (npuport.accuracy.gate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from npuport.accuracy.gate import accuracy_check
from npuport.accuracy.harness import run_tasks, server_model_args
from npuport.core.settings import Settings

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"  # the normalized run document inside each side's directory
LM_EVAL_DIR = "lm_eval"  # lm-eval's own results.json and samples_<task>.jsonl, beside it


@dataclass(frozen=True)
class AccuracySettings(Settings):
    SECTION: ClassVar[str] = "accuracy"
    enabled: bool
    tasks: tuple[str, ...]
    include_path: str | None
    num_fewshot: int | None
    limit: int | None
    seed: int
    max_drop: float
    alpha: float
    batch_size: int
    num_concurrent: int

    def task_args(self, include_path: Path | None) -> dict[str, Any]:
        """What both sides run with (run_tasks' keywords)."""
        return {"tasks": list(self.tasks), "num_fewshot": self.num_fewshot, "limit": self.limit, "seed": self.seed,
                "include_path": include_path}  # fmt: skip


def not_run(reason: str) -> dict[str, Any]:
    """A side's run document when it did not run."""
    return {"status": "not run", "reason": reason, "backend": None, "command": None, "tasks": {}, "results": {}}


def engine_side(
    *,
    base_url: str,
    served_model: str,
    model_dir: Path,
    settings: AccuracySettings,
    include_path: Path | None,
    max_length: int,
    output_dir: Path,
    timeout_s: float,
    published_dir: Path | None = None,
) -> dict[str, Any]:
    """The tasks on the engine through its OpenAI server (lm-eval ``local-completions``); lm-eval's own output goes
    to ``output_dir``/lm_eval (``published_dir``/lm_eval once published, as the recorded command says)."""
    args = server_model_args(base_url=base_url, served_model=served_model, tokenizer_dir=model_dir,
                             max_length=max_length, batch_size=settings.batch_size,
                             num_concurrent=settings.num_concurrent, timeout_s=int(timeout_s))  # fmt: skip
    return run_tasks(model="local-completions", model_args=args, output_dir=output_dir / LM_EVAL_DIR,
                     published_dir=published_dir / LM_EVAL_DIR if published_dir else None,
                     **settings.task_args(include_path))  # fmt: skip


def run_accuracy(
    *, engine_run: dict[str, Any] | None, reference_run: dict[str, Any] | None, settings: AccuracySettings
) -> dict[str, Any]:
    """accuracy.json: both sides' runs (scores, lm-eval's results, per-sample correctness) and the gate."""
    doc: dict[str, Any] = {
        "stage": "accuracy", "settings": settings.as_dict(),
        "engine": engine_run or not_run("the bench stage recorded no engine run"),
        "reference": reference_run or not_run("the accuracy_reference stage recorded no run"),
    }  # fmt: skip
    doc["check"] = accuracy_check(engine_run=doc["engine"], reference_run=doc["reference"], alpha=settings.alpha,
                                  max_drop=settings.max_drop)  # fmt: skip
    doc["status"], doc["reason"] = doc["check"]["status"], doc["check"].get("reason")
    log.info("accuracy: %s%s", doc["status"], f" ({doc['reason']})" if doc["reason"] else "")
    return doc
