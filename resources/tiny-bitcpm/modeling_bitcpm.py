"""Ternary quantization-aware forward of the npuport embedded model (written by resources/make_tiny_model.py).

A LlamaForCausalLM whose seven projections per decoder layer are ternary fake-quantized in every forward,
BitNet b1.58's absmean RoundClip (arXiv:2402.17764) per group of GROUP_SIZE input features:
scale = max(mean |W|, EPS), W_q = clamp(round(W / scale), -1, 1) * scale, with a straight-through gradient.
The checkpoint stores the latent full-precision weights; load it with trust_remote_code=True.
"""

import torch
from torch import nn
from transformers import LlamaForCausalLM

GROUP_SIZE = 128
EPS = 1e-5
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ternary_fake_quant(weight, group_size=GROUP_SIZE, eps=EPS):
    """Per group: absmean scale, round to the nearest integer, clip to [-1, 1], scale back (in float32)."""
    w = weight.float().reshape(weight.shape[0], -1, group_size)
    scale = w.abs().mean(dim=-1, keepdim=True).clamp(min=eps)
    quantized = (torch.clamp(torch.round(w / scale), -1, 1) * scale).reshape(weight.shape)
    return quantized.to(weight.dtype) + (weight - weight.detach())  # straight-through estimator


class TernaryLinear(nn.Linear):
    """nn.Linear whose weight is ternary fake-quantized in every forward."""

    def forward(self, x):
        return nn.functional.linear(x, ternary_fake_quant(self.weight).to(x.dtype), self.bias)


class BitCPMForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with TernaryLinear projections; embeddings, norms and lm_head stay full precision."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            for block in (layer.self_attn, layer.mlp):
                for name in PROJECTIONS:
                    if isinstance(getattr(block, name, None), nn.Linear):
                        getattr(block, name).__class__ = TernaryLinear
