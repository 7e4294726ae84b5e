"""The `accuracy_reference` stage: the accuracy tasks on the reference, lm-eval's ``hf`` backend (transformers).

It needs only the fused model, so it runs beside the engine stages; the `accuracy` stage gates the engine's run of
the same tasks (bench stage, on the server) against this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npuport.accuracy.accuracy import LM_EVAL_DIR, AccuracySettings, not_run
from npuport.accuracy.harness import hf_model_args, run_tasks


def run_accuracy_reference(
    model_dir: str | Path,
    *,
    settings: AccuracySettings,
    include_path: Path | None,
    dtype: str,
    device: str,
    threads: int | None,
    max_length: int,
    output_dir: Path,
    published_dir: Path | None = None,
) -> dict[str, Any]:
    """The tasks on transformers at ``dtype`` (the run document; lm-eval's own output in ``output_dir``/lm_eval,
    ``published_dir``/lm_eval once published, as the recorded command says)."""
    if not settings.enabled:
        return not_run("accuracy.enabled is false in the pipeline config")
    args = hf_model_args(model_dir=Path(model_dir), dtype=dtype, device=device, batch_size=settings.batch_size,
                         max_length=max_length)  # fmt: skip
    run = run_tasks(model="hf", model_args=args, output_dir=output_dir / LM_EVAL_DIR, threads=threads,
                    published_dir=published_dir / LM_EVAL_DIR if published_dir else None,
                    **settings.task_args(include_path))  # fmt: skip
    return run | {"settings": {"backend": "hf", "dtype": dtype, "device": device, "threads": threads}}
