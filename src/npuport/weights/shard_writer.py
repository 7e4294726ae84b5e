"""Stream tensors into Hugging Face safetensors shards without holding a shard in memory.

The shard layout is planned from names, shapes and dtypes before any data exists, so each shard's header
is written first and every tensor's bytes go to disk as soon as they are produced -- or straight from the
source file with ``os.copy_file_range`` when they are the source's bytes unchanged.

The files are written by hand because the ``safetensors`` library has no streaming writer (``save_file``
needs every tensor of a shard in memory at once). The format: an 8-byte little-endian header length, a JSON
header ``{name: {dtype, shape, data_offsets}, "__metadata__": {"format": "pt"}}`` padded with spaces to a
multiple of 8, then the tensors' raw little-endian bytes back to back in header order.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from npuport.core.atomic import write_json
from npuport.core.errors import NpuportError
from npuport.weights.checkpoint import SAFETENSORS_DTYPES

INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_COPY_CHUNK = 1 << 30
_FALLBACK_BUFFER = 16 << 20
# copy_file_range is refused across some file systems and kernels; a read/write loop does the same then.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def plan_shards(tensors: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    """Fill shards in the given order up to ``max_bytes``; a tensor larger than that gets a shard of its own."""
    shards: list[list[PlannedTensor]] = []
    size = 0
    for tensor in tensors:
        if not shards or (shards[-1] and size + tensor.nbytes > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def safetensors_header(tensors: list[PlannedTensor]) -> bytes:
    """The 8-byte length plus the padded JSON header for ``tensors`` stored back to back in this order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}  # fmt: skip
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:
        raise NotImplementedError("safetensors files are little-endian; this host is not")
    return memoryview(flat.view(torch.uint8).numpy())


class StreamingShardWriter:
    """Shards ``.part-0000i.safetensors`` in ``directory``, filled in plan order; ``finish`` renames them to
    ``model-0000i-of-0000N.safetensors`` and writes the index. Tensors must arrive in plan order."""

    def __init__(self, directory: Path, planned: list[PlannedTensor], max_bytes: int):
        self.directory = Path(directory)
        self.shards = plan_shards(planned, max_bytes)
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._shard = -1
        self._fd: int | None = None
        self._expected_size = 0

    def _part(self, index: int) -> Path:
        return self.directory / f".part-{index + 1:05d}.safetensors"

    def _take(self, name: str) -> tuple[PlannedTensor, int]:
        """The planned entry for ``name`` (which must be next) and the fd of its shard, opened on first use."""
        if self._next >= len(self._order) or self._order[self._next][1].name != name:
            expected = self._order[self._next][1].name if self._next < len(self._order) else "nothing"
            raise ValueError(f"shard writer got tensor {name!r} but the plan expects {expected!r}")
        index, planned = self._order[self._next]
        self._next += 1
        if index != self._shard:
            self._close_shard()
            self._shard = index
            self._fd = os.open(self._part(index), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            header = safetensors_header(self.shards[index])
            _write_all(self._fd, memoryview(header))
            self._expected_size = len(header) + sum(t.nbytes for t in self.shards[index])
        return planned, self._fd

    def _close_shard(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size != self._expected_size:
            raise RuntimeError(f"{self._part(self._shard)}: wrote {size} bytes, planned {self._expected_size}")

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``'s bytes; its shape and dtype must be the planned ones."""
        planned, fd = self._take(name)
        if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise ValueError(f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, planned "
                             f"{planned.dtype} {list(planned.shape)}")  # fmt: skip
        if planned.nbytes:
            _write_all(fd, _tensor_bytes(tensor))

    def copy(self, name: str, source: Path, src_fd: int, offset: int) -> None:
        """Append the planned tensor's bytes straight from ``src_fd`` at ``offset`` (in the kernel where it can)."""
        planned, fd = self._take(name)
        left, position = planned.nbytes, offset
        while left:
            try:
                n = os.copy_file_range(src_fd, fd, min(left, _COPY_CHUNK), position)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                n = _copy_by_reads(src_fd, fd, left, position)
            if n == 0:
                raise NpuportError(source, f"file shrank: tensor {name!r} wants {planned.nbytes} bytes at {offset}")
            left, position = left - n, position + n

    def finish(self) -> dict:
        """Rename the shards to their Hugging Face names, write the index and return it."""
        if self._next != len(self._order):
            raise ValueError(f"shard writer finished after {self._next} of {len(self._order)} planned tensors")
        self._close_shard()
        total = len(self.shards)
        weight_map = {}
        for i, shard in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.replace(self._part(i), self.directory / final)
            weight_map.update({t.name: final for t in shard})
        total_size = sum(t.nbytes for shard in self.shards for t in shard)
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(self.directory / INDEX_NAME, index)
        return index

    def abort(self) -> None:
        """Close the open shard without checks (the caller removes the directory)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _copy_by_reads(src_fd: int, dst_fd: int, count: int, position: int) -> int:
    buffer = bytearray(min(count, _FALLBACK_BUFFER))
    done = 0
    while done < count:
        n = os.preadv(src_fd, [memoryview(buffer)[: min(len(buffer), count - done)]], position + done)
        if n == 0:
            break
        _write_all(dst_fd, memoryview(buffer)[:n])
        done += n
    return done


class BackgroundWriter:
    """Runs a StreamingShardWriter's ``write``/``copy`` calls in order on one thread, so that file writes
    (which release the GIL) overlap the next tensor's check. At most ``depth`` tensors in memory wait for the
    thread; copies from the source file hold no memory, so any number of them may wait, and the thread copies
    on while the caller checks the next tensors. The first error is raised in the caller at its next call or at
    ``finish``."""

    def __init__(self, writer: StreamingShardWriter, depth: int = 2):
        self.writer = writer
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._tensor_slots = threading.BoundedSemaphore(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            method, args, holds_slot = item
            try:
                if self._error is None:
                    method(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc
            finally:
                if holds_slot:
                    self._tensor_slots.release()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._raise()
        self._tensor_slots.acquire()
        self._queue.put((self.writer.write, (name, tensor), True))

    def copy(self, name: str, source: Path, src_fd: int, offset: int) -> None:
        self._raise()
        self._queue.put((self.writer.copy, (name, source, src_fd, offset), False))

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> dict:
        self._stop()
        self._raise()
        return self.writer.finish()

    def close(self) -> None:
        """Stop the thread (after the queued calls) and close the open shard; for the error path."""
        self._stop()
        self.writer.abort()
