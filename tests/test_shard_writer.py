import json
import os
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from npuport.weights.checkpoint import Checkpoint
from npuport.weights.shard_writer import (
    INDEX_NAME,
    BackgroundWriter,
    PlannedTensor,
    StreamingShardWriter,
    _copy_by_reads,
    plan_shards,
)


def _tensors() -> dict[str, torch.Tensor]:
    """Mixed dtypes, odd sizes (a 3-element bf16 leaves the next bytes unaligned), a scalar, an empty tensor."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16_odd": torch.randn(3, generator=g).to(torch.bfloat16),
        "b.f32": torch.randn(5, 7, generator=g),
        "c.f16": torch.randn(4, 4, generator=g).to(torch.float16),
        "d.i64": torch.arange(-5, 6, dtype=torch.int64),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.empty(0, 3),
        "h.big": torch.randn(64, 64, generator=g).to(torch.bfloat16),  # 8 KiB: more than max_bytes, alone
        "i.u8": torch.arange(250, dtype=torch.uint8).reshape(10, 25),
    }


def _plan(tensors: dict[str, torch.Tensor]) -> list[PlannedTensor]:
    return [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def _read_model_dir(directory) -> dict[str, torch.Tensor]:
    index = json.loads((directory / INDEX_NAME).read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(directory / shard))
    return out


@pytest.mark.parametrize("background", [False, True])
def test_streamed_shards_load_with_safetensors_and_equal_a_save_file_reference(tmp_path, background):
    tensors = _tensors()
    reference = tmp_path / "reference.safetensors"
    save_file(tensors, reference, metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    writer = StreamingShardWriter(out, _plan(tensors), max_bytes=2048)
    writer = BackgroundWriter(writer) if background else writer
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    index = writer.finish()

    expected = load_file(reference)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not list(out.glob(".part-*"))
    assert list(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = {}
    for shard in shards:
        with safe_open(out / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                assert index["weight_map"][name] == shard
                loaded[name] = f.get_tensor(name)
        data = load_file(out / shard)
        assert all(torch.equal(data[n], loaded[n]) for n in data)
    assert loaded.keys() == expected.keys()
    for name in expected:
        assert loaded[name].dtype == expected[name].dtype and torch.equal(loaded[name], expected[name]), name


def test_shards_hold_at_most_max_bytes_except_one_larger_tensor_alone():
    sizes = [100, 300, 50, 1000, 20, 20, 400, 10]
    plan = [PlannedTensor(f"t{i}", (n,), torch.uint8) for i, n in enumerate(sizes)]
    shards = plan_shards(plan, 500)
    assert [t.name for shard in shards for t in shard] == [t.name for t in plan]  # order kept
    for shard in shards:
        assert sum(t.nbytes for t in shard) <= 500 or len(shard) == 1
    assert [[t.name for t in s] for s in shards] == [["t0", "t1", "t2"], ["t3"], ["t4", "t5", "t6", "t7"]]


def test_copy_from_a_source_file_equals_the_source_tensors(tmp_path):
    tensors = _tensors()
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with Checkpoint.open(src) as checkpoint:
        fd = os.open(src / "model.safetensors", os.O_RDONLY)
        try:
            writer = BackgroundWriter(StreamingShardWriter(out, _plan(tensors), max_bytes=4096))
            for name in tensors:
                offset = checkpoint.file_offset(name)
                if tensors[name].numel():
                    writer.copy(name, src / "model.safetensors", fd, offset)
                else:
                    writer.write(name, tensors[name])
            writer.finish()
        finally:
            os.close(fd)
    loaded = _read_model_dir(out)
    assert all(torch.equal(loaded[n], tensors[n]) for n in tensors)


def test_read_write_fallback_copies_the_same_bytes(tmp_path):
    data = os.urandom(70_000)
    (tmp_path / "src").write_bytes(data)
    src, dst = os.open(tmp_path / "src", os.O_RDONLY), os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert _copy_by_reads(src, dst, 50_000, 1234) == 50_000
        assert _copy_by_reads(src, dst, 10, len(data) - 4) == 4  # short at the end of the file
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == data[1234:51234] + data[-4:]


def test_wrong_order_shape_or_count_is_refused(tmp_path):
    tensors = _tensors()
    writer = StreamingShardWriter(tmp_path, _plan(tensors), max_bytes=1 << 20)
    with pytest.raises(ValueError, match="plan expects 'a.bf16_odd'"):
        writer.write("b.f32", tensors["b.f32"])
    writer = StreamingShardWriter(tmp_path, _plan(tensors), max_bytes=1 << 20)
    with pytest.raises(ValueError, match="planned torch.bfloat16"):
        writer.write("a.bf16_odd", tensors["a.bf16_odd"].float())
    writer.abort()
    writer = StreamingShardWriter(tmp_path, _plan(tensors), max_bytes=1 << 20)
    writer.write("a.bf16_odd", tensors["a.bf16_odd"])
    with pytest.raises(ValueError, match="finished after 1 of 9"):
        writer.finish()
    writer.abort()


def test_background_writer_raises_the_writers_error_in_the_caller(tmp_path):
    tensors = _tensors()
    writer = BackgroundWriter(StreamingShardWriter(tmp_path, _plan(tensors), max_bytes=1 << 20))
    writer.write("b.f32", tensors["b.f32"])  # out of order: fails on the thread
    with pytest.raises(ValueError, match="plan expects"):
        writer.finish()
    writer.close()


class _GatedWriter:
    """Stands in for StreamingShardWriter: each call waits for ``gate``, then records its name (or fails)."""

    def __init__(self, fail: str | None = None):
        self.gate, self.calls, self.fail = threading.Event(), [], fail

    def write(self, name, tensor):
        self._call(name)

    def copy(self, name, source, src_fd, offset):
        self._call(name)

    def _call(self, name):
        self.gate.wait()
        if name == self.fail:
            raise ValueError(f"{name} failed")
        self.calls.append(name)

    def finish(self):
        return {"calls": self.calls}

    def abort(self):
        pass


def test_copies_never_wait_but_tensors_in_memory_take_the_slots():
    gated = _GatedWriter()
    writer = BackgroundWriter(gated, depth=1)
    for i in range(50):  # nothing is copied yet: copies hold no memory, so none of these calls waits
        writer.copy(f"copy{i}", None, -1, 0)
    writer.write("t0", torch.zeros(1))  # the one slot
    second = threading.Thread(target=writer.write, args=("t1", torch.zeros(1)))
    second.start()
    second.join(0.5)
    assert second.is_alive(), "a second tensor in memory must wait for the slot"
    gated.gate.set()
    second.join(10)
    assert not second.is_alive()
    assert writer.finish()["calls"] == [f"copy{i}" for i in range(50)] + ["t0", "t1"]


def test_a_failed_write_frees_its_slot_so_the_caller_sees_the_error():
    gated = _GatedWriter(fail="t0")
    gated.gate.set()
    writer = BackgroundWriter(gated, depth=1)
    with pytest.raises(ValueError, match="t0 failed"):
        for i in range(100):  # without the slot released on failure the second write would wait forever
            writer.write(f"t{i}", torch.zeros(1))
    writer.close()
