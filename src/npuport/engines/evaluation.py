"""The evaluation text as the engine and the reference both score it: segments, RoPE switch point, capture file.

The text's tokens are cut into segments of at most ``segment_tokens`` (and at most ``max_model_len``), each
starting with the model's bos token when it has one, and scored teacher-forced: the logits at position i
predict token i + 1. When the model's RoPE switches at a position inside a segment (LongRoPE's
``original_max_position_embeddings``, or any scaling with a factor), every segment is made long enough to
cross it, so that positions before and after the switch can be compared apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Scalings whose frequencies change at original_max_position_embeddings (linear scaling applies everywhere).
SWITCHING_ROPE = ("longrope", "su", "yarn", "dynamic", "llama3")
# Positions scored after the switch in each segment, at least (when max_model_len allows).
MIN_AFTER_SWITCH = 256


@dataclass(frozen=True)
class RopeSwitch:
    """Where the model's rotary embedding changes, or why there is no switch to look at."""

    position: int | None
    rope_type: str | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rope_switch(config: Mapping[str, Any], max_model_len: int) -> RopeSwitch:
    """The switch point of ``config``'s RoPE scaling when it lies inside ``max_model_len``."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, Mapping) else None
    if rope_type not in SWITCHING_ROPE:
        return RopeSwitch(None, rope_type, f"rope scaling {rope_type or 'none'}: no switch point")
    original = scaling.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    if not isinstance(original, int) or original <= 0:
        return RopeSwitch(None, rope_type, f"{rope_type} without original_max_position_embeddings")
    if original >= max_model_len:
        return RopeSwitch(None, rope_type, f"switch at {original} is not below engine.max_model_len {max_model_len}")
    return RopeSwitch(original, rope_type, f"rope_scaling.original_max_position_embeddings ({rope_type})")


def segment_length(segment_tokens: int, max_model_len: int, switch: RopeSwitch) -> int:
    """Tokens per segment: the configured length, stretched to cross the switch point, capped by the engine
    (one position short of max_model_len: the capture request generates one token)."""
    length = segment_tokens
    if switch.position is not None:
        length = max(length, switch.position + MIN_AFTER_SWITCH)
    return min(length, max_model_len - 1)  # each segment is a request that also generates one token


def plan_segments(token_ids: list[int], *, length: int, bos: int | None, max_tokens: int) -> list[list[int]]:
    """Consecutive segments of the text (its own leading bos removed), each led by ``bos`` when given, at most
    ``max_tokens`` text tokens in all. A trailing piece shorter than half a segment is dropped."""
    text = token_ids[1:] if bos is not None and token_ids[:1] == [bos] else list(token_ids)
    text = text[:max_tokens]
    step = length - (bos is not None)
    segments = []
    for start in range(0, len(text), step):
        piece = text[start : start + step]
        if len(piece) < max(2, step // 2) and segments:
            break
        segments.append(([bos] if bos is not None else []) + piece)
    return segments
