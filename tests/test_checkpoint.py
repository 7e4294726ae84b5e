"""Checkpoint readers: every layout, on-demand loading, and every kind of bad input."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from checkpoint_factory import (
    Arch,
    llama_state_dict,
    write_checkpoint,
    write_index,
    write_malicious_bin,
    write_raw_safetensors,
    write_safetensors_streaming,
)
from safetensors import safe_open

from npuport.core.errors import NpuportError
from npuport.weights.checkpoint import Checkpoint, TensorInfo, bin_data_offsets, dtype_name, load_bin_state_dict

LAYOUTS = [("safetensors", 1), ("safetensors", 3), ("bin", 1), ("bin", 2)]


def _state_dict(**arch):
    return llama_state_dict(Arch(**arch), seed=3)


@pytest.mark.parametrize(("fmt", "shards"), LAYOUTS)
def test_reader_metadata_matches_written_tensors(tmp_path, fmt, shards):
    sd = _state_dict()
    write_checkpoint(tmp_path, sd, fmt, shards)
    with Checkpoint.open(tmp_path) as ckpt:
        assert ckpt.format == fmt
        assert len(ckpt.files) == shards
        assert all((tmp_path / f).is_file() for f in ckpt.files)
        assert set(ckpt.tensors) == set(sd)
        for name, tensor in sd.items():
            info = ckpt.tensors[name]
            assert isinstance(info, TensorInfo)
            assert info.shape == tuple(tensor.shape)
            assert info.dtype == dtype_name(tensor.dtype)
            assert info.nbytes == tensor.numel() * tensor.element_size()
            assert info.file in ckpt.files


@pytest.mark.parametrize(("fmt", "shards"), LAYOUTS)
def test_load_and_load_rows_return_the_stored_values(tmp_path, fmt, shards):
    sd = _state_dict()
    write_checkpoint(tmp_path, sd, fmt, shards)
    with Checkpoint.open(tmp_path) as ckpt:
        for name, tensor in sd.items():
            loaded = ckpt.load(name)
            assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor)
        name = "model.layers.1.mlp.down_proj.weight"
        rows = [5, 0, 63, 5]
        got = ckpt.load_rows(name, rows)
        assert torch.equal(got, sd[name][rows])
        assert ckpt.load_rows(name, []).shape == (0, sd[name].shape[1])


def test_loaded_tensor_is_independent_of_the_file(tmp_path):
    sd = _state_dict()
    write_checkpoint(tmp_path, sd, "bin")
    name = "model.norm.weight"
    with Checkpoint.open(tmp_path) as ckpt:
        first = ckpt.load(name)
        first.add_(1)
        assert torch.equal(ckpt.load(name), sd[name])


def test_load_rows_rejects_bad_requests(tmp_path):
    write_checkpoint(tmp_path, _state_dict())
    with Checkpoint.open(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="out of range"):
            ckpt.load_rows("model.embed_tokens.weight", [128])
        with pytest.raises(NpuportError, match="not 2-D"):
            ckpt.load_rows("model.norm.weight", [0])
        with pytest.raises(NpuportError, match="no tensor named"):
            ckpt.load("nope.weight")


def test_streaming_writer_output_is_standard_safetensors(tmp_path):
    t = torch.randn(7, 24).to(torch.bfloat16)
    path = tmp_path / "model.safetensors"
    write_safetensors_streaming(
        path, [("a", (7, 24), torch.bfloat16, lambda: t), ("b", (3,), torch.float32, lambda: torch.ones(3))]
    )
    with safe_open(path, framework="pt") as f:
        assert torch.equal(f.get_tensor("a"), t)
    with Checkpoint.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.load_rows("a", [6, 2]), t[[6, 2]])
        assert torch.equal(ckpt.load("b"), torch.ones(3))


def test_tied_embedding_in_bin_shares_storage(tmp_path):
    sd = _state_dict(tie_word_embeddings=True)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    write_checkpoint(tmp_path, sd, "bin")
    with Checkpoint.open(tmp_path) as ckpt:
        assert ckpt.shares_storage("lm_head.weight", "model.embed_tokens.weight")
        assert not ckpt.shares_storage("model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight")


def test_untied_tensors_do_not_share_storage(tmp_path):
    sd = _state_dict()
    for fmt in ("safetensors", "bin"):
        write_checkpoint(tmp_path / fmt, sd, fmt)
        with Checkpoint.open(tmp_path / fmt) as ckpt:
            assert not ckpt.shares_storage("lm_head.weight", "model.embed_tokens.weight")


def test_legacy_and_wrapped_bin_files_load(tmp_path):
    sd = _state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with Checkpoint.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.load("lm_head.weight"), sd["lm_head.weight"])
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.bin")
    with Checkpoint.open(tmp_path) as ckpt:
        assert set(ckpt.tensors) == set(sd)


def test_safetensors_is_preferred_over_bin(tmp_path):
    sd = _state_dict()
    write_checkpoint(tmp_path, sd, "bin")
    write_checkpoint(tmp_path, sd, "safetensors")
    with Checkpoint.open(tmp_path) as ckpt:
        assert ckpt.format == "safetensors"


# -- bad input ------------------------------------------------------------------------------------------


def _raises_naming(path, match):
    with pytest.raises(NpuportError, match=match) as info:
        Checkpoint.open(path.parent if path.is_file() else path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_no_checkpoint_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    _raises_naming(tmp_path, "no checkpoint found")
    with pytest.raises(NpuportError, match="directory not found"):
        Checkpoint.open(tmp_path / "absent")


def test_truncated_safetensors(tmp_path):
    path = write_raw_safetensors(tmp_path / "model.safetensors", {"a": {}}, header_len=10_000)
    _raises_naming(path, "header length 10000 beyond file size")
    path.write_bytes(b"\x01\x02")
    _raises_naming(path, "truncated")


def test_safetensors_data_cut_short(tmp_path):
    sd = {"a": torch.ones(4, 4)}
    write_checkpoint(tmp_path, sd)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    _raises_naming(path, "out of range")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"{not json", "safetensors header is not valid JSON"),
        (b'{"a": "\xff\xfe"}', "safetensors header is not valid UTF-8"),
        (b"[1, 2]", "JSON list, not an object"),
        (json.dumps({"a": [1]}).encode(), "not an object"),
        (json.dumps({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}).encode(), "unsupported dtype"),
        (json.dumps({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), "shape"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}).encode(), "data_offsets"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 64]}}).encode(), "out of range"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 4]}}).encode(), "out of range"),
        (json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), "needs 12"),
    ],
)
def test_malformed_safetensors_header(tmp_path, header, problem):
    path = write_raw_safetensors(tmp_path / "model.safetensors", header, data=bytes(16))
    message = _raises_naming(path, problem)
    if b'"a"' in header and "not valid" not in problem:
        assert "'a'" in message


def test_index_not_json(tmp_path):
    write_checkpoint(tmp_path, _state_dict(), shards=2)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{oops")
    _raises_naming(index, "not valid JSON")
    index.write_bytes(b'{"weight_map": {"a": "\xff"}}')
    _raises_naming(index, "not valid UTF-8")
    index.write_text('{"metadata": {}}')
    _raises_naming(index, "weight_map")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_index_names_missing_shard(tmp_path, fmt):
    write_checkpoint(tmp_path, _state_dict(), fmt, shards=2)
    shard = sorted(tmp_path.glob(f"*-00002-of-00002.{fmt}"))[0]
    shard.unlink()
    index = next(tmp_path.glob("*.index.json"))
    message = _raises_naming(index, "do not exist")
    assert shard.name in message


def test_index_refuses_paths_outside_the_directory(tmp_path):
    inner = tmp_path / "ckpt"
    write_checkpoint(tmp_path, {"a": torch.ones(2)})
    inner.mkdir()
    write_index(inner / "model.safetensors.index.json", {"a": "../model.safetensors"})
    _raises_naming(inner / "model.safetensors.index.json", "not a plain file name")


def test_index_inconsistent_with_shards(tmp_path):
    write_checkpoint(tmp_path, _state_dict(), shards=2)
    index = tmp_path / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(doc))
    _raises_naming(index, "'ghost.weight' is mapped to model-00001-of-00002.safetensors but is in no shard")


def test_tensor_in_two_shards(tmp_path):
    write_checkpoint(tmp_path, {"a": torch.ones(2)}, shards=1)
    (tmp_path / "model.safetensors").rename(tmp_path / "s1.safetensors")
    write_checkpoint(tmp_path / "x", {"a": torch.ones(2)})
    (tmp_path / "x" / "model.safetensors").rename(tmp_path / "s2.safetensors")
    write_index(tmp_path / "model.safetensors.index.json", {"a": "s1.safetensors"})
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}, f)
    _raises_naming(tmp_path / "s2.safetensors", "also stored in s1.safetensors")


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle"])
def test_malicious_bin_is_refused_and_runs_nothing(tmp_path, layout):
    marker = tmp_path / "marker"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    path = write_malicious_bin(ckpt_dir / "pytorch_model.bin", marker, layout)
    assert not marker.exists()
    message = _raises_naming(path, "refused|not a PyTorch checkpoint|cannot read")
    assert not marker.exists()
    if layout == "zip":
        assert "refused" in message and "open" in message


def test_malicious_bin_shard_is_refused(tmp_path):
    marker = tmp_path / "marker"
    write_checkpoint(tmp_path / "ckpt", _state_dict(), "bin", shards=2)
    shard = tmp_path / "ckpt" / "pytorch_model-00002-of-00002.bin"
    write_malicious_bin(shard, marker)
    _raises_naming(shard, "refused")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a checkpoint at all", "cannot read|not a PyTorch checkpoint"),
        (b"", "cannot read|not a PyTorch checkpoint"),
        (struct.pack("<Q", 7) + b"\x00" * 64, "cannot read|not a PyTorch checkpoint"),
    ],
)
def test_bin_that_is_not_a_checkpoint(tmp_path, content, problem):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    _raises_naming(path, problem)


def test_truncated_zip_bin(tmp_path):
    write_checkpoint(tmp_path, _state_dict(), "bin")
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _raises_naming(path, "cannot read|not a PyTorch checkpoint")


def test_bin_holding_non_tensors(tmp_path):
    torch.save({"a": torch.ones(2), "step": 7}, tmp_path / "pytorch_model.bin")
    _raises_naming(tmp_path / "pytorch_model.bin", "'step' is a int, not a tensor")
    torch.save([torch.ones(2)], tmp_path / "pytorch_model.bin")
    _raises_naming(tmp_path / "pytorch_model.bin", "holds a list")


def test_bin_offsets_point_at_each_tensors_bytes(tmp_path):
    sd = _state_dict()
    write_checkpoint(tmp_path, sd, "bin")
    path = tmp_path / "pytorch_model.bin"
    offsets = bin_data_offsets(path, load_bin_state_dict(path))
    assert set(offsets) == set(sd)
    raw = path.read_bytes()
    for name, tensor in sd.items():
        stored = raw[offsets[name] : offsets[name] + tensor.numel() * tensor.element_size()]
        assert stored == tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_bin_offsets_are_not_used_for_legacy_files(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=False)
    assert bin_data_offsets(path, load_bin_state_dict(path)) == {}


def test_bin_views_and_non_contiguous_tensors_load_correctly(tmp_path):
    big = torch.arange(60, dtype=torch.float32).reshape(12, 5)
    sd = {"head": big[2:5], "tail": big[5:], "transposed": torch.randn(4, 6).t(), "plain": torch.randn(3, 3)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with Checkpoint.open(tmp_path) as ckpt:
        for name, tensor in sd.items():
            assert torch.equal(ckpt.load(name), tensor)
            assert torch.equal(ckpt.load_rows(name, [2, 0]), tensor[[2, 0]])
        assert not ckpt.shares_storage("head", "tail")
