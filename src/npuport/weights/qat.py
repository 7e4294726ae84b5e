"""QAT forward of a Llama model: the seven projections fake-quantized on the fly.

The same ``fake_quant`` runs in training (with a straight-through estimator) and in
fusion, so a fused checkpoint's logits equal this forward of its latent weights.
"""

from __future__ import annotations

import torch
from torch import nn

from npuport.weights.ternary import QUANTIZED_PROJECTIONS, fake_quant_ste


class TernaryLinear(nn.Linear):
    """nn.Linear whose weight is ternary fake-quantized per group in every forward."""

    group_size: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_ste(self.weight, self.group_size).to(x.dtype)
        return nn.functional.linear(x, w, self.bias)


def make_qat(model: nn.Module, group_size: int) -> nn.Module:
    """Turn the seven projections of every decoder layer into TernaryLinear, in place."""
    for name, module in model.named_modules():
        if type(module) is nn.Linear and any(name.endswith(p) for p in QUANTIZED_PROJECTIONS):
            module.__class__ = TernaryLinear
            module.group_size = group_size
    return model
