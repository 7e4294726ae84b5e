"""The noise floor: the reference at full precision against the reference at the engine's dtype, on the same tokens.

Whatever a correct implementation at the engine's precision differs from the full-precision reference is
what the engine may differ too. Every engine metric is computed twice on exactly the tokens the engine saw:
engine vs reference@``reference_dtype`` (fp32), and reference@engine-dtype vs reference@fp32 (the floor).

Memory stays bounded by one segment: the low-precision reference runs first and keeps only its logits in its
own dtype; then the full-precision reference scores each segment, and the statistics are accumulated row
chunk by row chunk.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from npuport.compare.statistics import KldAccumulator

log = logging.getLogger(__name__)

ROW_CHUNK = 128  # positions per statistics chunk (float64 [rows, vocab])
CDF_POINTS = 101  # quantiles kept of each per-position KLD distribution, for the report's CDF plot


class Reference:
    """The reference model (transformers) that scores token sequences, at one dtype."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ):
        from transformers import AutoModelForCausalLM

        self.dtype = dtype
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **extra
        ).eval()
        self.attn_implementation = self.model.config._attn_implementation

    @torch.no_grad()
    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits at every position of ``token_ids``, in the model's dtype."""
        return self.model(torch.tensor([list(token_ids)])).logits[0]

    def logprobs(self, token_ids: Sequence[int]) -> torch.Tensor:
        """log_softmax (float32) of the next-token logits at every position."""
        return torch.log_softmax(self.logits(token_ids).float(), dim=-1)

    def close(self) -> None:
        del self.model
        gc.collect()


# KV-cache dtypes the reference can compute at (vLLM's names): mantissa bits, smallest normal exponent, largest value;
# scale 1 (vLLM's default k_scale / v_scale for a checkpoint without calibrated scales)
KV_CACHE_DTYPES = {"fp8": (3, -6, 448.0), "fp8_e4m3": (3, -6, 448.0), "fp8_e5m2": (2, -14, 57344.0)}
# How a platform rounds into the KV cache: the vLLM CPU backend truncates toward zero (csrc/cpu/cpu_attn_fp8.hpp keeps
# the top mantissa bits); CUDA and NPU conversions round to nearest even
KV_ROUNDING = {"cpu": "toward zero", None: "to nearest even"}


def kv_round(x: torch.Tensor, kv_cache_dtype: str, rounding: str) -> torch.Tensor:
    """``x`` stored in ``kv_cache_dtype`` and read back (saturating at its largest value), rounded as ``rounding``."""
    mantissa, min_exponent, largest = KV_CACHE_DTYPES[kv_cache_dtype]
    value = x.float().clamp(-largest, largest)
    magnitude = value.abs()
    _, exponent = torch.frexp(magnitude.clamp_min(2.0**min_exponent))
    step = torch.exp2((exponent - 1 - mantissa).float())  # the grid's spacing at this magnitude (subnormals: fixed)
    scaled = magnitude / step
    kept = torch.floor(scaled) if rounding == KV_ROUNDING["cpu"] else torch.round(scaled)
    return torch.copysign(kept * step, value).clamp(-largest, largest).to(x.dtype)


def kv_cache_attention(kv_cache_dtype: str, rounding: str) -> str:
    """The name of a transformers attention implementation that computes as an engine with ``kv_cache_dtype`` does:
    sdpa on keys and values stored in that dtype and read back (registered once in transformers' AttentionInterface)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    name = f"npuport_kv_cache_{kv_cache_dtype}_{rounding.replace(' ', '_')}"

    def attention(module, query, key, value, attention_mask, **kwargs):
        key, value = kv_round(key, kv_cache_dtype, rounding), kv_round(value, kv_cache_dtype, rounding)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    return name


def engine_dtype(settings_dtype: str, config: dict) -> str:
    """The dtype the engine computed in: its setting, or with "auto" the checkpoint's own (vLLM's rule): config.json's
    ``dtype`` (transformers >= 4.56 writes it), else the ``torch_dtype`` older versions wrote (dtype wins where both
    are present, as in transformers)."""
    if settings_dtype != "auto":
        return settings_dtype
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def accumulate_segment(
    accumulators: dict[str, KldAccumulator],
    *,
    base: torch.Tensor,
    others: dict[str, torch.Tensor],
    targets: Sequence[int],
) -> None:
    """Add one segment to each side's accumulator: ``base`` (full-precision logprobs, positions x vocab) against
    each of ``others`` (logits in their own dtype), position i predicting ``targets[i]``."""
    rows = len(targets)
    positions = np.arange(rows)
    target = torch.tensor(list(targets))
    for start in range(0, rows, ROW_CHUNK):
        end = min(start + ROW_CHUNK, rows)
        for side, logits in others.items():
            accumulators[side].add(
                base[start:end], _logprobs(logits[start:end]), target[start:end], positions[start:end]
            )


def kld_quantiles(accumulator: KldAccumulator) -> list[float]:
    """The per-position KLD distribution as CDF_POINTS quantiles (0 %, 1 %, ..., 100 %)."""
    values = accumulator.values()["kld"]
    return [float(q) for q in np.quantile(values, np.linspace(0, 1, CDF_POINTS))] if len(values) else []


def low_precision_logits(reference: Reference, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The reference at the engine's dtype on every sequence: its logits (own dtype), positions 0..n-2."""
    return [reference.logits(ids)[:-1].clone() for ids in sequences]


def evaluate_segments(
    full: Reference,
    segments: Sequence[Sequence[int]],
    *,
    low_logits: Sequence[torch.Tensor],
    engine_logits: Callable[[int], torch.Tensor],
    also: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, KldAccumulator]:
    """Accumulators "engine" and "floor" over every segment, each scored teacher-forced from its first token:
    the full-precision reference is the base, against the engine's logits (``engine_logits(i)`` loads
    segment i's) and the reference's own at the engine's dtype (``low_logits``). ``also(i, base, engine)``, when
    given, gets each segment's full-precision logprobs and the engine's logits too (positions 0..n-2), so that
    other sides are scored on the same reference pass."""
    accumulators = {"engine": KldAccumulator(), "floor": KldAccumulator()}
    for index, ids in enumerate(segments):
        engine = engine_logits(index)
        if engine.shape[0] != len(ids):
            raise ValueError(f"segment {index}: engine logits for {engine.shape[0]} positions, segment has {len(ids)}")
        base = full.logprobs(ids)[:-1]
        accumulate_segment(accumulators, base=base, others={"engine": engine[:-1], "floor": low_logits[index]},
                           targets=ids[1:])  # fmt: skip
        if also is not None:
            also(index, base, engine[:-1])
        log.info("evaluation segment %d/%d scored (%d positions)", index + 1, len(segments), len(ids) - 1)
    return accumulators
