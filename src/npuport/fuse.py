"""Fuse latent ternary-QAT weights into plain weights and write a Hugging Face model directory.

Streams one tensor at a time into safetensors shards of at most ``max_shard_size`` bytes
(plus ``model.safetensors.index.json``), so memory stays near one shard plus one tensor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from npuport.atomic import atomic_dir, write_json
from npuport.checkpoint import Checkpoint
from npuport.errors import NpuportError
from npuport.manifest import MANIFEST_NAME
from npuport.minicpm import Fold, fold_decision, fold_plan, llama_config
from npuport.ternary import detect_group_size, fake_quant, groups_are_ternary, is_quantized_linear
from npuport.tokenizer_check import check_tokenizer

INDEX_NAME = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Slack on top of the checkpoint size required free before writing (index, config, tokenizer).
_FREE_SPACE_MARGIN = 1.05


def ternary_group_size(weight: torch.Tensor, sample_rows: int = 8) -> int | None:
    """Group size at which every value of ``weight`` is ternary, or None for latent weights.

    A cheap look at the first rows rejects latent tensors before the full check.
    """
    group = detect_group_size(weight[:sample_rows])
    if group is None:
        return None
    if bool(groups_are_ternary(weight, group).all()):
        return group
    return detect_group_size(weight)


def should_quantize(mode: str, already_ternary: bool) -> bool:
    """The fuse decision for one linear: always, never, or (auto) only latent weights."""
    return mode == "always" or (mode == "auto" and not already_ternary)


def _output_dtype(tensor: torch.Tensor, dtype: str) -> torch.dtype:
    return tensor.dtype if dtype == "keep" else getattr(torch, dtype)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ShardWriter:
    """Collect tensors into shards of at most ``max_bytes``; a tensor larger than that gets its own."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str], int]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = _tensor_bytes(tensor)
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        part = f".part-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.pending, self.directory / part, metadata={"format": "pt"})
        self.shards.append((part, list(self.pending), self.pending_bytes))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> dict:
        """Give shards their final Hugging Face names and write the index; return it."""
        self.flush()
        total = len(self.shards)
        weight_map, total_size = {}, 0
        for i, (part, names, size) in enumerate(self.shards, start=1):
            final = f"model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(self.directory / part, self.directory / final)
            weight_map.update({name: final for name in names})
            total_size += size
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(self.directory / INDEX_NAME, index)
        return index


def check_free_space(target: Path, needed: int) -> None:
    """NpuportError before writing when the target file system cannot hold ``needed`` bytes."""
    free = shutil.disk_usage(target.parent).free
    if free < needed * _FREE_SPACE_MARGIN:
        raise NpuportError(target, f"not enough free disk space: need about {needed} bytes, {free} free")


@contextlib.contextmanager
def _disk_full_is_user_error(target: Path):
    """ENOSPC while writing becomes a one-line error; atomic_dir has already removed the partial output."""
    try:
        yield
    except Exception as exc:  # safetensors reports ENOSPC as SafetensorError, not OSError
        if getattr(exc, "errno", None) != errno.ENOSPC and "(os error 28)" not in str(exc):
            raise
        raise NpuportError(target, "no space left on device while writing the fused model") from None


def copy_side_files(download_dir: Path, staging: Path) -> list[str]:
    """Copy tokenizer, generation config and other non-weight files (not config.json) into the model dir."""
    copied = []
    for path in sorted(download_dir.rglob("*")):
        rel = path.relative_to(download_dir).as_posix()
        is_weight = path.name.endswith(_WEIGHT_SUFFIXES) or path.name in _WEIGHT_INDEXES
        # .snakemake_timestamp marks a directory output's age for Snakemake; it is not part of the model
        skip = path.name in ("config.json", MANIFEST_NAME) or path.name.startswith(".snakemake")
        if path.is_file() and not is_weight and not skip:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / rel)
            copied.append(rel)
    return copied


