import json

import pytest
import torch
from model_factory import tiny_model, write_latent_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from npuport.core.errors import NpuportError
from npuport.weights.checkpoint import Checkpoint
from npuport.weights.fuse import INDEX_NAME, check_free_space, fuse, fuse_tensor
from npuport.weights.introspect import introspect_checkpoint
from npuport.weights.qat import make_qat
from npuport.weights.repair_config import repair
from npuport.weights.ternary import groups_are_ternary, is_quantized_linear

GROUP = 32


def _fuse(src, out, **kwargs):
    introspection = introspect_checkpoint(src)
    config, _ = repair(src / "config.json", introspection)
    return fuse(src, config, introspection, out, **({"group_size": GROUP} | kwargs))


def _load_model_dir(path):
    tensors = {}
    for shard in json.loads((path / INDEX_NAME).read_text())["weight_map"].values():
        tensors.update(load_file(path / shard))
    return tensors


# The evidence that these latent weights are ternary QAT weights (npuport.weights.qat_evidence): a config.json
# declaration without a group size, so the configured GROUP is used (tests/test_qat_evidence.py covers the others).
DECLARATION = {"quantization_config": {"quant_method": "ternary"}}


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    model = tiny_model(seed=1)
    wrong = {"hidden_size": 80, "num_hidden_layers": 3, "intermediate_size": 256}
    return write_latent_checkpoint(tmp_path_factory.mktemp("latent"), model, config_edits=wrong | DECLARATION)


