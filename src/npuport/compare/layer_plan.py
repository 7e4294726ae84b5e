"""What the layer comparison looks at: its settings, the token sequences both sides run, the capture points.

Torch-free and small: the `smoke` stage imports it to capture the engine's side, the `layers` stage
(npuport.compare.layers) to compare it with the reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from npuport.core.settings import Settings

LAYER_FILE = "layers-{index:03d}.safetensors"  # in smoke's capture directory, beside segment-NNN (logits)
POINT = re.compile(r"^layers\.(\d+)(?:\.(self_attn|mlp))?$")
# The module each point hooks, as both transformers' and vLLM's Llama name it.
MODULES = {"embed": "model.embed_tokens", "norm": "model.norm", "logits": "lm_head (vLLM: compute_logits)"}
KINDS = {"embed": "embed", "norm": "norm", "logits": "logits"}
PART_KINDS = {"self_attn": "attention", "mlp": "mlp", None: "layer"}


@dataclass(frozen=True)
class LayersSettings(Settings):
    SECTION: ClassVar[str] = "layers"
    eval_tokens: int
    ratio: float
    epsilon: float
    gain_allowance: float
    dumps: bool


@dataclass(frozen=True)
class LayerSequence:
    """One token sequence both sides run teacher-forced, and where it comes from."""

    source: str  # "prompt 0", "evaluation segment 0 (first 256 tokens)"
    token_ids: list[int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> LayerSequence:
        return cls(str(record["source"]), [int(t) for t in record["token_ids"]])


def layer_sequences(
    prompts: Sequence[Mapping[str, Any]], segments: Sequence[Sequence[int]] | None, eval_tokens: int
) -> list[LayerSequence]:
    """Every prompt with the engine's output (smoke.json's prompt records), then the first ``eval_tokens``
    tokens of the evaluation segments (from the first on; a piece shorter than 2 tokens is left out)."""
    sequences = [
        LayerSequence(f"prompt {i}", [*record["prompt_token_ids"], *record["token_ids"]])
        for i, record in enumerate(prompts)
    ]
    left = eval_tokens
    for index, segment in enumerate(segments or []):
        piece = list(segment[:left])
        if len(piece) < 2:
            break
        cut = f" (first {len(piece)} tokens)" if len(piece) < len(segment) else ""
        sequences.append(LayerSequence(f"evaluation segment {index}{cut}", piece))
        left -= len(piece)
    return sequences


def point_kind(point: str) -> tuple[str, int | None]:
    """(kind, layer) of a capture point: embed, attention, mlp, layer, norm or logits."""
    match = POINT.match(point)
    if match:
        return PART_KINDS[match[2]], int(match[1])
    if point not in KINDS:
        raise ValueError(f"unknown capture point {point!r}")
    return KINDS[point], None


def point_module(point: str) -> str:
    """The module a point hooks, as the report names it (``model.layers.3.mlp``)."""
    return MODULES.get(point) or f"model.{point}"


def depth(point: str) -> tuple[int, int]:
    """Sort key: embedding, then per layer its attention, MLP and output, then final norm and logits."""
    if point == "embed":
        return (-1, 0)
    match = POINT.match(point)
    if match:
        return (int(match[1]), {"self_attn": 0, "mlp": 1, None: 2}[match[2]])
    return (10**9, 0 if point == "norm" else 1)
