"""Fuse latent ternary-QAT weights into plain weights and write a Hugging Face model directory.

Streams one tensor at a time into safetensors shards of at most ``max_shard_size`` bytes
(plus ``model.safetensors.index.json``) with npuport.weights.shard_writer, so memory stays near a few tensors. A tensor
whose output bytes are its source bytes (same dtype, no fold, not quantized) is checked in place through a
read-only map of the source file and copied file to file in the kernel, on a writer thread that overlaps the
next tensor's check.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from npuport.core.atomic import atomic_dir, write_json
from npuport.core.errors import NpuportError
from npuport.core.paths import SKIP_DIRS, source_files
from npuport.download.manifest import MANIFEST_NAME
from npuport.weights.checkpoint import Checkpoint
from npuport.weights.introspect import read_config
from npuport.weights.minicpm import Fold, FoldPlan, fold_decision, fold_plan, llama_config, model_code_files
from npuport.weights.qat_evidence import DEFAULT_GROUP_SIZE, NO_EVIDENCE, qat_of
from npuport.weights.qat_proof import qat_forward_check
from npuport.weights.repair_config import plain_config
from npuport.weights.shard_writer import INDEX_NAME as INDEX_NAME  # re-exported: callers import it from here
from npuport.weights.shard_writer import BackgroundWriter, PlannedTensor, StreamingShardWriter
from npuport.weights.ternary import (
    check_scratch,
    detect_group_size,
    fake_quant,
    groups_are_ternary,
    is_quantized_linear,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Slack on top of the checkpoint size required free before writing (index, config, tokenizer).
_FREE_SPACE_MARGIN = 1.05
_CHECK_BLOCK_BYTES = 1 << 20  # L2-sized: measured 2-3x faster than whole-tensor passes


def ternary_group_size(weight: torch.Tensor, sample_rows: int = 8) -> int | None:
    """Group size at which every value of ``weight`` is ternary, or None for latent weights.

    A cheap look at the first rows rejects latent tensors before the full check, which runs over blocks of rows
    small enough for the check's temporaries to stay in cache (groups never span rows, so the result is the same).
    """
    with one_torch_thread():
        group = detect_group_size(weight[:sample_rows])
        if group is None:
            return None
        step = max(1, _CHECK_BLOCK_BYTES // max(1, weight.shape[1] * weight.element_size()))
        blocks = range(0, weight.shape[0], step)
        scratch = check_scratch(weight, step * weight.shape[1])
        if all(bool(groups_are_ternary(weight[i : i + step], group, scratch).all()) for i in blocks):
            return group
    return detect_group_size(weight)


@contextlib.contextmanager
def one_torch_thread():
    """The sample and the blocks of the check are too small to share between threads: on a busy host the threads
    of each small op wait for one another (measured 2-3x slower with 2 threads on 2 shared cores). Another core
    copies bytes meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def should_quantize(mode: str, already_ternary: bool, evidence: bool = True) -> bool:
    """The fuse decision for one linear: always, never, or (auto) latent weights of a checkpoint with ternary QAT
    evidence (npuport.weights.qat_evidence)."""
    return mode == "always" or (mode == "auto" and evidence and not already_ternary)


def _kept(mode: str, found: int | None, evidence: bool) -> str:
    if found is not None:
        return "kept (already ternary)"
    return "kept (no ternary QAT evidence)" if mode == "auto" and not evidence else "kept (mode never)"


def _output_dtype(tensor: torch.Tensor, dtype: str) -> torch.dtype:
    return tensor.dtype if dtype == "keep" else getattr(torch, dtype)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


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


