"""Prove a fusion against the checkpoint's own QAT forward: the same tokens through both, equal logits.

A ternary QAT checkpoint ships the forward it was trained with (its auto_map modeling code: the linears
fake-quantized on the fly). The fused model must compute the same function with plain linears. With
trust_remote_code the check loads the checkpoint through that code (transformers AutoModelForCausalLM,
trust_remote_code=True, the repaired config plus the checkpoint's own auto_map) and the fused plain model, both
in the dtype the fused linears were written in, runs both on the same tokens and compares the logits. Without
trust_remote_code the code is never run and the check says so.

Tolerance: ULPS units of the dtype's epsilon at the largest logit magnitude. Where the QAT forward computes
fake_quant in float32 and casts to the compute dtype, as the fused weights were, the two are the same numbers
and the difference is 0; a different quantizer (another scale rule, another rounding) moves logits by far more.
"""

from __future__ import annotations

import copy
import gc
import logging
from pathlib import Path

import torch

from npuport.core.errors import NpuportError
from npuport.weights.introspect import read_config
from npuport.weights.qat_evidence import declaration_keys, qat_of

log = logging.getLogger(__name__)

ULPS = 4
TOKENS = 48
SEED = 0


def _not_run(reason: str) -> dict:
    return {"status": "not run", "reason": reason}


def bundled_model_class(config: dict) -> str | None:
    """The checkpoint's own model class named by config.json's auto_map (``module.Class``), or None."""
    auto_map = config.get("auto_map")
    reference = auto_map.get("AutoModelForCausalLM") if isinstance(auto_map, dict) else None
    reference = reference[0] if isinstance(reference, list) and reference else reference
    return reference if isinstance(reference, str) and "--" not in reference and "." in reference else None


def qat_config(config: dict, original: dict, qat: dict) -> dict:
    """The repaired ``config`` as the checkpoint's own code reads it: its auto_map, architectures and ternary QAT
    declarations back from the downloaded config.json."""
    restored = copy.deepcopy(config)
    for key in ("auto_map", "architectures", *declaration_keys(qat)):
        if key in original:
            restored[key] = copy.deepcopy(original[key])
    return restored


def qat_forward_check(
    download_dir: str | Path,
    introspection: dict,
    fused_dir: str | Path,
    repaired_config: dict,
    *,
    quantized: int,
    dtype: str | None,
    trust_remote_code: bool,
    fused_trust_remote_code: bool = False,
) -> dict:
    """fuse.json ``qat_forward_check``: status passed | failed | not run, with the measurement or the reason."""
    original = read_config(Path(download_dir)) or {}
    model_class = bundled_model_class(original)
    if not quantized:
        return _not_run("nothing was fake-quantized: there is no fusion to check")
    if model_class is None:
        return _not_run(
            "the checkpoint ships no model code of its own (config.json auto_map names no AutoModelForCausalLM)"
        )
    module = model_class.rsplit(".", 1)[0] + ".py"
    if not trust_remote_code:
        return _not_run(
            f"trust_remote_code is false: the checkpoint's own QAT forward ({module}, named by auto_map) is Python "
            "shipped with the checkpoint and is never run unless the model's entry sets trust_remote_code: true"
        )
    torch_dtype = getattr(torch, dtype or "float32")
    config = qat_config(repaired_config, original, qat_of(introspection))
    ids = token_ids(int(repaired_config["vocab_size"]))
    reference = _logits(download_dir, ids, torch_dtype, config=config, trust_remote_code=True)
    fused = _logits(fused_dir, ids, torch_dtype, trust_remote_code=fused_trust_remote_code)
    result = compare_logits(reference, fused, torch_dtype)
    document = {"status": "passed" if result["equal_within_tolerance"] else "failed", "model_class": model_class}
    document |= {"dtype": str(torch_dtype).removeprefix("torch."), "tokens": ids.shape[1], "seed": SEED} | result
    verb = "differ from" if document["status"] == "failed" else "are within tolerance of"
    verb = "equal" if result["identical"] else verb
    document["reason"] = (
        f"the fused model's {document['dtype']} logits on {ids.shape[1]} tokens {verb} the checkpoint's own QAT "
        f"forward ({model_class}): max |difference| {result['max_abs_logit_diff']:.4g}, tolerance "
        f"{result['tolerance']:.4g}"
    )
    if document["status"] == "failed":
        log.warning("%s", document["reason"])
    return document


def token_ids(vocab_size: int, tokens: int = TOKENS, seed: int = SEED) -> torch.Tensor:
    """The same pseudo-random token ids for both models (shape (1, tokens))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, tokens), generator=generator)


def compare_logits(reference: torch.Tensor, fused: torch.Tensor, dtype: torch.dtype) -> dict:
    """Max |difference| against ULPS x the dtype's epsilon at the largest reference logit."""
    diff = float((reference.float() - fused.float()).abs().max())
    magnitude = float(reference.float().abs().max())
    tolerance = ULPS * torch.finfo(dtype).eps * max(1.0, magnitude)
    return {
        "max_abs_logit_diff": diff,
        "max_abs_logit": magnitude,
        "tolerance": tolerance,
        "tolerance_rule": f"{ULPS} x eps({str(dtype).removeprefix('torch.')}) x max(1, max |logit|)",
        "identical": diff == 0.0,
        "equal_within_tolerance": diff <= tolerance,
        "same_argmax_positions": int((reference.argmax(-1) == fused.argmax(-1)).sum()),
    }


@torch.no_grad()
def _logits(
    directory: str | Path, ids: torch.Tensor, dtype: torch.dtype, *, config: dict | None = None, trust_remote_code: bool
) -> torch.Tensor:
    """Logits of the model in ``directory`` (with ``config`` instead of its config.json when given), in float32.
    The model is freed before returning: the two models of a check are never in memory together."""
    from transformers import AutoModelForCausalLM

    from npuport.weights.repair_config import repaired_view

    def load(path):
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - remote code and loaders fail in many ways
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problem = f"does not load for the QAT forward check: {type(exc).__name__}: {first}"
            raise NpuportError(directory, problem) from None

    if config is None:
        model = load(directory)
    else:
        with repaired_view(directory, config, trust_remote_code) as view:
            model = load(view)
    logits = model.eval()(input_ids=ids).logits.float()
    del model
    gc.collect()
    return logits
