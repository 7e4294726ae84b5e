"""The engine's own logits at every computed position of marked requests, in any graph mode.

Forward hooks do not fire inside compiled graphs (torch.compile, CUDA graphs, ACLGraph), so the logits are taken
where vLLM's model runner leaves the graph: ``GPUModelRunner._model_forward`` (the method vLLM documents for
inspecting the model's forward; the CPU runner and platform plugins' runners inherit or keep it) returns the final
hidden states of every token scheduled in the step, and the model's own ``compute_logits`` (which vLLM runs outside
the graph, on the sampled rows) is applied to the rows of each marked request. A request is marked by
``SamplingParams(extra_args={MARK: key})``; unmarked requests (the other sequences of a batch, a request that fills
the prefix cache) are computed as usual and not recorded. Each step's rows are kept with their positions and the
number of requests in the step, so a prefill split into chunks, or served partly from the prefix cache, is
recorded as it ran.

Run through ``LLM.collective_rpc`` (functions module-level, state in the worker process); with tensor parallelism
every rank runs the same calls and the rank that holds the gathered logits writes them.
"""

from __future__ import annotations

from pathlib import Path

import torch

MARK = "npuport_score"

_state: dict = {"rows": {}, "runner": None, "own": False}


def _rows(runner, hidden: torch.Tensor, positions) -> None:
    starts = runner.query_start_loc.np
    req_ids = list(runner.input_batch.req_ids)
    for index, req_id in enumerate(req_ids):
        state = runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        if MARK not in extra:
            continue
        lo, hi = int(starts[index]), int(starts[index + 1])
        if hi <= lo:
            continue
        logits = runner.model.compute_logits(hidden[lo:hi])
        if logits is None:  # a tensor-parallel rank without the gathered logits
            continue
        where = positions[lo:hi] if isinstance(positions, torch.Tensor) and positions.dim() == 1 else None
        _state["rows"].setdefault(str(extra[MARK]), []).append(
            {
                "positions": (where.to("cpu", copy=True) if where is not None else torch.arange(lo, hi)).long(),
                "logits": logits.detach().to("cpu", copy=True),
                "requests_in_step": len(req_ids),
            }
        )


def install(worker) -> bool:
    """Wrap this worker's ``_model_forward`` (once); the wrapper records the marked requests' rows."""
    runner = worker.model_runner
    if _state["runner"] is runner:
        return True
    own = "_model_forward" in vars(runner)  # already wrapped on the instance (by whoever): keep that wrapper below ours
    original = runner._model_forward

    def forward(*args, **kwargs):
        output = original(*args, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor):
            _rows(runner, hidden, kwargs.get("positions", args[1] if len(args) > 1 else None))
        return output

    runner._model_forward = forward
    _state.update(runner=runner, own=own, rows={}, original=original)
    return True


def collect(worker, paths: dict[str, str]) -> dict[str, dict]:
    """Write each marked request's rows (``paths``: mark -> safetensors file) in position order; return per mark
    the positions recorded and how the prefill ran (steps, requests in each). Cleared afterwards."""
    from safetensors.torch import save_file

    rows, _state["rows"] = _state["rows"], {}
    found = {}
    for key, chunks in rows.items():
        positions = torch.cat([c["positions"] for c in chunks])
        logits = torch.cat([c["logits"] for c in chunks])
        order = torch.argsort(positions, stable=True)
        if key in paths:
            Path(paths[key]).parent.mkdir(parents=True, exist_ok=True)
            save_file({"logits": logits[order].contiguous(), "positions": positions[order].contiguous()}, paths[key])
        found[key] = {
            "first_position": int(positions.min()),
            "last_position": int(positions.max()),
            "rows": int(positions.numel()),
            "steps": len(chunks),
            "requests_in_step": [c["requests_in_step"] for c in chunks],
            "rows_per_step": [int(c["positions"].numel()) for c in chunks],
        }
    return found


def remove(worker) -> None:
    runner = worker.model_runner
    if _state["runner"] is runner:
        if _state["own"]:
            runner._model_forward = _state["original"]
        else:
            del runner._model_forward  # the class's method again
    _state.update(runner=None, own=False, original=None, rows={})
