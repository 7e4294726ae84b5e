"""The ternary quantizer of the BitCPM family and the checks that a tensor is ternary.

Per group g of a linear weight (contiguous runs of ``group_size`` input features in each
output row): s = max(mean|W_g|, eps), W_q = clamp(round(W_g / s), -1, 1) * s.
Training uses it with a straight-through estimator; fusion applies the same function once.

This is BitNet b1.58's absmean RoundClip (Ma et al. 2024, arXiv:2402.17764, eqs. 1-3; the scale floored at eps as
in its released training code) over groups of input channels, 128 for BitCPM-CANN. ``torch.round`` rounds half to
even: W_g / s = +-0.5 gives 0. tests/test_ternary.py pins it to hand-computed vectors.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-5

# The seven projections per decoder layer that the family quantizes; nothing else is.
QUANTIZED_PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def is_quantized_linear(tensor_name: str) -> bool:
    """True for the weight of one of the seven quantized projections of a decoder layer."""
    return tensor_name.endswith(".weight") and any(f".{p}.weight" in tensor_name for p in QUANTIZED_PROJECTIONS)


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = weight.shape
    if group_size <= 0:
        group_size = cols
    if cols % group_size:
        raise ValueError(f"in_features {cols} is not a multiple of group_size {group_size}")
    return weight.reshape(rows, cols // group_size, group_size)


def fake_quant(weight: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """Ternary fake-quantization of a 2-D weight, computed in float32, returned in float32.

    ``group_size`` <= 0 means one group per output row.
    """
    w = _grouped(weight.float(), group_size)
    scale = w.abs().mean(dim=-1, keepdim=True).clamp(min=eps)
    return (torch.clamp(torch.round(w / scale), -1, 1) * scale).reshape(weight.shape)


def fake_quant_ste(weight: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """fake_quant with a straight-through gradient (identity), for QAT.

    Written as q + (w - w.detach()) so the forward value is exactly q in any dtype.
    """
    return fake_quant(weight, group_size, eps).to(weight.dtype) + (weight - weight.detach())


# Per float dtype: the same-width integer view, the mask that clears the sign bit, and the smallest magnitude
# that is inf or NaN. On these bit patterns |w| == a is an exact integer comparison without a float32 copy.
_MAGNITUDE_BITS = {
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
    torch.float16: (torch.int16, 0x7FFF, 0x7C00),
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
}


def check_scratch(weight: torch.Tensor, values: int) -> torch.Tensor | None:
    """A ``scratch`` buffer for groups_are_ternary on blocks of ``weight`` of up to ``values`` values."""
    spec = _MAGNITUDE_BITS.get(weight.dtype)
    return None if spec is None else torch.empty(values, dtype=spec[0])


def groups_are_ternary(weight: torch.Tensor, group_size: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per group: True when its values are a subset of {-a, 0, +a} for one finite a >= 0.

    Returns a bool tensor of shape (rows, groups). ``scratch`` (from check_scratch) is used instead of a new
    temporary; a caller checking many blocks passes the same one (benchmarks/ternary_check.py: 1.2-3.7 -> 6.5
    GB/s in memory, since a fresh block-sized temporary per call costs page faults, more or fewer by the
    allocator's history).
    """
    spec = _MAGNITUDE_BITS.get(weight.dtype)
    if spec is None:
        w = _grouped(weight.float(), group_size)
        a = w.abs().amax(dim=-1, keepdim=True)
        return ((w == 0) | (w == a) | (w == -a)).all(dim=-1) & a[..., 0].isfinite()
    int_dtype, sign_off, non_finite = spec
    bits = weight.contiguous().view(int_dtype)
    out = None if scratch is None else scratch[: bits.numel()].view(bits.shape)
    magnitude = _grouped(torch.bitwise_and(bits, sign_off, out=out), group_size)
    # Two reductions instead of element-wise compares (measured 4x faster): the largest magnitude, and the
    # smallest non-zero one, found as the minimum of (magnitude - 1) with 0 wrapped to the largest value.
    # The non-zero magnitudes of a group are all equal exactly when the smallest is the largest.
    top = magnitude.amax(dim=-1)
    smallest_minus_one = magnitude.sub_(1).bitwise_and_(sign_off).amin(dim=-1)
    return ((smallest_minus_one == top - 1) | (top == 0)) & (top < non_finite)


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` >= 1, largest first, in O(sqrt(n)) steps."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)}, reverse=True)


def candidate_group_sizes(in_features: int) -> list[int]:
    """Divisors of ``in_features`` that are plausible group sizes, largest first."""
    if in_features < 1:
        return []
    return [g for g in divisors(in_features) if g == in_features or g % 8 == 0]


def detect_group_size(weight: torch.Tensor) -> int | None:
    """The largest group size for which every group of ``weight`` is ternary, or None.

    ``weight`` may be a sample of rows. A return equal to in_features means per-row scales. Ternary under a
    group size means ternary under each of its divisors, so the smallest candidate is tried first: a latent
    tensor costs one pass, not one per candidate.
    """
    candidates = candidate_group_sizes(weight.shape[1])
    if not candidates or not bool(groups_are_ternary(weight, candidates[-1]).all()):
        return None
    for g in candidates:
        if bool(groups_are_ternary(weight, g).all()):
            return g
    return None
