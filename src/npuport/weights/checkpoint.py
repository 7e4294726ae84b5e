"""Read tensor names, shapes and dtypes of a checkpoint from its headers; load single tensors or rows.

Formats: ``model.safetensors``, ``model.safetensors.index.json`` (sharded), ``pytorch_model.bin`` and
``pytorch_model.bin.index.json`` (sharded). Safetensors headers are parsed and validated here (the data is
never read until asked for); ``.bin`` files go through ``torch.load(mmap=True, weights_only=True)``, which
maps the data instead of reading it and refuses any pickle that would import or call code.
Every bad input raises NpuportError naming the file and the problem.
"""

from __future__ import annotations

import pickle
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from npuport.core import untrusted_json
from npuport.core.errors import NpuportError
from npuport.core.paths import readable, regular_file, source_dir

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# The safetensors library refuses headers above 100 MB; so do we, before allocating anything.
MAX_HEADER_BYTES = 100_000_000
# Most dimensions a tensor may have (real checkpoints use at most 5; torch's kernels handle up to 25).
MAX_RANK = 16

SAFETENSORS_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "U16": torch.uint16,
    "I16": torch.int16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


_SUPPORTED_DTYPES = frozenset(SAFETENSORS_DTYPES.values())


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "bfloat16"
    nbytes: int
    file: str  # file name relative to the checkpoint directory


@dataclass(frozen=True)
class _SafetensorsEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    end: int


def _numel(shape: tuple[int, ...], cap: int | None = None) -> int:
    """Number of elements; with ``cap``, any product above it is returned as cap + 1 (no huge multiplications)."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if cap is not None and n > cap:
            return cap + 1
    return n


def read_safetensors_header(path: Path) -> dict[str, _SafetensorsEntry]:
    """Parse and validate a safetensors header without reading tensor data (the safetensors library's rules:
    header of at most 100 MB, each tensor's bytes exactly its shape x dtype, the tensors' byte ranges tiling
    the data with no overlap and no byte left over)."""
    size = _file_size(path)
    if size < 8:
        raise NpuportError(path, f"truncated safetensors file: {size} bytes, not even the 8-byte header length")
    with readable(path) as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise NpuportError(path, f"truncated safetensors file: header length {header_len} beyond file size {size}")
        if header_len > MAX_HEADER_BYTES:
            raise NpuportError(path, f"safetensors header of {header_len} bytes exceeds the {MAX_HEADER_BYTES} limit")
        raw = f.read(header_len)
    header = untrusted_json.loads(raw, source=path, what="safetensors header")
    if not isinstance(header, dict):
        raise NpuportError(path, f"safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise NpuportError(path, "safetensors __metadata__ is not an object of strings")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries = {
        name: _parse_entry(path, name, entry, data_start=data_start, data_size=data_size)
        for name, entry in header.items()
        if name != "__metadata__"
    }
    _check_tiling(path, entries, data_start=data_start, data_size=data_size)
    return entries


def _check_tiling(path: Path, entries: dict[str, _SafetensorsEntry], *, data_start: int, data_size: int) -> None:
    """The tensors' byte ranges, in order, must cover the data exactly: no overlap, no gap, nothing after."""
    covered, previous = data_start, None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start < covered:
            raise NpuportError(
                path,
                f"tensor {name!r}: data_offsets {_offsets(entry, data_start)} overlap tensor {previous!r} "
                f"(bytes up to {covered - data_start})",
            )
        if entry.start > covered:
            gap = f"{covered - data_start}..{entry.start - data_start}"
            raise NpuportError(path, f"data bytes {gap} belong to no tensor (before {name!r})")
        covered, previous = entry.end, name
    if covered != data_start + data_size:
        left, after = data_start + data_size - covered, covered - data_start
        raise NpuportError(path, f"the last {left} data bytes (after offset {after}) belong to no tensor")


def _offsets(entry: _SafetensorsEntry, data_start: int) -> list[int]:
    return [entry.start - data_start, entry.end - data_start]


