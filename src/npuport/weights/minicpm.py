"""MiniCPM-architecture checkpoints: detect them, and fold their three scales into the weights.

MiniCPM (openbmb MiniCPM-1B/2B, MiniCPM4, BitCPM4, BitCPM-CANN-0.5B/8B) is a Llama decoder plus three
constant scales, read from config.json. Checked against:

- openbmb's remote code ``modeling_minicpm.py`` (MiniCPM-2B/1B and MiniCPM4 share this part):
  ``MiniCPMModel.forward``: ``inputs_embeds = self.embed_tokens(input_ids) * self.config.scale_emb``;
  ``MiniCPMDecoderLayer.forward``: ``hidden_states = residual + hidden_states * (self.scale_depth /
  math.sqrt(self.num_hidden_layers))`` after self-attention and again after the MLP;
  ``MiniCPMForCausalLM.forward``: ``logits = self.lm_head(hidden_states / (self.config.hidden_size /
  self.config.dim_model_base))`` -- applied whether or not the head is tied (muP width scaling; MiniCPM4
  keeps ``dim_model_base``), and ``_tied_weights_keys = ["lm_head.weight"]`` with MiniCPMConfig's
  ``tie_word_embeddings=True`` default (MiniCPM-1B/2B ship no lm_head tensor; MiniCPM4-8B ships its own).
- vLLM's native ``vllm/model_executor/models/minicpm.py``: ``embed_input_ids`` multiplies by
  ``config.scale_emb``; ``MiniCPMDecoderLayer.forward`` scales both branches by ``scale_depth /
  sqrt(num_hidden_layers)``; ``MiniCPMForCausalLM.forward`` divides the hidden states by ``scale_width =
  hidden_size / dim_model_base``; ``lm_head.tie_weights(embed_tokens)`` when ``tie_word_embeddings``.
- transformers' native port (``models/minicpm4``, newer than the installed 5.19): ``MiniCPM4ScaledWordEmbedding``
  with ``embed_scale=config.scale_emb``; ``residual_scale = config.scale_depth / math.sqrt(num_hidden_layers)``
  on both branches; ``outputs.last_hidden_state / self.config.logits_scaling`` with ``logits_scaling =
  hidden_size / dim_model_base``; ``MiniCPM4Config.tie_word_embeddings = True``; ``sparse_config`` (InfLLM-v2)
  refused there: dense attention only, as in vLLM's native MiniCPM and in the folded Llama.
- OpenBMB's own MiniCPM -> Llama converter (CPM.cu ``scripts/model_convert/minicpm2llama.py``) does the same
  fold: embed_tokens x scale_emb, lm_head / (hidden_size / dim_model_base), o_proj and down_proj x
  scale_depth / sqrt(num_layers).

The fold is exact algebra: x * c fed to a linear layer is the layer with its weight times c, and a residual
branch ending in o_proj (down_proj) times c is o_proj (down_proj) with weight and bias times c. The result is a
plain LlamaForCausalLM (untied: the head and the embedding now differ by scale_emb * hidden/dim_model_base).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from npuport.core.errors import NpuportError

MINICPM_ARCHITECTURES = ("MiniCPMForCausalLM", "MiniCPM4ForCausalLM")
MINICPM_MODEL_TYPES = ("minicpm", "minicpm4")
SCALE_KEYS = ("scale_emb", "scale_depth", "dim_model_base")
# Keys that only MiniCPM's remote code reads; the Llama config drops them.
MINICPM_ONLY_KEYS = ("auto_map", *SCALE_KEYS)
EMBED_SUFFIX = "embed_tokens.weight"
LM_HEAD = "lm_head.weight"
RESIDUAL_OUTPUTS = ("self_attn.o_proj", "mlp.down_proj")
FOLD_MODES = ("auto", "fold", "never")

Fold = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MiniCPMScales:
    scale_emb: float
    scale_depth: float
    dim_model_base: float
    hidden_size: int
    num_hidden_layers: int

    @property
    def residual_scale(self) -> float:
        """What each attention and MLP branch is multiplied by before the residual add."""
        return self.scale_depth / math.sqrt(self.num_hidden_layers)

    @property
    def logit_divisor(self) -> float:
        """What the final hidden states are divided by before the head (muP width scaling)."""
        return self.hidden_size / self.dim_model_base

    def as_dict(self) -> dict:
        return {
            "scale_emb": self.scale_emb,
            "scale_depth": self.scale_depth,
            "dim_model_base": self.dim_model_base,
            "residual_scale": self.residual_scale,
            "logit_divisor": self.logit_divisor,
        }


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def detect_family(config: dict, tensor_names: Iterable[str] = ()) -> dict:
    """{"family": "llama" | "minicpm", "source": why, "scales": {...} | None, "problems": [...]}.

    The family comes from config.json (architectures, model_type, the scale keys): the weights of a MiniCPM
    checkpoint have Llama's names and shapes, so they cannot tell the scales. The tensor names still rule
    out layouts that no Llama can hold (MiniCPM-MoE experts). ``problems`` lists what blocks a fold; a missing
    scale is one (its default lives in the checkpoint's own configuration code, which is never run here).
    """
    architectures = config.get("architectures")
    architectures = architectures if isinstance(architectures, list) else []
    markers = [f"architectures {a}" for a in architectures if isinstance(a, str) and a in MINICPM_ARCHITECTURES]
    if config.get("model_type") in MINICPM_MODEL_TYPES:
        markers.append(f"model_type {config['model_type']}")
    present = [k for k in SCALE_KEYS if config.get(k) is not None]
    if not markers and not present:
        return {"family": "llama", "source": "config.json has no MiniCPM architecture or scales", "scales": None,
                "problems": []}  # fmt: skip
    problems = [f"config.json {k} is {config.get(k)!r}, not a positive number" for k in SCALE_KEYS
                if not _number(config.get(k))]  # fmt: skip
    if config.get("num_experts"):
        problems.append(f"config.json num_experts {config['num_experts']}: MiniCPM-MoE has no Llama equivalent")
    experts = sorted({n.split(".experts.")[0] for n in tensor_names if ".experts." in n})
    if experts and not config.get("num_experts"):
        problems.append(f"expert tensors under {experts[0]}: MiniCPM-MoE has no Llama equivalent")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"config.json hidden_act {config['hidden_act']!r}: Llama's MLP is SiLU-gated")
    found = ", ".join(f"{k} {config[k]}" for k in present) or "no scales"
    return {
        "family": "minicpm",
        "source": f"config.json {', '.join(markers) or 'scale keys'}; {found}",
        "scales": {k: config.get(k) for k in SCALE_KEYS},
        "problems": problems,
    }


def scales_from_config(config: dict, tensor_names: Iterable[str] = ()) -> MiniCPMScales:
    """The scales of a (repaired) MiniCPM config; NpuportError naming what is missing or wrong."""
    family = detect_family(config, tensor_names)
    if family["family"] != "minicpm":
        raise NpuportError("config.json", "no MiniCPM scales (scale_emb, scale_depth, dim_model_base) to fold")
    if family["problems"]:
        problems = "; ".join(family["problems"])
        raise NpuportError("config.json", f"cannot fold MiniCPM into Llama: {problems} (fuse.minicpm: never keeps it)")
    for key in ("hidden_size", "num_hidden_layers"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise NpuportError("config.json", f"{key} {config.get(key)!r} is not a positive integer")
    return MiniCPMScales(
        float(config["scale_emb"]),
        float(config["scale_depth"]),
        float(config["dim_model_base"]),
        config["hidden_size"],
        config["num_hidden_layers"],
    )


def llama_config(config: dict) -> dict:
    """The config of the folded model: a plain untied LlamaForCausalLM, everything else kept."""
    folded = {k: v for k, v in config.items() if k not in MINICPM_ONLY_KEYS}
    folded.update(architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=False)
    return folded


def model_code_files(config: dict) -> set[str]:
    """The checkpoint's own Python files that config.json's auto_map loads for the config and the model.

    After the fold nothing loads them (the folded config has no auto_map); tokenizer code is not among them."""
    files = set()
    auto_map = config.get("auto_map")
    for auto_class, reference in (auto_map if isinstance(auto_map, dict) else {}).items():
        references = reference if isinstance(reference, list) else [reference]
        for ref in references:
            if auto_class != "AutoTokenizer" and isinstance(ref, str) and "--" not in ref and "." in ref:
                files.add(ref.rsplit(".", 1)[0] + ".py")  # "module.Class" (transformers splits at the one dot)
    return files


def is_residual_output(name: str) -> bool:
    """Weight or bias of a layer whose output is a residual branch: o_proj and down_proj."""
    return any(name.endswith((f".{m}.weight", f".{m}.bias")) for m in RESIDUAL_OUTPUTS)


def _times(factor: float) -> Fold:
    return lambda tensor: tensor * factor


def _divided_by(divisor: float) -> Fold:
    # a division, not a multiplication by 1/divisor: one rounding, as the brief and OpenBMB's converter do
    return lambda tensor: tensor / divisor


class FoldPlan:
    """Per tensor name: the transform its values get, whether it is dropped, what is derived from it.

    Tied checkpoints: the head is derived from the embedding when the embedding streams past (a stored
    ``lm_head.weight`` that merely aliases it is dropped), so the fold never holds more than that one tensor.
    """

    def __init__(self, scales: MiniCPMScales, config: dict, tensor_names: Iterable[str]):
        names = set(tensor_names)
        self.notes = []
        if config.get("sparse_config"):
            self.notes.append(
                "config.json sparse_config (InfLLM-v2 sparse attention for long inputs) has no Llama meaning: "
                "the folded model attends densely, as vLLM's native MiniCPM does"
            )
        embeds = sorted(n for n in names if n.endswith(EMBED_SUFFIX))
        if len(embeds) != 1:
            raise NpuportError("checkpoint", f"expected one *.{EMBED_SUFFIX} tensor to fold, found {embeds or 0}")
        self.scales = scales
        self.embed = embeds[0]
        # MiniCPM ties unless the config says otherwise (MiniCPMConfig default True); no head tensor: tied.
        self.tied = bool(config.get("tie_word_embeddings", True)) or LM_HEAD not in names

    def factor(self, name: str) -> float:
        """What ``name``'s values are multiplied by (1.0: unchanged)."""
        if name == self.embed:
            return self.scales.scale_emb
        if name == LM_HEAD:
            return 1.0 / self.scales.logit_divisor
        if is_residual_output(name):
            return self.scales.residual_scale
        return 1.0

    def transform(self, name: str) -> Fold | None:
        """The function applied to ``name``'s (float32) values, or None when they stay as they are."""
        if name == LM_HEAD:
            return _divided_by(self.scales.logit_divisor)
        factor = self.factor(name)
        return None if factor == 1.0 else _times(factor)

    def drops(self, name: str) -> bool:
        return self.tied and name == LM_HEAD

    def derived(self, name: str) -> list[tuple[str, Fold]]:
        """(new tensor name, transform) of tensors computed from ``name``'s original values."""
        if self.tied and name == self.embed:
            return [(LM_HEAD, _divided_by(self.scales.logit_divisor))]
        return []

    def describe(self) -> dict:
        return {
            "scales": self.scales.as_dict(),
            "factors": {
                self.embed: self.scales.scale_emb,
                LM_HEAD: 1.0 / self.scales.logit_divisor,
                "*.self_attn.o_proj.{weight,bias}, *.mlp.down_proj.{weight,bias}": self.scales.residual_scale,
            },
            "lm_head_source": f"{self.embed} (tied in the checkpoint; untied by the fold)" if self.tied else LM_HEAD,
            "notes": self.notes,
        }


def fold_plan(mode: str, config: dict, introspection: dict, tensor_names: Iterable[str]) -> FoldPlan | None:
    """The fold to apply for fuse setting ``mode`` (auto | fold | never), or None for no fold.

    auto folds when introspection found the MiniCPM family (older introspection documents without a
    family: the config decides). The scales come from ``config``, the repaired config, so that
    hidden_size and num_hidden_layers are the ones the weights have.
    """
    if mode not in FOLD_MODES:
        raise NpuportError("fuse.minicpm", f"{mode!r} is not one of {', '.join(FOLD_MODES)}")
    if mode == "never":
        return None
    tensor_names = list(tensor_names)
    family = introspection.get("derived", {}).get("family") or detect_family(config, tensor_names)["family"]
    if mode == "auto" and family != "minicpm":
        return None
    return FoldPlan(scales_from_config(config, tensor_names), config, tensor_names)


def fold_decision(mode: str, plan: FoldPlan | None, config: dict) -> str:
    """One sentence for fuse.json and the report."""
    if plan is not None:
        s = plan.scales
        return (
            f"fuse.minicpm '{mode}': MiniCPM scales folded into the weights (embed_tokens x {s.scale_emb:g}, "
            f"o_proj and down_proj x {s.scale_depth:g}/sqrt({s.num_hidden_layers}), lm_head / "
            f"({s.hidden_size}/{s.dim_model_base:g})); the model is a plain LlamaForCausalLM"
        )
    if detect_family(config)["family"] == "minicpm":
        return (
            f"fuse.minicpm '{mode}': MiniCPM scales left in config.json; loading needs MiniCPM code "
            "(vLLM's native MiniCPMForCausalLM, or the checkpoint's remote code with trust_remote_code)"
        )
    return f"fuse.minicpm '{mode}': not a MiniCPM checkpoint, nothing to fold"