@pytest.fixture(scope="module")
def fused(latent, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "model"
    return out, _fuse(latent, out)


def test_fused_logits_equal_qat_forward(latent, fused):
    out, document = fused
    assert document["tensors_quantized"] == 2 * 7
    assert document["all_linears_ternary"] is True
    assert document["fused"] is True and document["ternary_expected"] is True
    assert (document["group_size"], document["group_size_source"]) == (GROUP, "config")
    assert "config.json quantization_config declares it" in document["decision"]
    ids = torch.tensor([[1, 5, 9, 33, 60, 2, 7]])
    reference = LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    qat = LlamaForCausalLM._from_config(reference.config, dtype=torch.bfloat16).eval()
    qat.load_state_dict(torch.load(latent / "pytorch_model.bin", weights_only=True))
    make_qat(qat, GROUP)
    with torch.no_grad():
        fused_logits = reference(ids).logits.float()
        qat_logits = qat(ids).logits.float()
    torch.testing.assert_close(fused_logits, qat_logits, rtol=0, atol=1e-6)


def test_fused_dir_has_hf_layout_and_repaired_config(fused):
    out, document = fused
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (64, 2, 128)
    assert "quantization_config" not in config  # the fused model is plain
    assert (out / "tokenizer.json").exists()
    assert (out / "fuse.json").exists()
    index = json.loads((out / INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == document["shards"]
    assert index["metadata"]["total_size"] == document["total_bytes"]


def test_every_fused_linear_is_ternary(fused):
    out, _ = fused
    tensors = _load_model_dir(out)
    linears = [name for name in tensors if is_quantized_linear(name)]
    assert len(linears) == 14
    for name in linears:
        assert bool(groups_are_ternary(tensors[name], GROUP).all()), name
        assert tensors[name].dtype == torch.bfloat16


def test_fusing_a_fused_model_changes_nothing(fused, tmp_path):
    out, _ = fused
    again = tmp_path / "again"
    document = _fuse(out, again)
    assert document["tensors_quantized"] == 0
    assert "already ternary" in document["decision"]
    assert document["ternary_expected"] is True and document["qat_evidence"]["found"] is False
    first, second = _load_model_dir(out), _load_model_dir(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_mode_never_keeps_latent_weights(latent, tmp_path):
    document = _fuse(latent, tmp_path / "m", mode="never")
    assert document["tensors_quantized"] == 0
    assert document["linears_ternary"] == 0
    assert document["ternary_expected"] is False  # nothing fused: the latent linears need not be ternary
    original = torch.load(latent / "pytorch_model.bin", weights_only=True)
    fused = _load_model_dir(tmp_path / "m")
    assert all(torch.equal(original[k], fused[k]) for k in original)


def test_shards_respect_max_shard_size(latent, tmp_path):
    limit = 40_000
    document = _fuse(latent, tmp_path / "m", max_shard_size=limit)
    assert len(document["shards"]) > 2
    with Checkpoint.open(tmp_path / "m") as checkpoint:
        per_file = {}
        for info in checkpoint.tensors.values():
            per_file.setdefault(info.file, []).append(info.nbytes)
    for sizes in per_file.values():
        assert sum(sizes) <= limit or len(sizes) == 1
    assert document["shards"][0] == f"model-00001-of-{len(document['shards']):05d}.safetensors"


def test_free_space_check_refuses_before_writing(tmp_path):
    with pytest.raises(NpuportError, match="not enough free disk space"):
        check_free_space(tmp_path / "model", 10**18)


def test_failed_fuse_leaves_nothing(latent, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(NpuportError, match="not a multiple"):  # refused inside the staging dir, before writing
        _fuse(latent, out, group_size=48)  # 64 input features are not a multiple of 48
    assert list(tmp_path.iterdir()) == []


def test_latent_weights_without_qat_evidence_are_left_as_they_are(tmp_path):
    """The same latent weights without the declaration: auto does not ternarize them (an ordinary model)."""
    src = write_latent_checkpoint(tmp_path / "src", tiny_model(seed=1))
    document = _fuse(src, tmp_path / "m")
    assert document["fused"] is False and document["tensors_quantized"] == 0
    assert "no sign of ternary QAT: not fused" in document["decision"]
    assert document["tensors_byte_copied"] == len(document["tensors"])
    original, result = torch.load(src / "pytorch_model.bin", weights_only=True), _load_model_dir(tmp_path / "m")
    assert all(torch.equal(original[k], result[k]) and original[k].dtype == result[k].dtype for k in original)


# --- the streaming writer and the byte-copy path give what fuse_tensor + safetensors.save_file give ---------------


def _reference_fuse(src, tmp_path, mode="auto", dtype="keep"):
    """The pre-streaming fuse: every tensor loaded, fuse_tensor, all saved with safetensors.save_file, read back."""
    tensors = {}
    with Checkpoint.open(src) as checkpoint:
        for name in sorted(checkpoint.tensors):
            tensors[name], _ = fuse_tensor(name, checkpoint.load(name), mode=mode, group_size=GROUP, dtype=dtype)
    path = tmp_path / "reference.safetensors"
    save_file({n: t.contiguous() for n, t in tensors.items()}, path, metadata={"format": "pt"})
    return load_file(path)


def _safetensors_source(src, directory):
    """The same checkpoint as ``src`` with model.safetensors instead of pytorch_model.bin."""
    directory.mkdir()
    for path in src.iterdir():
        if path.name != "pytorch_model.bin":
            (directory / path.name).write_bytes(path.read_bytes())
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _assert_same_tensors(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


def _every_shard_opens(path):
    for shard in json.loads((path / INDEX_NAME).read_text())["weight_map"].values():
        with safe_open(path / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                f.get_tensor(name)


@pytest.mark.parametrize("source_format", ["bin", "safetensors"])
@pytest.mark.parametrize(
    ("mode", "dtype"), [("auto", "keep"), ("never", "keep"), ("always", "keep"), ("auto", "float32")]
)
def test_fuse_equals_the_reference_path(latent, tmp_path, source_format, mode, dtype):
    src = latent if source_format == "bin" else _safetensors_source(latent, tmp_path / "src")
    document = _fuse(src, tmp_path / "m", mode=mode, dtype=dtype, max_shard_size=60_000)
    assert len(document["shards"]) > 1
    _every_shard_opens(tmp_path / "m")
    _assert_same_tensors(_load_model_dir(tmp_path / "m"), _reference_fuse(src, tmp_path, mode, dtype))
    with Checkpoint.open(src) as checkpoint:
        assert document["source_format"] == checkpoint.format
        n_tensors = len(checkpoint.tensors)
    # byte copies: every unchanged tensor (dtype kept; latent linears are quantized except in mode never)
    linears = document["linears_checked"]
    expected = {("auto", "keep"): n_tensors - linears, ("never", "keep"): n_tensors,
                ("always", "keep"): n_tensors - linears, ("auto", "float32"): 0}[(mode, dtype)]  # fmt: skip
    assert document["tensors_byte_copied"] == expected


@pytest.mark.parametrize("source_format", ["bin", "safetensors"])
def test_refusing_a_fused_model_copies_every_tensor_and_checks_every_linear(fused, tmp_path, source_format):
    out, _ = fused
    src = out if source_format == "safetensors" else tmp_path / "bin"
    if source_format == "bin":
        src.mkdir()
        for path in out.iterdir():
            if path.suffix != ".safetensors" and path.name != INDEX_NAME:
                (src / path.name).write_bytes(path.read_bytes())
        torch.save(_load_model_dir(out), src / "pytorch_model.bin")
    document = _fuse(src, tmp_path / "again")
    assert document["tensors_byte_copied"] == len(document["tensors"])
    assert document["linears_ternary"] == document["linears_checked"] == 14
    assert all(r["action"] == "kept (already ternary)" for r in document["tensors"] if "ternary" in r)
    _assert_same_tensors(_load_model_dir(tmp_path / "again"), _load_model_dir(out))


def test_a_non_ternary_value_in_a_copied_linear_is_found(fused, tmp_path):
    """The byte-copy path checks every value: one value off the ternary set in the last row is caught."""
    out, _ = fused
    tensors = _load_model_dir(out)
    name = "model.layers.1.mlp.down_proj.weight"
    weight = tensors[name].clone()
    weight[-1, -1] = weight[-1, -1] * 0.5 if weight[-1, -1] != 0 else weight[-1].abs().max() * 0.5
    tensors[name] = weight
    src = tmp_path / "src"
    src.mkdir()
    for path in out.iterdir():
        if path.suffix != ".safetensors" and path.name != INDEX_NAME:
            (src / path.name).write_bytes(path.read_bytes())
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    document = _fuse(src, tmp_path / "m", mode="never")
    record = next(r for r in document["tensors"] if r["name"] == name)
    assert record["ternary"] is False and record["action"] == "kept (mode never)"
    assert document["all_linears_ternary"] is False