def _finish(tensor: torch.Tensor, fold: Fold | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Cast to the output dtype. A MiniCPM fold (npuport.minicpm) is applied first, in at least float32, so the
    value is rounded to the output dtype once.

    Order: the fold comes after fake-quantization. The trained model quantized the latent weights and scaled
    the branch output at run time, so fake_quant(W) * c is what it computed; scaling first would quantize
    c * W instead (the same only up to rounding at the .5 boundaries and the eps floor of the group scale).
    A ternary group times a constant is still ternary, and the ternary check below sees the folded values."""
    if fold is not None:
        tensor = fold(tensor.to(torch.promote_types(tensor.dtype, torch.float32)))
    return tensor.to(out_dtype)


def fuse_tensor(
    name: str, tensor: torch.Tensor, mode: str, group_size: int, dtype: str, fold: Fold | None = None
) -> tuple[torch.Tensor, dict]:
    """Fuse one tensor (then apply ``fold``, a MiniCPM scale, if given); returns the output tensor and its
    record for fuse.json."""
    out_dtype = _output_dtype(tensor, dtype)
    if not is_quantized_linear(name):
        return _finish(tensor, fold, out_dtype), {"name": name, "action": "copied"}
    found = ternary_group_size(tensor)
    if should_quantize(mode, found is not None):
        result = _finish(fake_quant(tensor, group_size), fold, out_dtype)
        action, check_group = "quantized", group_size
    else:
        result = _finish(tensor, fold, out_dtype)
        action = "kept (already ternary)" if found is not None else "kept (mode never)"
        check_group = found
    # ternary_group_size has checked every value of ``tensor`` already: an unchanged result needs no second pass.
    ternary = check_group is not None and (result is tensor or bool(groups_are_ternary(result, check_group).all()))
    if action == "quantized" and not ternary:
        raise NpuportError(name, "fused tensor is not ternary after quantization (dtype too narrow for the scales?)")
    return result, {"name": name, "action": action, "ternary": ternary, "group_size": check_group}


def decision(mode: str, introspection: dict) -> str:
    """Why fusion does what it does, in one sentence for fuse.json and the report."""
    status = introspection["derived"]["ternary"]["status"]
    if mode == "never":
        return "fuse mode 'never': weights converted to safetensors unchanged"
    if mode == "always":
        return "fuse mode 'always': every quantized linear fake-quantized"
    if status == "ternary":
        return "fuse mode 'auto': introspection found the linears already ternary, so only the format is converted"
    return f"fuse mode 'auto': introspection found the linears {status}, so latent linears are fake-quantized"


def fuse(
    download_dir: str | Path,
    config: dict,
    introspection: dict,
    target: str | Path,
    mode: str = "auto",
    group_size: int = 128,
    max_shard_size: int = 2 * 10**9,
    dtype: str = "keep",
    trust_remote_code: bool = False,
    minicpm: str = "auto",
) -> dict:
    """Write the fused model directory ``target`` (atomically) and return its fuse.json document.

    ``minicpm`` (auto | fold | never): fold MiniCPM's scales into the weights (npuport.minicpm)."""
    download_dir, target = Path(download_dir), Path(target)
    records = []
    with Checkpoint.open(download_dir) as checkpoint, atomic_dir(target) as staging, _disk_full_is_user_error(target):
        needed = sum(t.nbytes for t in checkpoint.tensors.values())
        # --- MiniCPM hook (npuport.minicpm): scales folded per tensor; a tied head is derived from the
        # embedding as it streams past, so the untie costs one extra tensor, never the whole model.
        plan = fold_plan(minicpm, config, introspection, checkpoint.tensors)
        if plan is not None and plan.tied:
            needed += checkpoint.tensors[plan.embed].nbytes
        check_free_space(target, needed)
        writer = ShardWriter(staging, max_shard_size)
        for name in tqdm(sorted(checkpoint.tensors), desc="fuse", unit="tensor"):
            if plan is not None and plan.drops(name):
                records.append({"name": name, "action": f"dropped (tied to {plan.embed}; the head is derived from it)"})
                continue
            source = checkpoint.load(name)
            outputs = [(name, None)] if plan is None else [(name, plan.transform(name)), *plan.derived(name)]
            for out_name, fold in outputs:
                tensor, record = fuse_tensor(out_name, source, mode, group_size, dtype, fold)
                if plan is not None:
                    record |= {"minicpm_factor": plan.factor(out_name)}
                    record |= {"derived_from": name} if out_name != name else {}
                writer.add(out_name, tensor)
                record |= {"dtype": str(tensor.dtype).removeprefix("torch."), "bytes": _tensor_bytes(tensor)}
                records.append(record)
                del tensor
            del source
        index = writer.finish()
        config = llama_config(config) if plan is not None else config
        # --- end MiniCPM hook
        write_json(staging / "config.json", config)
        side_files = copy_side_files(download_dir, staging)
        tokenizer = check_tokenizer(staging, config["vocab_size"], trust_remote_code)
        linears = [r for r in records if "ternary" in r]
        document = {
            "mode": mode,
            "group_size": group_size,
            "max_shard_size": max_shard_size,
            "decision": decision(mode, introspection),
            "source_format": checkpoint.format,
            "tensors_quantized": sum(r["action"] == "quantized" for r in records),
            "linears_checked": len(linears),
            "linears_ternary": sum(r["ternary"] for r in linears),
            "all_linears_ternary": all(r["ternary"] for r in linears) if linears else None,
            "total_bytes": index["metadata"]["total_size"],
            "shards": sorted(set(index["weight_map"].values())),
            "side_files": side_files,
            "tokenizer": tokenizer,
            "minicpm": {"mode": minicpm, "folded": plan is not None, "decision": fold_decision(minicpm, plan, config)}
            | (plan.describe() if plan is not None else {}),
            "tensors": records,
        }
        write_json(staging / "fuse.json", document)
    return document
