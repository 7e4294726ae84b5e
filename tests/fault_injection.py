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
