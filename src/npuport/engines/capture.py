"""Forward hooks inside vLLM's workers: the engine's own hidden states and logits, teacher-forced.

Run through ``LLM.apply_model`` (vLLM's API for code on the model in every worker), so the same code runs
on any platform vLLM supports: the module tree is vLLM's model, whatever plugin computes it. The functions
here are module-level so that vLLM can send them to its worker processes; their state lives in the
worker process between calls (install, then requests, then collect).

vLLM specifics handled here: tokens arrive flattened ``[tokens, hidden]``, a long prefill may come in
several forward calls (the captures of one request are concatenated in order), and a decoder layer
returns ``(hidden, residual)`` with the residual add fused into the next norm, so a layer's output is
their sum. Hooks do not fire inside captured graphs: capture needs an engine running eagerly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from npuport.compare.layer_plan import depth

# Capture points in depth order; the pattern names vLLM's module, the kind says how to read its output.
LAYER = re.compile(r"^model\.layers\.(\d+)$")
LAYER_PART = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)$")

_state: dict = {"hooks": [], "captured": {}}


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _layer_output(output):
    """A vLLM decoder layer returns (hidden, residual); the residual stream after the layer is their sum."""
    if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
        return output[0] + output[1]
    return _first(output)


def point_modules(model: torch.nn.Module, points: str) -> dict[str, torch.nn.Module]:
    """Capture point -> module: ``points`` is "logits" (final norm + the engine's compute_logits) or "all"
    (also embedding, every decoder layer and its attention and MLP)."""
    modules = dict(model.named_modules())
    found = {"norm": modules["model.norm"]}
    if points == "all":
        found["embed"] = modules["model.embed_tokens"]
        for name, module in modules.items():
            if LAYER.match(name) or LAYER_PART.match(name):
                found[name.removeprefix("model.")] = module
    return found


def _record(point: str, tensor: torch.Tensor) -> None:
    _state["captured"].setdefault(point, []).append(tensor.detach().to("cpu", copy=True))


def _hook(model: torch.nn.Module, point: str):
    def hook(_module, _args, output):
        if point == "norm":
            hidden = _first(output)
            _record("norm", hidden)
            _record("logits", model.compute_logits(hidden))
        elif LAYER.match("model." + point):
            _record(point, _layer_output(output))
        else:
            _record(point, _first(output))

    return hook


def install(model: torch.nn.Module, points: str = "logits") -> list[str]:
    """Register the hooks (removing any earlier ones) and return the capture points, in depth order."""
    remove(model)
    modules = point_modules(model, points)
    for point, module in modules.items():
        _state["hooks"].append(module.register_forward_hook(_hook(model, point)))
    names = [p for p in modules if p != "norm"] + ["norm", "logits"]
    return sorted(names, key=depth)


def collect(model: torch.nn.Module, path: str | None = None) -> dict:
    """The tensors captured since the last collect, concatenated per point; cleared afterwards. With ``path``
    they are written there (safetensors, in the engine's own dtype) and only their shapes come back, so large
    captures do not travel through vLLM's RPC."""
    captured = {p: torch.cat(chunks).contiguous() for p, chunks in _state["captured"].items()}
    _state["captured"] = {}
    if path is None:
        return captured
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(captured, path)
    return {p: list(t.shape) for p, t in captured.items()}


def remove(model: torch.nn.Module) -> None:
    for handle in _state["hooks"]:
        handle.remove()
    _state["hooks"] = []
    _state["captured"] = {}
