"""Forward hooks on the transformers reference at the engine's capture points (npuport.engines.capture).

The same points under the same names: the embedding's output, each decoder layer's attention output (after
o_proj), its MLP output and its own output (the residual stream after the layer), the final norm's output
and the logits. transformers returns them batched ``[1, tokens, width]``; the sink gets ``[tokens, width]``,
the layout the engine's capture has, in the order the forward pass produces them (depth order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Sink = Callable[[str, torch.Tensor], None]


def reference_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Capture point -> module of a transformers causal LM (Llama layout: decoder with embed_tokens, layers of
    self_attn and mlp, norm; the output embedding as the logits)."""
    decoder = model.get_decoder()
    modules: dict[str, torch.nn.Module] = {"embed": decoder.embed_tokens}
    for index, layer in enumerate(decoder.layers):
        modules[f"layers.{index}.self_attn"] = layer.self_attn
        modules[f"layers.{index}.mlp"] = layer.mlp
        modules[f"layers.{index}"] = layer
    modules["norm"] = decoder.norm
    modules["logits"] = model.get_output_embeddings()
    return modules


def _unbatched(output) -> torch.Tensor:
    tensor = output[0] if isinstance(output, tuple) else output
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ValueError(f"expected a [1, tokens, width] output, got {list(tensor.shape)}")
    return tensor[0]


class ReferenceTaps:
    """While inside, every forward pass of ``model`` hands each capture point's output to ``sink(point, tensor)``."""

    def __init__(self, model: torch.nn.Module, sink: Sink):
        self.modules = reference_modules(model)
        self._sink = sink
        self._handles: list = []

    @property
    def points(self) -> list[str]:
        return list(self.modules)

    def __enter__(self) -> ReferenceTaps:
        for point, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(point)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, point: str):
        def hook(_module, _args, output):
            self._sink(point, _unbatched(output))

        return hook