def _parse_entry(path: Path, name: str, entry: object, *, data_start: int, data_size: int) -> _SafetensorsEntry:
    if not isinstance(entry, dict):
        raise NpuportError(path, f"tensor {name!r}: header entry is not an object")
    declared = entry.get("dtype")
    dtype = SAFETENSORS_DTYPES.get(declared) if isinstance(declared, str) else None
    if dtype is None:
        raise NpuportError(path, f"tensor {name!r}: unsupported dtype {declared!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise NpuportError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise NpuportError(path, f"tensor {name!r}: shape has {len(shape)} dimensions (at most {MAX_RANK})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise NpuportError(path, f"tensor {name!r}: data_offsets {offsets!r} is not a pair of non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise NpuportError(path, f"tensor {name!r}: data_offsets {offsets} out of range of the {data_size} data bytes")
    numel = _numel(tuple(shape), cap=data_size)  # above data_size: capped, the span cannot match anyway
    expected = numel * dtype.itemsize
    if end - begin != expected:
        needs = f"more than the {data_size} data bytes" if numel > data_size else f"{expected}"
        raise NpuportError(
            path, f"tensor {name!r}: data_offsets span {end - begin} bytes but shape {shape} x {declared} needs {needs}"
        )
    return _SafetensorsEntry(dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise NpuportError(path, "file not found") from None
    except OSError as exc:
        raise NpuportError(path, f"cannot read: {exc.strerror}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_bin_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` a .bin memory-mapped with weights_only; refusal or garbage -> NpuportError.

    Before torch reads anything, the zip records' declared sizes are checked against the file (a record that
    would inflate beyond it is refused); after, every tensor is checked to be a dense CPU tensor of a
    safetensors dtype whose view covers no more bytes than its storage holds (a stride-0 ``expand`` of a few
    bytes may claim gigabytes that copying it would allocate)."""
    size = _file_size(path)
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_records(path, size)
    try:
        # Legacy (pre-zip) .bin files cannot be memory-mapped; they are read whole.
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the one-line error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise NpuportError(path, _unpickling_problem(exc)) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ValueError... for bad files
        kind = "zip" if is_zip else "not a zip archive, read as legacy pickle"
        raise NpuportError(path, f"cannot read as a PyTorch checkpoint ({kind}): {_one_line(exc)}") from None
    state_dict = _flat_state_dict(path, obj)
    for name, tensor in state_dict.items():
        _check_bin_tensor(path, name, tensor)
    return state_dict


def _check_zip_records(path: Path, size: int) -> None:
    """Refuse a torch zip whose records would inflate beyond the file (torch.save stores them uncompressed)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, ValueError, OverflowError... for bad files
        raise NpuportError(path, f"cannot read as a PyTorch checkpoint (zip): {_one_line(exc)}") from None
    declared = sum(info.file_size for info in infos)
    if declared > size:
        biggest = max(infos, key=lambda info: info.file_size - info.compress_size)
        raise NpuportError(
            path,
            f"refused: zip record {biggest.filename!r} inflates to {biggest.file_size} bytes from "
            f"{biggest.compress_size}; the records declare {declared} bytes in a {size}-byte file",
        )


def _check_bin_tensor(path: Path, name: str, tensor: torch.Tensor) -> None:
    if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.is_quantized:
        raise NpuportError(path, f"tensor {name!r}: a {tensor.layout} {tensor.device.type} tensor, not a dense one")
    if tensor.dtype not in _SUPPORTED_DTYPES:
        raise NpuportError(path, f"tensor {name!r}: dtype {dtype_name(tensor.dtype)} has no safetensors equivalent")
    if tensor.dim() > MAX_RANK:
        raise NpuportError(path, f"tensor {name!r}: shape has {tensor.dim()} dimensions (at most {MAX_RANK})")
    claimed, stored = tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes()
    if claimed > stored:
        raise NpuportError(
            path,
            f"refused: tensor {name!r} of shape {list(tensor.shape)} (strides {list(tensor.stride())}) claims "
            f"{claimed} bytes but its storage holds {stored}: an expanded or overlapping view",
        )


_GLOBAL = re.compile(r"GLOBAL (\S+)")
_CALL = re.compile(r"unrecognized function (.+)")


def _unpickling_problem(exc: pickle.UnpicklingError) -> str:
    """torch's weights-only refusal as one line naming what the pickle asked for (never torch's advice to
    turn weights_only off)."""
    text = str(exc)
    if found := _GLOBAL.search(text):
        return f"refused: the pickle imports {found[1].rstrip('.')} (only tensors are loaded; nothing was run)"
    if found := _CALL.search(text):
        return f"refused: the pickle calls {found[1].strip()} (only tensors are loaded; nothing was run)"
    inner = text.split("WeightsUnpickler error:")[-1].split("Check the documentation of torch.load")[0]
    lines = [line.strip() for line in inner.splitlines() if line.strip() and "weights_only" not in line]
    detail = lines[-1] if lines else type(exc).__name__
    if detail.startswith("Can only") or "must be imported" in detail:
        return f"refused: {detail} (only tensors are loaded; nothing was run)"
    return f"not a PyTorch checkpoint (unpickler: {detail})"


def _flat_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    # Some trainers wrap the weights as {"state_dict": {...}} or {"model": {...}}.
    if isinstance(obj, dict) and len(obj) == 1:
        ((key, inner),) = obj.items()
        if key in ("state_dict", "model") and isinstance(inner, dict):
            obj = inner
    if not isinstance(obj, dict):
        raise NpuportError(path, f"holds a {type(obj).__name__}, not a state dict of tensors")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise NpuportError(path, f"entry {name!r} is a {type(value).__name__}, not a tensor")
    return obj


def _read_index(directory: Path, index_name: str) -> dict[str, str]:
    """weight_map of a sharded index, with every shard checked to be a regular file inside ``directory``."""
    path = directory / index_name
    regular_file(directory, index_name)
    index = untrusted_json.read(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise NpuportError(path, "no non-empty 'weight_map' object")
    for name, shard in weight_map.items():
        if not _plain_name(shard):
            raise NpuportError(path, f"tensor {name!r}: shard {shard!r} is not a plain file name in the directory")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if regular_file(directory, s, missing_ok=True) is None]
    if missing:
        raise NpuportError(path, f"names shard file(s) that do not exist: {', '.join(missing[:10])}")
    return weight_map


def _plain_name(name: object) -> bool:
    """A file name with no directory part: no separator, no NUL, not . or .."""
    return isinstance(name, str) and bool(name) and not any(c in name for c in "/\\\0") and name not in (".", "..")


class Checkpoint:
    """Tensor metadata of a checkpoint directory plus on-demand loading. Use as a context manager.

    Tensors whose bytes lie contiguously at a known file offset (every safetensors tensor; every tensor of a
    zip-format .bin once the offsets are confirmed) are read with plain file reads, never through a memory
    map: on kernels that map page-cache folios of up to 2 MB per fault, touching one row of a mapped tensor
    would add megabytes to the resident set.
    """

    def __init__(self, directory: Path, fmt: str, files: list[str], tensors: dict[str, TensorInfo]):
        self.directory = directory
        self.format = fmt
        self.files = files
        self.tensors = tensors
        self._offsets: dict[str, int] = {}  # absolute file offset of a contiguous tensor's first byte
        self._bin_tensors: dict[str, torch.Tensor] = {}
        self._handles: dict[str, object] = {}

    @classmethod
    def open(cls, directory: str | Path) -> Checkpoint:
        """The checkpoint in ``directory``. Every file it reads is a regular file inside the directory
        (npuport.core.paths: a symlink leading outside, a FIFO or a device is refused, never opened)."""
        directory = Path(directory)
        source_dir(directory)
        if regular_file(directory, SAFETENSORS_FILE, missing_ok=True):
            return cls._open_safetensors(directory, {None: SAFETENSORS_FILE})
        if regular_file(directory, SAFETENSORS_INDEX, missing_ok=True):
            return cls._open_safetensors(directory, _read_index(directory, SAFETENSORS_INDEX), SAFETENSORS_INDEX)
        if regular_file(directory, BIN_FILE, missing_ok=True):
            return cls._open_bin(directory, {None: BIN_FILE})
        if regular_file(directory, BIN_INDEX, missing_ok=True):
            return cls._open_bin(directory, _read_index(directory, BIN_INDEX), BIN_INDEX)
        looked = ", ".join((SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX))
        raise NpuportError(directory, f"no checkpoint found (looked for {looked})")

    @classmethod
    def _open_safetensors(cls, directory: Path, weight_map: dict, index: str | None = None) -> Checkpoint:
        files = sorted(set(weight_map.values()))
        offsets: dict[str, int] = {}
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, entry in read_safetensors_header(directory / file).items():
                if name in tensors:
                    raise NpuportError(directory / file, f"tensor {name!r} also stored in {tensors[name].file}")
                offsets[name] = entry.start
                tensors[name] = TensorInfo(name, entry.shape, dtype_name(entry.dtype), entry.end - entry.start, file)
        _check_index_matches(directory, index, weight_map, tensors)
        ckpt = cls(directory, "safetensors", files, tensors)
        ckpt._offsets = offsets
        return ckpt

    @classmethod
    def _open_bin(cls, directory: Path, weight_map: dict, index: str | None = None) -> Checkpoint:
        files = sorted(set(weight_map.values()))
        ckpt = cls(directory, "bin", files, {})
        for file in files:
            state_dict = load_bin_state_dict(directory / file)
            for name, tensor in state_dict.items():
                if name in ckpt.tensors:
                    raise NpuportError(directory / file, f"tensor {name!r} also stored in {ckpt.tensors[name].file}")
                ckpt._bin_tensors[name] = tensor
                nbytes = tensor.numel() * tensor.element_size()
                ckpt.tensors[name] = TensorInfo(name, tuple(tensor.shape), dtype_name(tensor.dtype), nbytes, file)
            offsets = bin_data_offsets(directory / file, state_dict)
            ckpt._offsets.update({n: o for n, o in offsets.items() if state_dict[n].is_contiguous()})
        _check_index_matches(directory, index, weight_map, ckpt.tensors)
        return ckpt

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._bin_tensors = {}

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise NpuportError(self.directory, f"no tensor named {name!r} in the checkpoint") from None

    def file_offset(self, name: str) -> int | None:
        """Absolute offset of ``name``'s first byte in its file when its bytes lie there contiguously, else None."""
        return self._offsets.get(self.info(name).name)

    def load(self, name: str) -> torch.Tensor:
        """One whole tensor, as a tensor that owns its memory (independent of the file)."""
        info = self.info(name)
        if name not in self._offsets:
            return self._bin_tensors[name].clone()
        return self._read_bytes(info.file, self._offsets[name], info.nbytes, _torch_dtype(info)).reshape(info.shape)

    def load_rows(self, name: str, rows: list[int]) -> torch.Tensor:
        """Only the given rows of a 2-D tensor, in the given order; reads only those rows' bytes."""
        info = self.info(name)
        if len(info.shape) != 2:
            raise NpuportError(self.directory / info.file, f"tensor {name!r} has shape {list(info.shape)}, not 2-D")
        n_rows, n_cols = info.shape
        bad = [r for r in rows if not (isinstance(r, int) and 0 <= r < n_rows)]
        if bad:
            raise ValueError(f"rows {bad[:5]} out of range for tensor {name!r} with {n_rows} rows")
        if name not in self._offsets:
            return self._bin_tensors[name][torch.tensor(rows, dtype=torch.long)].clone()
        dtype = _torch_dtype(info)
        row_bytes = n_cols * dtype.itemsize
        start = self._offsets[name]
        parts = [self._read_bytes(info.file, start + r * row_bytes, row_bytes, dtype) for r in rows]
        return torch.stack(parts) if parts else torch.empty((0, n_cols), dtype=dtype)

    def storage_key(self, name: str) -> tuple:
        """A key equal for two tensors exactly when they are the same bytes read the same way (file, shape,
        dtype, and where the bytes start, with the strides for a .bin): hashable, so aliases are found in one
        pass however many tensors there are."""
        info = self.info(name)
        if self.format == "safetensors":
            return (info.file, info.shape, info.dtype, self._offsets[name])
        t = self._bin_tensors[name]
        return (info.file, info.shape, info.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), t.stride())

    def shares_storage(self, a: str, b: str) -> bool:
        """True when tensors ``a`` and ``b`` are the same bytes in the file (e.g. tied embeddings in a .bin)."""
        return self.storage_key(a) == self.storage_key(b)

    def _read_bytes(self, file: str, offset: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        if size == 0:
            return torch.empty(0, dtype=dtype)
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = open(self.directory / file, "rb")  # noqa: SIM115 - closed in close()
        buffer = bytearray(size)
        handle.seek(offset)
        got = handle.readinto(buffer)
        if got != size:
            raise NpuportError(self.directory / file, f"file shrank: wanted {size} bytes at {offset}, got {got}")
        return torch.frombuffer(buffer, dtype=dtype)


def _torch_dtype(info: TensorInfo) -> torch.dtype:
    return getattr(torch, info.dtype)


def bin_data_offsets(path: Path, state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """File offset of each tensor's first byte in a zip-format .bin loaded with mmap; {} when not established.

    torch.load(mmap=True) maps the whole file once and makes each storage the slice of that mapping at its
    zip record's data offset, so storage address minus record offset is one constant. The offsets are used
    only when that holds for every storage (and the data is stored uncompressed and little-endian).
    """
    storages = {t.untyped_storage().data_ptr() for t in state_dict.values() if t.untyped_storage().nbytes()}
    if sys.byteorder != "little" or not storages:
        return {}
    try:
        records = _zip_data_records(path)
    except (OSError, zipfile.BadZipFile, struct.error):
        return {}
    if records is None or len(records) != len(storages):
        return {}
    base = min(storages) - min(records)
    if {p - base for p in storages} != set(records):
        return {}
    return {
        name: t.untyped_storage().data_ptr() - base + t.storage_offset() * t.element_size()
        for name, t in state_dict.items()
        if t.untyped_storage().nbytes()
    }


def _zip_data_records(path: Path) -> list[int] | None:
    """Data offsets of the non-empty ``*/data/*`` records of a torch zip; None if any is compressed or big-endian."""
    offsets = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if parts[-1] == "byteorder" and archive.read(info).strip() != b"little":
                return None
            if len(parts) < 2 or parts[-2] != "data" or info.file_size == 0:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
            offsets.append(info.header_offset + 30 + name_len + extra_len)
    return offsets


def _check_index_matches(directory: Path, index: str | None, weight_map: dict, tensors: dict[str, TensorInfo]) -> None:
    if index is None:
        return
    for name, shard in weight_map.items():
        found = tensors.get(name)
        if found is None or found.file != shard:
            where = "is in no shard" if found is None else f"is in {found.file}"
            raise NpuportError(directory / index, f"tensor {name!r} is mapped to {shard} but {where}")
