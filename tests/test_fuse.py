import json

import pytest
import torch
from model_factory import tiny_model, write_latent_checkpoint
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from npuport.checkpoint import Checkpoint
from npuport.errors import NpuportError
from npuport.fuse import INDEX_NAME, check_free_space, fuse
from npuport.introspect import introspect_checkpoint
from npuport.qat import make_qat
from npuport.repair import repair
from npuport.ternary import groups_are_ternary, is_quantized_linear

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


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    model = tiny_model(seed=1)
    wrong = {"hidden_size": 80, "num_hidden_layers": 3, "intermediate_size": 256}
    return write_latent_checkpoint(tmp_path_factory.mktemp("latent"), model, config_edits=wrong)


@pytest.fixture(scope="module")
def fused(latent, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "model"
    return out, _fuse(latent, out)


def test_fused_logits_equal_qat_forward(latent, fused):
    out, document = fused
    assert document["tensors_quantized"] == 2 * 7
    assert document["all_linears_ternary"] is True
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
    assert (out / "tokenizer.json").exists()
    assert document["tokenizer"]["tokens"] == 1024
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
    first, second = _load_model_dir(out), _load_model_dir(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_mode_never_keeps_latent_weights(latent, tmp_path):
    document = _fuse(latent, tmp_path / "m", mode="never")
    assert document["tensors_quantized"] == 0
    assert document["linears_ternary"] == 0
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
    with pytest.raises(ValueError, match="not a multiple"):
        _fuse(latent, out, group_size=48)  # 64 input features are not a multiple of 48
    assert list(tmp_path.iterdir()) == []