def copy_side_files(download_dir: Path, staging: Path, leave_out: set[str] = frozenset()) -> list[str]:
    """Copy tokenizer, generation config and other non-weight files (not config.json, nor the relative paths in
    ``leave_out``) into the model dir. Every file is read through npuport.core.paths.source_files: one that
    resolves outside ``download_dir`` (a symlink to /etc/shadow), a FIFO or a device is refused, never copied."""
    copied = []
    for rel, real in source_files(download_dir, skip_dirs=SKIP_DIRS):
        name = rel.rsplit("/", 1)[-1]
        is_weight = name.endswith(_WEIGHT_SUFFIXES) or name in _WEIGHT_INDEXES
        # .snakemake_timestamp marks a directory output's age for Snakemake; it is not part of the model
        skip = name in ("config.json", MANIFEST_NAME) or name.startswith(".snakemake") or rel in leave_out
        if not is_weight and not skip:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, staging / rel)
            copied.append(rel)
    return copied


def _finish(tensor: torch.Tensor, fold: Fold | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Cast to the output dtype. A MiniCPM fold (npuport.weights.minicpm) is applied first, in at least float32, so the
    value is rounded to the output dtype once.

    Order: the fold comes after fake-quantization. The trained model quantized the latent weights and scaled
    the branch output at run time, so fake_quant(W) * c is what it computed; scaling first would quantize
    c * W instead (the same only up to rounding at the .5 boundaries and the eps floor of the group scale).
    A ternary group times a constant is still ternary, and the ternary check below sees the folded values."""
    if fold is not None:
        tensor = fold(tensor.to(torch.promote_types(tensor.dtype, torch.float32)))
    return tensor.to(out_dtype)


_UNCHECKED = object()


def fuse_tensor(
    name: str,
    tensor: torch.Tensor,
    *,
    mode: str,
    group_size: int,
    dtype: str,
    fold: Fold | None = None,
    found: int | None | object = _UNCHECKED,
    evidence: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Fuse one tensor (then apply ``fold``, a MiniCPM scale, if given); returns the output tensor and its
    record for fuse.json. ``found``: ternary_group_size(tensor) when the caller has computed it already.
    ``evidence``: the checkpoint is a ternary QAT checkpoint (mode auto fake-quantizes latent linears only then)."""
    out_dtype = _output_dtype(tensor, dtype)
    if not is_quantized_linear(name):
        return _finish(tensor, fold, out_dtype), {"name": name, "action": "copied"}
    if found is _UNCHECKED:
        found = ternary_group_size(tensor)
    if should_quantize(mode, found is not None, evidence):
        result = _finish(fake_quant(tensor, group_size), fold, out_dtype)
        action, check_group = "quantized", group_size
    else:
        result = _finish(tensor, fold, out_dtype)
        action, check_group = _kept(mode, found, evidence), found
    # ternary_group_size has checked every value of ``tensor`` already: an unchanged result needs no second pass.
    ternary = check_group is not None and (result is tensor or bool(groups_are_ternary(result, check_group).all()))
    if action == "quantized" and not ternary:
        raise NpuportError(name, "fused tensor is not ternary after quantization (dtype too narrow for the scales?)")
    return result, {"name": name, "action": action, "ternary": ternary, "group_size": check_group}


def _planned_dtype(source_dtype: str, dtype: str) -> torch.dtype:
    return getattr(torch, source_dtype if dtype == "keep" else dtype)


def _outputs(checkpoint: Checkpoint, plan: FoldPlan | None) -> dict[str, list[tuple[str, Fold | None]]]:
    """Per source tensor (sorted; dropped ones absent): the output tensors written from it, in write order."""
    outputs = {}
    for name in sorted(checkpoint.tensors):
        if plan is None:
            outputs[name] = [(name, None)]
        elif not plan.drops(name):
            outputs[name] = [(name, plan.transform(name)), *plan.derived(name)]
    return outputs


class _SourceFiles:
    """Read-only maps and descriptors of the checkpoint's files: tensors are checked where they lie (no read
    copy) and copied file to file. Pages of a checked tensor are dropped from the map at once, so the mapping
    never adds more than the tensor being checked to the resident set."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.fds: dict[str, int] = {}
        self.maps: dict[str, mmap.mmap] = {}

    def __enter__(self) -> _SourceFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        for m in self.maps.values():
            m.close()
        for fd in self.fds.values():
            os.close(fd)

    def path(self, name: str) -> Path:
        return self.checkpoint.directory / self.checkpoint.tensors[name].file

    def fd(self, name: str) -> int:
        file = self.checkpoint.tensors[name].file
        if file not in self.fds:
            self.fds[file] = os.open(self.path(name), os.O_RDONLY)
        return self.fds[file]

    def view(self, name: str) -> torch.Tensor | None:
        """``name`` as a tensor over the mapped file, or None when its bytes are not at a known offset."""
        info, offset = self.checkpoint.tensors[name], self.checkpoint.file_offset(name)
        if offset is None or info.nbytes == 0:
            return None
        if info.file not in self.maps:
            self.maps[info.file] = mmap.mmap(self.fd(name), 0, access=mmap.ACCESS_READ)
        dtype = getattr(torch, info.dtype)
        with warnings.catch_warnings():  # the map is read-only; nothing writes through this tensor
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(self.maps[info.file], dtype=dtype, count=info.nbytes // dtype.itemsize,
                                    offset=offset)  # fmt: skip
        return flat.reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop ``name``'s pages from this process's map (the page cache keeps them)."""
        info, offset = self.checkpoint.tensors[name], self.checkpoint.file_offset(name)
        if info.file in self.maps and offset is not None and info.nbytes:
            start = offset - offset % mmap.PAGESIZE
            self.maps[info.file].madvise(mmap.MADV_DONTNEED, start, offset + info.nbytes - start)


def _fuse_source_tensor(
    checkpoint: Checkpoint,
    source: _SourceFiles,
    writer: BackgroundWriter,
    name: str,
    *,
    outputs: list[tuple[str, Fold | None]],
    plan: FoldPlan | None,
    mode: str,
    group_size: int,
    dtype: str,
    evidence: bool,
) -> tuple[list[dict], int]:
    """Write the outputs of source tensor ``name``; return their fuse.json records and how many were copied.

    An output whose bytes are the source's (no fold, same dtype, not quantized) is copied from the file after
    its ternary check on the mapped values; anything else is loaded and computed as fuse_tensor does."""
    view = source.view(name)
    found: int | None | object = _UNCHECKED
    if view is not None and is_quantized_linear(name):
        found = ternary_group_size(view)  # every value: the same check fuse_tensor makes on the loaded tensor
    del view
    source.release(name)
    records, loaded, copied = [], None, 0
    source_dtype, offset = getattr(torch, checkpoint.tensors[name].dtype), checkpoint.file_offset(name)
    for out_name, fold in outputs:
        out_dtype = _planned_dtype(checkpoint.tensors[name].dtype, dtype)
        linear = is_quantized_linear(out_name)
        unchanged = fold is None and out_dtype == source_dtype and offset is not None
        if linear:
            unchanged = unchanged and found is not _UNCHECKED and not should_quantize(mode, found is not None, evidence)
        if unchanged:
            writer.copy(out_name, source.path(name), source.fd(name), offset)
            copied += 1
            record = {"name": out_name, "action": "copied"}
            if linear:
                action = _kept(mode, found, evidence)
                record = {"name": out_name, "action": action, "ternary": found is not None, "group_size": found}
            nbytes = checkpoint.tensors[name].nbytes
        else:
            loaded = checkpoint.load(name) if loaded is None else loaded
            tensor, record = fuse_tensor(
                out_name, loaded, mode=mode, group_size=group_size, dtype=dtype, fold=fold, found=found,
                evidence=evidence,
            )  # fmt: skip
            writer.write(out_name, tensor)
            out_dtype, nbytes = tensor.dtype, _tensor_bytes(tensor)
        if plan is not None:
            record |= {"minicpm_factor": plan.factor(out_name)}
            record |= {"derived_from": name} if out_name != name else {}
        records.append(record | {"dtype": str(out_dtype).removeprefix("torch."), "bytes": nbytes})
    return records, copied


def _write_weights(
    checkpoint: Checkpoint,
    staging: Path,
    *,
    plan: FoldPlan | None,
    mode: str,
    group_size: int,
    dtype: str,
    max_shard_size: int,
    evidence: bool,
) -> tuple[list[dict], dict, int]:
    """Stream every output tensor into the shards; return the fuse.json records, the index and how many tensors
    were copied byte for byte from the source file."""
    outputs = _outputs(checkpoint, plan)
    planned = [PlannedTensor(o, checkpoint.tensors[n].shape, _planned_dtype(checkpoint.tensors[n].dtype, dtype))
               for n, outs in outputs.items() for o, _ in outs]  # fmt: skip
    records, byte_copied = [], 0
    with _SourceFiles(checkpoint) as source:  # closed only after the writer thread has stopped
        writer = BackgroundWriter(StreamingShardWriter(staging, planned, max_shard_size))
        try:
            for name in tqdm(sorted(checkpoint.tensors), desc="fuse", unit="tensor"):
                if name not in outputs:
                    dropped = f"dropped (tied to {plan.embed}; the head is derived from it)"
                    records.append({"name": name, "action": dropped})
                    continue
                written, copied = _fuse_source_tensor(
                    checkpoint, source, writer, name,
                    outputs=outputs[name], plan=plan, mode=mode, group_size=group_size, dtype=dtype,
                    evidence=evidence,
                )  # fmt: skip
                records += written
                byte_copied += copied
            index = writer.finish()
        finally:
            writer.close()
    return records, index, byte_copied


def check_group_size(
    checkpoint: Checkpoint, *, mode: str, group_size: int, introspection: dict, fusing: bool | None = None
) -> None:
    """NpuportError before writing when a linear that will be fake-quantized has in_features that ``group_size``
    does not divide (<= 0: one group per row, always fits). Nothing is checked when nothing will be fake-quantized
    (``fusing`` False; None: decided from ``mode`` and the introspection as fuse decides)."""
    if fusing is None:
        fusing = plan_fusion(mode, group_size, introspection).fusing
    if group_size <= 0 or not fusing:
        return
    for name, info in sorted(checkpoint.tensors.items()):
        if is_quantized_linear(name) and len(info.shape) == 2 and info.shape[1] % group_size:
            raise NpuportError(
                checkpoint.directory / info.file,
                f"tensor {name} has {info.shape[1]} input features, not a multiple of fuse.group_size {group_size}",
            )


@dataclass(frozen=True)
class FusionPlan:
    """What fuse does with the quantized linears, and why (fuse.json: fused, decision, group_size*, ternary_*)."""

    mode: str
    fusing: bool  # latent linears are fake-quantized (mode always: every linear)
    evidence: bool  # the checkpoint is a ternary QAT checkpoint (npuport.weights.qat_evidence)
    group_size: int
    group_size_source: str  # evidence | config | default
    group_size_detail: str
    decision: str
    ternary_expected: bool  # the output's linears must be ternary (a fusion ran, or they were ternary already)
    ternary_expected_reason: str


def resolve_group_size(configured: int | None, qat: dict, *, needed: bool) -> tuple[int, str, str]:
    """(group size, source, detail): the one the evidence names (a configured value must agree with every size the
    evidence names: one-line NpuportError naming both otherwise), else the configured one, else DEFAULT_GROUP_SIZE.
    Evidence naming two sizes with none configured is an error only when the size is ``needed`` (something will be
    fake-quantized)."""
    named = [(n["group_size"], n["where"]) for n in qat.get("group_sizes_named") or []] if qat.get("found") else []
    if configured is not None:
        contradicting = [(size, where) for size, where in named if size != configured]
        if contradicting:
            size = contradicting[0][0]
            where = "; ".join(w for s, w in contradicting if s == size)
            raise NpuportError(
                "fuse.group_size", f"configured {configured} contradicts the checkpoint's group size {size} ({where})"
            )
        if named:
            return configured, "evidence", "; ".join(w for _, w in named) + "; fuse.group_size agrees"
        return configured, "config", "fuse.group_size"
    sizes = sorted({size for size, _ in named})
    if len(sizes) == 1:
        return sizes[0], "evidence", "; ".join(w for _, w in named)
    if len(sizes) > 1 and needed:
        where = "; ".join(f"{s}: {w}" for s, w in named)
        raise NpuportError("fuse.group_size", f"the checkpoint's evidence names different group sizes ({where})")
    detail = (
        f"nothing names one (not the QAT evidence, not fuse.group_size): {DEFAULT_GROUP_SIZE}, the family's published "
        "group size (BitCPM-CANN: ternary per 128 input channels)"
    )
    return DEFAULT_GROUP_SIZE, "default", detail


def plan_fusion(mode: str, group_size: int | None, introspection: dict) -> FusionPlan:
    """Decide from the mode, the introspected ternary status and the QAT evidence (see npuport.weights.qat_evidence).

    auto: linears already ternary -> format only; latent (or mixed) linears with ternary QAT evidence -> the latent
    ones are fake-quantized; without evidence -> nothing is (an ordinary model is never ternarized). always forces
    fusion, never forbids it."""
    status = introspection["derived"]["ternary"]["status"]
    qat = qat_of(introspection)
    evidence = bool(qat.get("found"))
    applicable = status != "not applicable"
    fusing = applicable and (mode == "always" or (mode == "auto" and evidence and status != "ternary"))
    size, source, detail = resolve_group_size(group_size, qat, needed=fusing)
    sized = f"group size {size}, from the {source}"
    because = qat.get("summary") or NO_EVIDENCE
    if not applicable:
        decision = f"fuse mode '{mode}': no quantized projection in the checkpoint, nothing to fuse"
    elif mode == "never":
        decision = "fuse mode 'never': weights converted to safetensors unchanged"
    elif mode == "always":
        decision = f"fuse mode 'always': every quantized linear fake-quantized ({sized}); {because}"
    elif status == "ternary":
        decision = "fuse mode 'auto': introspection found the linears already ternary, so only the format is converted"
    elif evidence:
        decision = (
            f"fuse mode 'auto': {because}; introspection found the linears {status}, so latent linears are "
            f"fake-quantized ({sized})"
        )
    else:
        decision = (
            f"fuse mode 'auto': {NO_EVIDENCE.replace(' (', ': not fused (', 1)}; the linears are {status} and are "
            "converted unchanged"
        )
    if fusing:
        expected, reason = True, f"{'every' if mode == 'always' else 'every latent'} linear was fake-quantized"
    elif status == "ternary":
        expected, reason = True, "introspection found the linears already ternary"
    elif not applicable:
        expected, reason = False, "no quantized projection in the checkpoint"
    elif mode == "never":
        expected, reason = False, f"fuse mode 'never': the {status} linears were left as they are"
    else:
        expected, reason = False, f"not fused: {NO_EVIDENCE}, so the {status} linears need not be ternary"
    return FusionPlan(mode, fusing, evidence, size, source, detail, decision, expected, reason)


def decision(mode: str, introspection: dict, group_size: int | None = None) -> str:
    """Why fusion does what it does, in one sentence for fuse.json and the report."""
    return plan_fusion(mode, group_size, introspection).decision


def _output_code_files(download_dir: Path, config: dict) -> list[str]:
    """The checkpoint's own model/config modules that nothing loads from the output (its config.json no longer
    names them in auto_map: a fold, or a ternary QAT forward replaced by the fused plain model)."""
    original = read_config(download_dir) or {}
    return sorted(model_code_files(original) - model_code_files(config))


def fuse(
    download_dir: str | Path,
    config: dict,
    introspection: dict,
    target: str | Path,
    *,
    mode: str = "auto",
    group_size: int | None = None,
    max_shard_size: int = 2 * 10**9,
    dtype: str = "keep",
    minicpm: str = "auto",
    trust_remote_code: bool = False,
) -> dict:
    """Write the fused model directory ``target`` (atomically) and return its fuse.json document.

    ``group_size`` None: from the QAT evidence, else DEFAULT_GROUP_SIZE (a configured value contradicting the
    evidence is an error). ``minicpm`` (auto | fold | never): fold MiniCPM's scales into the weights
    (npuport.weights.minicpm). ``trust_remote_code``: run the checkpoint's own QAT forward (its auto_map modeling
    code) and the fused model on the same tokens and record whether the logits agree (fuse.json:
    qat_forward_check); without it that check is recorded as not run.

    A plain model (no ternary QAT evidence) under mode auto comes out with every tensor value-identical (byte for
    byte when the dtype is kept) and decision "... not fused ..."."""
    download_dir, target, repaired = Path(download_dir), Path(target), config
    fusion = plan_fusion(mode, group_size, introspection)
    with Checkpoint.open(download_dir) as checkpoint, atomic_dir(target) as staging, _disk_full_is_user_error(target):
        check_group_size(
            checkpoint, mode=mode, group_size=fusion.group_size, introspection=introspection, fusing=fusion.fusing
        )
        needed = sum(t.nbytes for t in checkpoint.tensors.values())
        # --- MiniCPM hook (npuport.weights.minicpm): scales folded per tensor; a tied head is derived from the
        # embedding as it streams past, so the untie costs one extra tensor, never the whole model.
        plan = fold_plan(minicpm, config, introspection, checkpoint.tensors)
        if plan is not None and plan.tied:
            needed += checkpoint.tensors[plan.embed].nbytes
        check_free_space(target, needed)
        config = llama_config(config) if plan is not None else config
        # --- end MiniCPM hook
        # The fused model is plain: no ternary QAT declaration, no auto_map to the QAT forward (repair_config has
        # dropped them already; again here for a caller that fuses an unrepaired config).
        config, _ = plain_config(config, qat_of(introspection))
        # the output's config no longer loads them (fold, or QAT forward replaced): dead files, left out
        left_out = _output_code_files(download_dir, config)
        # The tokenizer was checked against this config by repair_config (npuport.weights.tokenizer_check), before fuse.
        write_json(staging / "config.json", config)
        side_files = copy_side_files(download_dir, staging, set(left_out))
        records, index, byte_copied = _write_weights(
            checkpoint, staging, plan=plan, mode=mode, group_size=fusion.group_size, dtype=dtype,
            max_shard_size=max_shard_size, evidence=fusion.evidence,
        )  # fmt: skip
        linears = [r for r in records if "ternary" in r]
        quantized = sum(r["action"] == "quantized" for r in records)
        qat_check = qat_forward_check(
            download_dir, introspection, staging, repaired,
            quantized=quantized, dtype=_linear_dtype(records), trust_remote_code=trust_remote_code,
            fused_trust_remote_code=trust_remote_code and "auto_map" in config,
        )  # fmt: skip
        document = {
            "mode": mode,
            "fused": fusion.fusing,
            "group_size": fusion.group_size,
            "group_size_source": fusion.group_size_source,
            "group_size_detail": fusion.group_size_detail,
            "max_shard_size": max_shard_size,
            "decision": fusion.decision,
            "qat_evidence": {k: v for k, v in qat_of(introspection).items() if k != "looked_at"},
            "ternary_expected": fusion.ternary_expected,
            "ternary_expected_reason": fusion.ternary_expected_reason,
            "source_format": checkpoint.format,
            "tensors_quantized": quantized,
            "tensors_byte_copied": byte_copied,
            "linears_checked": len(linears),
            "linears_ternary": sum(r["ternary"] for r in linears),
            "all_linears_ternary": all(r["ternary"] for r in linears) if linears else None,
            "qat_forward_check": qat_check,
            "total_bytes": index["metadata"]["total_size"],
            "shards": sorted(set(index["weight_map"].values())),
            "side_files": side_files,
            "side_files_left_out": left_out,
            "minicpm": {"mode": minicpm, "folded": plan is not None, "decision": fold_decision(minicpm, plan, config)}
            | (plan.describe() if plan is not None else {}),
            "tensors": records,
        }
        write_json(staging / "fuse.json", document)
    return document


def _linear_dtype(records: list[dict]) -> str | None:
    """The dtype the quantized linears were written in (the dtype the QAT forward check computes in)."""
    return next((r["dtype"] for r in records if "ternary" in r), None)
