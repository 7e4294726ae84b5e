"""Test-only port bugs, injected into a running vLLM engine's workers through ``LLM.apply_model``.

Nothing here is imported by the pipeline: a test calls ``set_fault`` / ``clear_fault`` on an engine it started,
so the bug lives only in the engine's processes (never in the transformers reference), and one engine start
serves every fault. Faults (comma-separated fields):

- ``mlp_scale,LAYER,FACTOR`` / ``attn_scale,LAYER,FACTOR``: that decoder layer's MLP / attention output x FACTOR
- ``mlp_sign,LAYER``: that decoder layer's MLP output negated
- ``swap_layers,LAYER``: layer LAYER computes with the weights of layer LAYER + 1
- ``rope_long,FACTOR``: positions at or past the LongRoPE switch rotate with long factors x FACTOR
"""

from __future__ import annotations

import contextlib
import functools

import torch

_active: dict[str, list] = {"handles": [], "restore": []}


def _scaling_hook(factor: float):
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (output[0] * factor, *output[1:])
        return output * factor

    return hook


def _swap(layers, k: int) -> None:
    saved = {name: value.detach().clone() for name, value in layers[k].state_dict().items()}
    layers[k].load_state_dict(layers[k + 1].state_dict())
    _active["restore"].append(lambda: layers[k].load_state_dict(saved))


def _wrong_long_rope(model, factor: float) -> int:
    """Rewrite the rows past the switch of every LongRoPE cos/sin cache; returns how many caches changed."""
    changed = 0
    for module in model.modules():
        if type(module).__name__ != "Phi3LongRoPEScaledRotaryEmbedding":
            continue
        cache, switch = module.long_short_cos_sin_cache, module.original_max_position_embeddings
        saved = cache.detach().clone()
        wrong = module._compute_cos_sin_cache(
            module.max_position_embeddings, [f * factor for f in module.long_factor], module.long_mscale
        ).to(cache.dtype)
        with torch.no_grad():  # long cache rows start at `switch` (after the short cache); rows past its own switch
            cache[2 * switch :] = wrong[switch:]
        _active["restore"].append(lambda c=cache, s=saved: c.copy_(s))
        changed += 1
    return changed


def set_fault(model, spec: str) -> str:
    """Inject the fault ``spec`` (see the module docstring) into this worker's model; returns what was done."""
    clear_fault(model)
    kind, *args = spec.split(",")
    layers = model.model.layers
    if kind in ("mlp_scale", "attn_scale", "mlp_sign"):
        part = layers[int(args[0])].self_attn if kind == "attn_scale" else layers[int(args[0])].mlp
        factor = -1.0 if kind == "mlp_sign" else float(args[1])
        _active["handles"].append(part.register_forward_hook(_scaling_hook(factor)))
    elif kind == "swap_layers":
        _swap(layers, int(args[0]))
    elif kind == "rope_long":
        if not _wrong_long_rope(model, float(args[0])):
            raise ValueError("the model has no LongRoPE embedding to break")
    else:
        raise ValueError(f"unknown fault {spec!r}")
    return spec


def clear_fault(model) -> None:
    for handle in _active["handles"]:
        handle.remove()
    with torch.no_grad():
        for restore in reversed(_active["restore"]):
            restore()
    _active["handles"], _active["restore"] = [], []


@contextlib.contextmanager
def injected(runner, fault: str | None):
    """``fault`` (None: no fault) in the workers of ``runner``'s running engine for the block; cleared after."""
    llm = runner._llm
    if fault:
        llm.apply_model(functools.partial(set_fault, spec=fault))
    try:
        yield
    finally:
        llm.apply_model(clear_fault)


class WorkerFaults:
    """vLLM worker extension (``--worker-extension-cls fault_injection.WorkerFaults``, tests/ on PYTHONPATH): the
    faults above in a server's workers, set through its dev-mode ``POST /collective_rpc`` (VLLM_SERVER_DEV_MODE=1)
    with ``{"method": "npuport_set_fault", "args": [spec]}``; ``npuport_clear_fault`` clears them."""

    def npuport_set_fault(self, spec: str) -> str:
        return set_fault(self.model_runner.get_model(), spec)

    def npuport_clear_fault(self) -> None:
        clear_fault(self.model_runner.get_model())


# --- faults that exist in exactly one deployment configuration --------------------------------------------------------
#
# Out of the graph, in the model runner's step (GPUModelRunner._model_forward, patched on the class so that the
# pipeline's logit tap, which wraps the instance, sees the faulty output): the final hidden states of a request are
# scaled by 1 + SCALE only when the step shows the pattern. The condition is checked at every step, so a fault is
# switched on and off on a running engine (``pattern_fault``). In the graph: a layer's MLP output scaled only while
# torch.compile traces it (``graph_fault``: the compiled engine carries it, an eager engine never does).

PATTERN_SCALE = 1.05  # 1.03 fails its row too, at 1.2-1.6x the limit (README)
_pattern: dict = {"active": None, "seen": {}, "original": None}


def _pattern_rows(runner) -> list[tuple[int, int]]:
    """The (start, end) rows of this step's requests that show the active pattern."""
    kind = _pattern["active"]
    starts = runner.query_start_loc.np
    req_ids = list(runner.input_batch.req_ids)
    rows = []
    for index, req_id in enumerate(req_ids):
        state = runner.requests.get(req_id)
        if state is None:
            continue
        computed, prompt = int(state.num_computed_tokens), int(state.num_prompt_tokens)
        first_step = req_id not in _pattern["seen"]
        if first_step:
            _pattern["seen"][req_id] = computed > 0  # a prefill that starts past 0: served from the prefix cache
        hit = (
            (kind == "batch" and len(req_ids) > 1)
            or (kind == "prefix_hit" and _pattern["seen"][req_id])
            or (kind == "chunked" and not first_step and computed < prompt)  # a later chunk of a prefill
        )
        if hit:
            rows.append((int(starts[index]), int(starts[index + 1])))
    return rows


def _faulty_forward(original):
    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if _pattern["active"] is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        for start, end in _pattern_rows(self):
            hidden[start:end] *= PATTERN_SCALE
        return output

    return forward


@contextlib.contextmanager
def pattern_fault(kind: str | None):
    """While inside, every engine in this process (in-process engines) scales the requests that run under ``kind``
    (batch: a step with more than one request; prefix_hit: a prefill served partly from the prefix cache; chunked: a
    prefill's later chunks); None: no fault."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward
    GPUModelRunner._model_forward = _faulty_forward(original)
    _pattern.update(active=kind, seen={})
    try:
        yield
    finally:
        GPUModelRunner._model_forward = original
        _pattern.update(active=None, seen={})


@contextlib.contextmanager
def graph_fault(module_prefix: str = "model.layers.0.mlp", factor: float = 1.03):
    """Engines built inside trace ``module_prefix``'s output x ``factor`` into their compiled graph (vLLM's LlamaMLP
    patched on the class while torch.compile traces; eager execution takes the other branch)."""
    from vllm.model_executor.models import llama

    init, forward = llama.LlamaMLP.__init__, llama.LlamaMLP.forward

    def tagged_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._npuport_prefix = kwargs.get("prefix", "")

    def faulty(self, x):
        out = forward(self, x)
        if getattr(self, "_npuport_prefix", None) == module_prefix and torch.compiler.is_compiling():
            return out * factor
        return out

    llama.LlamaMLP.__init__, llama.LlamaMLP.forward = tagged_init, faulty
    try:
        yield
    finally:
        llama.LlamaMLP.__init__, llama.LlamaMLP.forward = init, forward
