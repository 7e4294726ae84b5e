"""Derive a Llama-style architecture from tensor names and shapes, and compare it with config.json.

Everything comes from checkpoint headers (see npuport.weights.checkpoint) except the ternary check, which reads a
bounded, seeded sample of rows of each quantized projection. Where the shapes do not decide a field, the
rule that did decide it is recorded in ``sources``; where nothing decides it, the field stays null and the
candidates are listed in ``ambiguities`` — never a silent guess.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

import torch

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError
from npuport.core.paths import regular_file
from npuport.weights.checkpoint import Checkpoint, TensorInfo
from npuport.weights.minicpm import detect_family
from npuport.weights.qat_evidence import find_evidence
from npuport.weights.ternary import detect_group_size, divisors, is_quantized_linear

QAT_SOURCE = (
    "quantizer modules among the tensor names; the auto_map modeling code read as text (ast, never run) for a "
    "function that rounds and clips to [-1, 1]; config.json quantization_config quant_method ternary|bitcpm, or a "
    "top-level ternary / ternary_qat / bitnet key"
)
DERIVED_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "dtype",
)

LAYER_RE = re.compile(r"(?P<prefix>(?:.+\.)?)layers\.(?P<index>[0-9]+)\.(?P<rest>.+)", re.DOTALL)
# config.json is a few kilobytes; a long rope factor list or chat template stays far below this.
MAX_CONFIG_BYTES = 16 << 20
PROJECTIONS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
# Parameter names that quantizer wrappers (LinearQuantizer, SteTernaryQuantizer, GPTQ/AWQ-style packs) add.
QUANTIZER_LEAVES = {
    "weight_scale",
    "weight_scales",
    "input_scale",
    "output_scale",
    "act_scale",
    "alpha",
    "clip",
    "clip_val",
    "clip_value",
    "zero_point",
    "weight_zero_point",
    "input_zero_point",
    "qweight",
    "qzeros",
    "scales",
    "g_idx",
    "step_size",
}


def introspect_checkpoint(directory: str | Path, sample_rows: int = 8, seed: int = 0) -> dict:
    """The JSON-ready introspection document of the checkpoint in ``directory`` (see DESIGN.md, stage introspect)."""
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise NpuportError("introspect.sample_rows", f"{sample_rows!r} is not a positive integer")
    directory = Path(directory)
    config, notes = _read_config(directory)
    with Checkpoint.open(directory) as ckpt:
        arch = _Derivation(ckpt, config)
        arch.run()
        arch.derived["ternary"] = check_ternary(ckpt, sample_rows, seed)
        arch.sources["ternary"] = (
            f"{sample_rows} seeded rows (seed {seed}) of each quantized projection, largest group size under which "
            "every sampled group is {-a, 0, +a}; the fuse stage checks every value"
        )
        # Positive evidence that this is a ternary QAT checkpoint (npuport.weights.qat_evidence): fuse.mode auto
        # fake-quantizes latent linears only with it.
        arch.set("qat", find_evidence(directory, config, ckpt.tensors), QAT_SOURCE)
        # --- MiniCPM hook (npuport.weights.minicpm): "llama" or "minicpm", with the scales a fold would use
        family = detect_family(config, ckpt.tensors)
        problems = f"; cannot be folded: {'; '.join(family['problems'])}" if family["problems"] else ""
        arch.set("family", family["family"], family["source"] + problems)
        arch.set("family_scales", family["scales"], "config.json scale_emb, scale_depth, dim_model_base")
        checkpoint = {"format": ckpt.format, "files": list(ckpt.files)}
    declared = {field: _declared(config, field) for field in DERIVED_FIELDS}
    order = [*DERIVED_FIELDS, "parameter_count", "total_bytes", "tensor_count", "quantizer_modules", "ternary", "qat"]
    order += ["family", "family_scales"]  # MiniCPM hook
    derived = {field: arch.derived[field] for field in order}
    document = {
        "checkpoint": checkpoint,
        "declared": declared,
        "derived": derived,
        "sources": {field: arch.sources[field] for field in order},
        "ambiguities": arch.ambiguities,
        "mismatches": _mismatches(declared, arch.derived),
    }
    if notes:
        document["notes"] = notes
    return document


def read_config(directory: Path, name: str = "config.json") -> dict | None:
    """config.json of a checkpoint directory (inside it, regular, within the JSON limits); None when absent."""
    path = directory / name
    if regular_file(directory, name, missing_ok=True) is None:
        return None
    config = read_json(path, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise NpuportError(path, f"holds a JSON {type(config).__name__}, not an object")
    return config


def _read_config(directory: Path) -> tuple[dict, list[str]]:
    config = read_config(directory)
    if config is None:
        return {}, ["no config.json in the checkpoint directory: every declared field is null"]
    return config, []


def _declared(config: dict, field: str):
    if field == "dtype":
        # transformers >= 4.56 writes dtype, earlier versions torch_dtype
        return config.get("dtype") or config.get("torch_dtype")
    return config.get(field)


def _mismatches(declared: dict, derived: dict) -> list[dict]:
    return [
        {"field": f, "declared": declared[f], "derived": derived[f]}
        for f in DERIVED_FIELDS
        if declared[f] is not None and derived.get(f) is not None and declared[f] != derived[f]
    ]


class _Derivation:
    """Derives the architecture fields of one checkpoint; fills ``derived``, ``sources`` and ``ambiguities``."""

    def __init__(self, ckpt: Checkpoint, config: dict):
        self.ckpt = ckpt
        self.config = config
        self.derived: dict = {}
        self.sources: dict[str, str] = {}
        self.ambiguities: list[dict] = []

    def set(self, field: str, value, source: str) -> None:
        self.derived[field] = value
        self.sources[field] = source

    def run(self) -> None:
        prefix, layers = self._layers()
        self._check_layers_alike(prefix, layers)
        embed = self._find_embedding(prefix)
        vocab, hidden = self._shape(embed, 2)
        self.set("vocab_size", vocab, f"{embed.name} rows")
        self.set("hidden_size", hidden, f"{embed.name} columns")
        self.set("num_hidden_layers", len(layers), f"{prefix}layers.N: N contiguous 0..{len(layers) - 1}")
        shapes = self._projection_shapes(prefix, hidden)
        self.set("intermediate_size", shapes["gate"][0], f"{prefix}layers.0.mlp.gate_proj.weight rows")
        self._heads(prefix, hidden, q_out=shapes["q"][0], kv_out=shapes["k"][0])
        self._tied(prefix, embed)
        self._biases(prefix, layers[0])
        self._totals()
        self.derived["quantizer_modules"] = quantizer_modules(self.ckpt.tensors)
        self.sources["quantizer_modules"] = "tensor names with a '*quant*' module or a quantizer parameter leaf"

    # -- layers -------------------------------------------------------------------------------------------

    def _layers(self) -> tuple[str, list[dict[str, TensorInfo]]]:
        """The decoder prefix and, per layer index 0..L-1, its tensors keyed by the name after ``layers.N.``."""
        by_prefix: dict[str, dict[int, dict[str, TensorInfo]]] = {}
        for name, info in self.ckpt.tensors.items():
            m = LAYER_RE.fullmatch(name)
            if m:
                index = self._layer_index(name, m["index"])
                by_prefix.setdefault(m["prefix"], {}).setdefault(index, {})[m["rest"]] = info
        q_key = f"{PROJECTIONS['q']}.weight"
        decoders = [p for p, layers in by_prefix.items() if any(q_key in t for t in layers.values())]
        if len(decoders) != 1:
            found = "none" if not decoders else ", ".join(f"{p}layers" for p in decoders[:5])
            raise NpuportError(
                self.ckpt.directory, f"expected one Llama-style decoder with layers.N.{q_key} tensors, found {found}"
            )
        prefix = decoders[0]
        indices = by_prefix[prefix]
        # n distinct indices are 0..n-1 exactly when none is missing below n: bounded by what is present.
        missing = [i for i in range(len(indices)) if i not in indices][:5]
        if missing:
            shown = ", ".join(f"{prefix}layers.{i}.*" for i in missing)
            raise NpuportError(
                self.ckpt.directory, f"layer(s) missing: no tensor {shown} (layers present up to {max(indices)})"
            )
        return prefix, [indices[i] for i in range(len(indices))]

    def _layer_index(self, name: str, digits: str) -> int:
        """The layer index of tensor ``name``: canonical decimal (``layers.01`` would merge with ``layers.1``),
        and no longer than the number of tensors allows (n tensors hold at most n layers)."""
        if len(digits) > 1 and digits[0] == "0":
            raise NpuportError(
                self._path(self.ckpt.tensors[name]),
                f"tensor {name}: layer index {digits!r} has a leading zero (it would merge with layer {int(digits)})",
            )
        if len(digits) > len(str(len(self.ckpt.tensors))):
            raise NpuportError(
                self._path(self.ckpt.tensors[name]),
                f"tensor {name}: layer index of {len(digits)} digits, but the checkpoint has only "
                f"{len(self.ckpt.tensors)} tensors",
            )
        return int(digits)

    def _check_layers_alike(self, prefix: str, layers: list[dict[str, TensorInfo]]) -> None:
        reference = layers[0]
        for index, layer in enumerate(layers[1:], start=1):
            for rest in sorted(set(reference) | set(layer)):
                name = f"{prefix}layers.{index}.{rest}"
                if rest not in layer:
                    raise NpuportError(self.ckpt.directory, f"tensor {name} missing (layer 0 has {rest})")
                info = layer[rest]
                if rest not in reference:
                    raise NpuportError(self._path(info), f"tensor {name} has no counterpart in layer 0")
                ref = reference[rest]
                if (info.shape, info.dtype) != (ref.shape, ref.dtype):
                    raise NpuportError(
                        self._path(info),
                        f"tensor {name} is {list(info.shape)} {info.dtype}, layer 0 has {list(ref.shape)} {ref.dtype}",
                    )
        for key in PROJECTIONS.values():
            if f"{key}.weight" not in reference:
                raise NpuportError(
                    self.ckpt.directory, f"not a Llama-style decoder: no tensor {prefix}layers.0.{key}.weight"
                )

    def _find_embedding(self, prefix: str) -> TensorInfo:
        name = f"{prefix}embed_tokens.weight"
        if name in self.ckpt.tensors:
            return self.ckpt.tensors[name]
        others = [n for n in self.ckpt.tensors if n.endswith("embed_tokens.weight")]
        if len(others) == 1:
            return self.ckpt.tensors[others[0]]
        raise NpuportError(self.ckpt.directory, f"no token embedding tensor {name}")

    def _projection_shapes(self, prefix: str, hidden: int) -> dict[str, tuple[int, ...]]:
        """Shapes of layer 0's projections, each checked against hidden size and its siblings."""
        t = {k: self.ckpt.tensors[f"{prefix}layers.0.{p}.weight"] for k, p in PROJECTIONS.items()}
        q_out, kv_out = self._shape(t["q"], 2)[0], self._shape(t["k"], 2)[0]
        inter = self._shape(t["gate"], 2)[0]
        expected = {
            "q": (q_out, hidden),
            "k": (kv_out, hidden),
            "v": (kv_out, hidden),
            "o": (hidden, q_out),
            "gate": (inter, hidden),
            "up": (inter, hidden),
            "down": (hidden, inter),
        }
        for key, shape in expected.items():
            if t[key].dtype.startswith("complex"):
                raise NpuportError(self._path(t[key]), f"tensor {t[key].name} is {t[key].dtype}, not a real dtype")
            if t[key].shape != shape:
                raise NpuportError(
                    self._path(t[key]),
                    f"tensor {t[key].name} is {list(t[key].shape)}, expected {list(shape)} from hidden size {hidden} "
                    f"({t['q'].name.rsplit('.', 3)[0]}: q out {q_out}, k out {kv_out}, gate out {inter})",
                )
        for name, info in self.ckpt.tensors.items():
            weight = self.ckpt.tensors.get(name.removesuffix(".bias") + ".weight")
            if name.endswith(".bias") and weight is not None and info.shape != weight.shape[:1]:
                raise NpuportError(
                    self._path(info), f"tensor {name} is {list(info.shape)}, expected [{weight.shape[0]}]"
                )
        return {k: v.shape for k, v in t.items()}

    # -- attention heads ----------------------------------------------------------------------------------

    def _heads(self, prefix: str, hidden: int, q_out: int, kv_out: int) -> None:
        layouts = head_layouts(q_out, kv_out)
        if not layouts:
            raise NpuportError(
                self.ckpt.directory,
                f"{prefix}layers.0.self_attn: q_proj out {q_out} and k_proj out {kv_out} admit no head layout "
                "(q heads must be a multiple of kv heads)",
            )
        shape_note = f"q_proj out {q_out} = heads x head_dim, k_proj out {kv_out} = kv_heads x head_dim"
        valid = {lay["head_dim"] for lay in layouts}
        evidence = [(rule, value) for rule, value in self._head_dim_evidence(hidden) if value is not None]
        consistent = [(rule, value) for rule, value in evidence if value in valid]
        rejected = [
            f"{rule} gives {value}, inconsistent with the shapes" for rule, value in evidence if value not in valid
        ]
        if not consistent:
            for field in ("num_attention_heads", "num_key_value_heads", "head_dim"):
                self.derived[field] = None
                self.sources[field] = "not derivable: " + "; ".join([shape_note, *rejected])
                self.ambiguities.append(
                    {
                        "field": field,
                        "candidates": layouts,
                        "reason": f"{shape_note}; no consistent config head_dim, rope factors or inv_freq tensor"
                        + (f" ({'; '.join(rejected)})" if rejected else ""),
                        "chosen": None,
                    }
                )
            return
        rule, head_dim = consistent[0]
        extra = "; ".join([f"also {r} gives {v}" for r, v in consistent[1:]] + rejected)
        source = f"{rule} gives {head_dim}, consistent with {shape_note}" + (f" ({extra})" if extra else "")
        self.set("head_dim", head_dim, source)
        self.set("num_attention_heads", q_out // head_dim, f"q_proj out {q_out} / head_dim {head_dim}")
        self.set("num_key_value_heads", kv_out // head_dim, f"k_proj out {kv_out} / head_dim {head_dim}")
        disagreeing = sorted({v for _, v in consistent if v != head_dim})
        if disagreeing:
            self.ambiguities.append(
                {
                    "field": "head_dim",
                    "candidates": [lay for lay in layouts if lay["head_dim"] in {head_dim, *disagreeing}],
                    "reason": f"rules disagree: {', '.join(f'{r} gives {v}' for r, v in consistent)}; first rule wins",
                    "chosen": head_dim,
                }
            )

    def _head_dim_evidence(self, hidden: int) -> list[tuple[str, int | None]]:
        """(rule, head_dim) in priority order; a rule that does not apply gives None."""
        cfg = self.config
        evidence: list[tuple[str, int | None]] = [("config.json head_dim", _positive_int(cfg.get("head_dim")))]
        heads, cfg_hidden = _positive_int(cfg.get("num_attention_heads")), _positive_int(cfg.get("hidden_size"))
        by_ratio = None
        if heads and cfg_hidden == hidden and hidden % heads == 0:
            by_ratio = hidden // heads
        evidence.append((f"config.json hidden_size / num_attention_heads ({cfg_hidden} / {heads})", by_ratio))
        rope = rope_factor_length(cfg)
        if rope is not None:
            key, length = rope
            partial = cfg.get("partial_rotary_factor") or 1.0
            dim = 2 * length / partial if isinstance(partial, int | float) and partial > 0 else None
            value = int(dim) if dim is not None and math.isfinite(dim) and dim == int(dim) else None
            evidence.append((f"config.json {key} length {length} = rotary dim / 2", value))
        inv_freq = next((i for n, i in self.ckpt.tensors.items() if n.endswith("rotary_emb.inv_freq")), None)
        if inv_freq is not None and len(inv_freq.shape) == 1:
            evidence.append(
                (f"tensor {inv_freq.name} length {inv_freq.shape[0]} = head_dim / 2", 2 * inv_freq.shape[0])
            )
        return evidence

    # -- embeddings, biases, totals ---------------------------------------------------------------------

    def _tied(self, prefix: str, embed: TensorInfo) -> None:
        names = [n for n in ("lm_head.weight", f"{prefix}lm_head.weight") if n in self.ckpt.tensors]
        lm_head = self.ckpt.tensors[names[0]] if names else None
        if lm_head is None:
            self.set("tie_word_embeddings", True, "no lm_head.weight: the output layer reuses the embedding")
            return
        if lm_head.shape != embed.shape:
            raise NpuportError(
                self._path(lm_head),
                f"tensor {lm_head.name} is {list(lm_head.shape)} but {embed.name} is {list(embed.shape)}",
            )
        if self.ckpt.shares_storage(lm_head.name, embed.name):
            self.set("tie_word_embeddings", True, f"{lm_head.name} is stored as the same bytes as {embed.name}")
        else:
            self.set("tie_word_embeddings", False, f"{lm_head.name} stored separately from {embed.name}")

    def _biases(self, prefix: str, layer0: dict[str, TensorInfo]) -> None:
        attn = [k for k in ("q", "k", "v", "o") if f"{PROJECTIONS[k]}.bias" in layer0]
        mlp = [k for k in ("gate", "up", "down") if f"{PROJECTIONS[k]}.bias" in layer0]
        self.set("attention_bias", bool(attn), f"{prefix}layers.0.self_attn bias tensors: {', '.join(attn) or 'none'}")
        self.set("mlp_bias", bool(mlp), f"{prefix}layers.0.mlp bias tensors: {', '.join(mlp) or 'none'}")

    def _totals(self) -> None:
        unique = self._unique_tensors()
        by_dtype = Counter()
        for info in unique:
            by_dtype[info.dtype] += info.nbytes
        self.set("dtype", by_dtype.most_common(1)[0][0], "dtype holding the most bytes")
        self.set("parameter_count", sum(math.prod(i.shape) for i in unique), "sum of numel, shared storage once")
        self.set("total_bytes", sum(i.nbytes for i in unique), "sum of tensor bytes, shared storage once")
        self.set("tensor_count", len(self.ckpt.tensors), "number of tensor names")

    def _unique_tensors(self) -> list[TensorInfo]:
        """All tensors, minus names that alias an earlier tensor's bytes (only tied embeddings, in practice)."""
        seen: set[tuple] = set()
        unique = []
        for name, info in self.ckpt.tensors.items():
            key = self.ckpt.storage_key(name)
            if key not in seen:
                seen.add(key)
                unique.append(info)
        return unique

    def _shape(self, info: TensorInfo, ndim: int) -> tuple[int, ...]:
        if len(info.shape) != ndim:
            raise NpuportError(self._path(info), f"tensor {info.name} is {list(info.shape)}, expected {ndim}-D")
        if 0 in info.shape:
            raise NpuportError(self._path(info), f"tensor {info.name} is {list(info.shape)}: a dimension of size 0")
        return info.shape

    def _path(self, info: TensorInfo) -> Path:
        return self.ckpt.directory / info.file


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def head_layouts(q_out: int, kv_out: int) -> list[dict[str, int]]:
    """Every (heads, kv_heads, head_dim) with an even head_dim that the shapes allow, largest head_dim first."""
    if q_out < 1 or kv_out < 1 or q_out % kv_out:
        return []
    g = math.gcd(q_out, kv_out)
    return [
        {"num_attention_heads": q_out // d, "num_key_value_heads": kv_out // d, "head_dim": d}
        for d in divisors(g)
        if d % 2 == 0
    ]


def rope_factor_length(config: dict) -> tuple[str, int] | None:
    """(config key, length) of a LongRoPE long/short factor list, from rope_scaling or rope_parameters."""
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if not isinstance(params, dict):
            continue
        # transformers 5 may nest rope parameters per attention type: {"full_attention": {...}}.
        candidates = [(key, params)] + [(f"{key}.{k}", v) for k, v in params.items() if isinstance(v, dict)]
        for where, p in candidates:
            for factor in ("long_factor", "short_factor"):
                if isinstance(p.get(factor), list) and p[factor]:
                    return f"{where}.{factor}", len(p[factor])
    return None


def quantizer_modules(tensors: dict[str, TensorInfo]) -> list[str]:
    """Module prefixes that look like quantizer wrappers; [] for a plain checkpoint."""
    modules = set()
    for name in tensors:
        parts = name.split(".")
        quant = next((i for i, p in enumerate(parts[:-1]) if "quant" in p.lower()), None)
        if quant is not None:
            modules.add(".".join(parts[: quant + 1]))
        elif parts[-1] in QUANTIZER_LEAVES:
            modules.add(".".join(parts[:-1]))
    return sorted(modules)


def sample_row_indices(n_rows: int, sample_rows: int, seed: int, name: str) -> list[int]:
    """``sample_rows`` distinct row indices (all rows if fewer), sorted; the same for the same name and seed."""
    if n_rows <= sample_rows:
        return list(range(n_rows))
    return sorted(random.Random(f"{seed}:{name}").sample(range(n_rows), sample_rows))


def check_ternary(ckpt: Checkpoint, sample_rows: int, seed: int) -> dict:
    """Sampled ternary check of every quantized projection.

    Per tensor the detected group size is the largest one under which all sampled groups are ternary.
    A tensor ternary under group size G is ternary under every divisor of G, so the checkpoint's group size
    is the gcd of the per-tensor sizes: the largest size under which every sampled group of every tensor
    is ternary. ``per_row`` is True when every tensor is ternary over whole rows (its size = in_features).
    """
    per_tensor: dict[str, dict] = {}
    values = 0
    # Samples are tiny: fanning each op out to threads costs more than it saves, and on a busy host the
    # thread pool's contention made this 30x slower. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, info in ckpt.tensors.items():
            if not is_quantized_linear(name) or len(info.shape) != 2:
                continue
            rows = sample_row_indices(info.shape[0], sample_rows, seed, name)
            group = detect_group_size(ckpt.load_rows(name, rows)) if rows else None
            per_tensor[name] = {"ternary": group is not None, "group_size": group, "rows_sampled": len(rows)}
            values += len(rows) * info.shape[1]
    finally:
        torch.set_num_threads(threads)
    ternary = [n for n, t in per_tensor.items() if t["ternary"]]
    if not per_tensor:
        status = "not applicable"
    elif len(ternary) == len(per_tensor):
        status = "ternary"
    else:
        status = "latent" if not ternary else "mixed"
    group_size = math.gcd(*(per_tensor[n]["group_size"] for n in ternary)) if status == "ternary" else None
    per_row = status == "ternary" and all(per_tensor[n]["group_size"] == ckpt.tensors[n].shape[1] for n in ternary)
    return {
        "status": status,
        "group_size": group_size,
        "per_row": per_row,
        "rows_sampled_per_tensor": sample_rows,
        "tensors_checked": len(per_tensor),
        "values_checked": values,
        "tensors": per_tensor,
    }
