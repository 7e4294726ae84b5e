"""Fuse only on evidence: a plain model goes through `auto` untouched, a ternary QAT checkpoint is fused, and the
fusion is proven against the checkpoint's own (bundled) QAT forward.

The QAT checkpoints here are written like resources/tiny-bitcpm: latent bfloat16 weights in pytorch_model.bin, the
modeling file resources/make_tiny_model.py ships (MODELING_SOURCE: absmean RoundClip per 128 input channels) and a
config.json whose auto_map names it. Hidden size 128: a multiple of the group size, so nothing fails by luck.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from model_factory import tiny_model, write_latent_checkpoint, write_plain_checkpoint
from safetensors.torch import load_file

from npuport.core.errors import NpuportError
from npuport.weights.fuse import INDEX_NAME, fuse, plan_fusion
from npuport.weights.introspect import introspect_checkpoint
from npuport.weights.qat_evidence import find_evidence
from npuport.weights.qat_proof import compare_logits, token_ids
from npuport.weights.repair_config import repair, repaired_view
from npuport.weights.ternary import fake_quant, groups_are_ternary, is_quantized_linear

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
_spec = importlib.util.spec_from_file_location("make_tiny_model", RESOURCES / "make_tiny_model.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

DIMS = {"hidden_size": 128, "intermediate_size": 256, "head_dim": 32, "num_attention_heads": 4}
AUTO_MAP = {"AutoModelForCausalLM": "modeling_bitcpm.BitCPMForCausalLM"}
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def convert(src: Path, out: Path, **settings) -> tuple[dict, dict, dict]:
    """introspect -> repair -> fuse, as the pipeline runs them; (introspection, repair report, fuse.json)."""
    introspection = introspect_checkpoint(src)
    trust = settings.get("trust_remote_code", False)
    config, report = repair(src / "config.json", introspection, trust)
    return introspection, report, fuse(src, config, introspection, out, **settings)


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values())):
        tensors.update(load_file(path / shard))
    return tensors


def write_qat_checkpoint(directory: Path, *, seed: int = 0, ternary: bool = False, code: bool = True,
                         config_edits: dict | None = None) -> Path:  # fmt: skip
    """A latent (or, with ``ternary``, already fused) Llama with the bundled QAT forward named by auto_map (without
    ``code``: neither)."""
    model = tiny_model(seed=seed, **DIMS)
    if ternary:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if is_quantized_linear(name):
                    parameter.copy_(fake_quant(parameter, 128))
    edits = LLAMA | ({"auto_map": AUTO_MAP} if code else {}) | (config_edits or {})
    write_latent_checkpoint(directory, model, config_edits=edits)
    if code:
        (directory / "modeling_bitcpm.py").write_text(make.MODELING_SOURCE, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def qat_dir(tmp_path_factory) -> Path:
    return write_qat_checkpoint(tmp_path_factory.mktemp("qat") / "ckpt")


@pytest.fixture(scope="module")
def fused_qat(qat_dir, tmp_path_factory) -> tuple[Path, dict, dict, dict]:
    out = tmp_path_factory.mktemp("fused") / "model"
    return (out, *convert(qat_dir, out, trust_remote_code=True))


# --- a plain model: no evidence, not fused -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    src = write_plain_checkpoint(tmp_path_factory.mktemp("plain") / "ckpt")
    out = tmp_path_factory.mktemp("plain-out") / "model"
    introspection, _, document = convert(src, out)
    return src, out, introspection, document


def test_a_plain_model_is_not_fused_under_auto(plain):
    src, out, introspection, document = plain
    assert introspection["derived"]["hidden_size"] % 128 == 0  # fusion would not fail by luck
    assert introspection["derived"]["ternary"]["status"] == "latent"
    assert introspection["derived"]["qat"]["found"] is False
    assert document["fused"] is False and document["tensors_quantized"] == 0
    assert "no sign of ternary QAT: not fused" in document["decision"]
    assert document["ternary_expected"] is False and "not fused" in document["ternary_expected_reason"]
    assert document["linears_ternary"] == 0 and document["all_linears_ternary"] is False
    assert {r["action"] for r in document["tensors"] if "ternary" in r} == {"kept (no ternary QAT evidence)"}
    assert document["qat_forward_check"]["status"] == "not run"
    source, result = load_file(src / "model.safetensors"), load_dir(out)
    assert source.keys() == result.keys()
    for name in source:  # byte for byte: same dtype, same values
        assert result[name].dtype == source[name].dtype and torch.equal(result[name], source[name]), name
    assert document["tensors_byte_copied"] == len(source)


def test_a_plain_model_not_fused_is_no_failed_fusion_verdict(plain):
    from npuport.report.messages import Messages
    from npuport.report.verdicts import FAILED, NOT_MEASURED, fusion_verdict

    verdict = fusion_verdict(Messages("en"), plain[3])
    assert verdict.status == NOT_MEASURED != FAILED and verdict.optional
    assert "not fused" in verdict.detail


def test_mode_always_still_forces_fusion_of_a_plain_model(plain, tmp_path):
    src = plain[0]
    _, _, document = convert(src, tmp_path / "m", mode="always")
    assert document["fused"] is True and document["tensors_quantized"] == document["linears_checked"] > 0
    assert document["group_size"] == 128 and document["group_size_source"] == "default"
    assert document["all_linears_ternary"] is True and document["ternary_expected"] is True
    assert "no sign of ternary QAT" in document["decision"]  # forced, and says there was no evidence


def test_mode_never_on_a_latent_model_expects_no_ternary_values(plain, tmp_path):
    _, _, document = convert(plain[0], tmp_path / "m", mode="never")
    assert document["ternary_expected"] is False and "never" in document["ternary_expected_reason"]


# --- a ternary QAT checkpoint: bundled quantizer, fused, proven ------------------------------------------------------


def test_bundled_quantizer_is_the_evidence(qat_dir):
    qat = introspect_checkpoint(qat_dir)["derived"]["qat"]
    assert qat["found"] is True and qat["scale"] == "absmean"
    (code,) = qat["evidence"]
    assert code["kind"] == "modeling_code" and code["file"] == "modeling_bitcpm.py"
    assert code["auto_map"] == ["AutoModelForCausalLM"] and code["function"] == "ternary_fake_quant"
    assert qat["group_size"] == 128 and not qat["group_size_conflict"]
    assert any("GROUP_SIZE = 128" in where for where in qat["group_size_from"])


def test_a_qat_checkpoint_is_fused_with_the_group_size_of_its_evidence(qat_dir, fused_qat):
    out, _, report, document = fused_qat
    assert document["fused"] is True and document["tensors_quantized"] == 2 * 7
    assert document["group_size"] == 128 and document["group_size_source"] == "evidence"
    assert "GROUP_SIZE = 128" in document["group_size_detail"]
    assert "bundled modeling_bitcpm.py defines a ternary fake quantizer" in document["decision"]
    assert document["qat_evidence"]["found"] is True
    assert document["all_linears_ternary"] is True and document["ternary_expected"] is True
    latent, fused = torch.load(qat_dir / "pytorch_model.bin", weights_only=True), load_dir(out)
    for name, weight in latent.items():
        expected = fake_quant(weight, 128).to(weight.dtype) if is_quantized_linear(name) else weight
        assert torch.equal(fused[name], expected), name
    # the fused model is a stock Llama: no auto_map, no QAT code beside it
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert document["side_files_left_out"] == ["modeling_bitcpm.py"] and not list(out.glob("*.py"))
    assert [r["key"] for r in report["removed"]] == ["auto_map"]
    assert report["transformers_config_class"] == "LlamaConfig"


def test_fused_logits_equal_the_bundled_qat_forward(qat_dir, fused_qat):
    """The checkpoint's own forward (AutoModelForCausalLM, trust_remote_code) and the fused plain Llama on the same
    tokens: the same logits, in bfloat16 (the weights' dtype) exactly, in float32 within the bf16 rounding of the
    stored fused weights."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    out, introspection, _, document = fused_qat
    check = document["qat_forward_check"]
    assert check["status"] == "passed" and check["identical"] is True and check["dtype"] == "bfloat16"
    assert check["model_class"] == "modeling_bitcpm.BitCPMForCausalLM"
    config = json.loads((out / "config.json").read_text()) | {"auto_map": AUTO_MAP}
    ids = token_ids(1024, tokens=40, seed=7)
    with repaired_view(qat_dir, config, trust_remote_code=True) as view:
        qat = AutoModelForCausalLM.from_pretrained(view, trust_remote_code=True, dtype=torch.bfloat16).eval()
    assert type(qat).__name__ == "BitCPMForCausalLM"
    assert type(qat.model.layers[0].mlp.down_proj).__name__ == "TernaryLinear"
    fused = LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        assert torch.equal(qat(ids).logits, fused(ids).logits)


def test_the_proof_catches_a_wrong_quantizer(qat_dir, tmp_path):
    """A fusion with another quantizer (0.7 x absmax scale) fails the check against the bundled forward."""
    import npuport.weights.fuse as fuse_module

    def absmax(weight, group_size, eps=1e-5):
        w = weight.float().reshape(weight.shape[0], -1, group_size)
        scale = (0.7 * w.abs().amax(dim=-1, keepdim=True)).clamp(min=eps)
        return (torch.clamp(torch.round(w / scale), -1, 1) * scale).reshape(weight.shape)

    original = fuse_module.fake_quant
    fuse_module.fake_quant = absmax
    try:
        _, _, document = convert(qat_dir, tmp_path / "m", trust_remote_code=True)
    finally:
        fuse_module.fake_quant = original
    check = document["qat_forward_check"]
    assert check["status"] == "failed" and check["max_abs_logit_diff"] > check["tolerance"]
    from npuport.report.messages import Messages
    from npuport.report.verdicts import FAILED, fusion_verdict

    assert fusion_verdict(Messages("en"), document).status == FAILED


def test_without_trust_remote_code_the_proof_is_not_run_and_says_why(qat_dir, tmp_path):
    _, report, document = convert(qat_dir, tmp_path / "m")
    check = document["qat_forward_check"]
    assert check["status"] == "not run" and "trust_remote_code is false" in check["reason"]
    assert "modeling_bitcpm.py" in check["reason"]
    assert document["fused"] is True and report["transformers_config_class"] == "LlamaConfig"


def test_an_already_ternary_qat_checkpoint_is_only_converted(tmp_path):
    src = write_qat_checkpoint(tmp_path / "ckpt", ternary=True)
    _, _, document = convert(src, tmp_path / "m", trust_remote_code=True)
    assert "already ternary" in document["decision"] and document["fused"] is False
    assert document["tensors_quantized"] == 0 and document["all_linears_ternary"] is True
    assert document["ternary_expected"] is True and document["qat_evidence"]["found"] is True
    assert document["qat_forward_check"]["status"] == "not run"  # nothing was fake-quantized
    assert document["tensors_byte_copied"] == len(document["tensors"])


def test_a_contradicting_group_size_is_refused_in_one_line(qat_dir, tmp_path):
    with pytest.raises(NpuportError) as error:
        convert(qat_dir, tmp_path / "m", group_size=64)
    message = str(error.value)
    assert message == (
        "fuse.group_size: configured 64 contradicts the checkpoint's group size 128 (modeling_bitcpm.py line 13: "
        "GROUP_SIZE = 128; modeling_bitcpm.py line 18: parameter group_size of ternary_fake_quant defaults to 128)"
    )
    assert "\n" not in message and not (tmp_path / "m").exists()


def test_a_qat_class_name_becomes_the_stock_llama(tmp_path):
    src = write_qat_checkpoint(tmp_path / "ckpt", config_edits={"architectures": ["BitCPMForCausalLM"]})
    _, report, _ = convert(src, tmp_path / "m")
    assert [(r["key"], r["value"]) for r in report["removed"]][1] == ("architectures", ["BitCPMForCausalLM"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_an_agreeing_group_size_is_fine_and_the_evidence_is_the_source(qat_dir, tmp_path):
    _, _, document = convert(qat_dir, tmp_path / "m", group_size=128)
    assert document["group_size_source"] == "evidence" and "fuse.group_size agrees" in document["group_size_detail"]


# --- the accepted forms of evidence, and what is not evidence ---------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "group"),
    [
        ({"quantization_config": {"quant_method": "ternary", "group_size": 64}}, 64),
        ({"quantization_config": {"quant_method": "BitCPM"}}, None),
        ({"ternary": True}, None),
        ({"ternary_qat": {"group_size": 32}}, 32),
        ({"bitnet": {}}, None),
    ],
)
def test_config_declarations(edits, group):
    qat = find_evidence(Path("/nonexistent"), edits, [])
    assert qat["found"] is True and qat["evidence"][0]["kind"] == "config"
    assert qat["group_size"] == group


@pytest.mark.parametrize(
    "edits",
    [
        {"quantization_config": {"quant_method": "bitnet"}},  # transformers' BitNet: packed / per-tensor scale
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        {"ternary": False},
        {"bitnet": "yes"},
    ],
)
def test_what_is_not_a_declaration(edits):
    assert find_evidence(Path("/nonexistent"), edits, [])["found"] is False


def test_a_declared_checkpoint_is_fused_with_the_declared_group_size(tmp_path):
    declaration = {"quantization_config": {"quant_method": "ternary", "group_size": 64}}
    src = write_qat_checkpoint(tmp_path / "ckpt", code=False, config_edits=declaration)
    _, report, document = convert(src, tmp_path / "m")
    assert document["fused"] is True and document["group_size"] == 64 and document["group_size_source"] == "evidence"
    assert document["qat_forward_check"]["status"] == "not run"  # no model code of its own
    assert "no model code" in document["qat_forward_check"]["reason"]
    assert [r["key"] for r in report["removed"]] == ["quantization_config"]
    assert "quantization_config" not in json.loads((tmp_path / "m" / "config.json").read_text())
    tensors = load_dir(tmp_path / "m")
    assert all(bool(groups_are_ternary(t, 64).all()) for n, t in tensors.items() if is_quantized_linear(n))


def test_evidence_naming_two_group_sizes_is_refused_when_fusing(tmp_path):
    declaration = {"quantization_config": {"quant_method": "ternary", "group_size": 64}}
    src = write_qat_checkpoint(tmp_path / "ckpt", config_edits=declaration)  # the code says 128
    introspection = introspect_checkpoint(src)
    assert introspection["derived"]["qat"]["group_size_conflict"] is True
    with pytest.raises(NpuportError, match=r"evidence names different group sizes \(128: .*; 64: config.json"):
        plan_fusion("auto", None, introspection)
    with pytest.raises(NpuportError, match=r"configured 128 contradicts the checkpoint's group size 64 \(config.json"):
        plan_fusion("auto", 128, introspection)
    assert plan_fusion("never", None, introspection).group_size_source == "default"  # nothing to quantize


def test_quantizer_tensors_are_evidence():
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight_quantizer.alpha"]
    qat = find_evidence(Path("/nonexistent"), {}, names)
    assert qat["found"] is True
    assert qat["evidence"][0]["modules"] == ["model.layers.0.self_attn.q_proj.weight_quantizer"]
    # packed int formats and bitsandbytes state are not ternary QAT quantizers
    others = ["model.layers.0.mlp.up_proj.qweight", "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"]
    assert find_evidence(Path("/nonexistent"), {}, others)["found"] is False


CODE_NOT_TERNARY = """
import torch

def int8_fake_quant(w):
    scale = w.abs().amax() / 127
    return torch.clamp(torch.round(w / scale), -128, 127) * scale
"""

CODE_READS_CONFIG = """
import torch

class Quantizer(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.group = getattr(config, "quant_group_size", 128)

    def forward(self, w):
        g = w.reshape(-1, self.group)
        s = torch.mean(torch.abs(g), dim=-1, keepdim=True).clamp(min=1e-5)
        return (g / s).round().clamp(min=-1, max=1) * s
"""


@pytest.mark.parametrize(
    ("code", "config", "found", "group"),
    [
        (CODE_NOT_TERNARY, {}, False, None),
        (CODE_READS_CONFIG, {}, True, 128),
        (CODE_READS_CONFIG, {"quant_group_size": 64}, True, 64),
        ("def broken(:\n", {}, False, None),
    ],
    ids=["int8-not-ternary", "getattr-default", "config-key", "syntax-error"],
)
def test_bundled_code_is_read_as_text(tmp_path, code, config, found, group):
    (tmp_path / "modeling_x.py").write_text(code)
    qat = find_evidence(tmp_path, config | {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}, [])
    assert qat["found"] is found and qat["group_size"] == group
    if found:
        assert qat["evidence"][0]["scale"] == "absmean"
    if "broken" in code:
        assert qat["notes"] == ["modeling_x.py: not parsed as Python (SyntaxError)"]


def test_bundled_code_is_never_run_and_its_relative_imports_are_read(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "modeling_x.py").write_text(
        f"from .quant import ternary\nopen({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n"
    )
    (tmp_path / "quant.py").write_text(CODE_READS_CONFIG.replace("Quantizer", "ternary"))
    qat = find_evidence(tmp_path, {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}, [])
    assert not marker.exists()
    (finding,) = qat["evidence"]
    assert finding["file"] == "quant.py" and finding["imported_by"] == "modeling_x.py"


def test_bundled_code_outside_the_checkpoint_is_refused_not_read(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text(make.MODELING_SOURCE)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "modeling_x.py").symlink_to(outside)
    qat = find_evidence(tmp_path / "ckpt", {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}, [])
    assert qat["found"] is False and "outside" in qat["notes"][0]


def test_compare_logits_tolerance():
    reference = torch.tensor([[10.0, -2.0, 0.5]])
    assert compare_logits(reference, reference.clone(), torch.bfloat16)["identical"] is True
    near = compare_logits(reference, reference + 0.05, torch.bfloat16)
    assert near["equal_within_tolerance"] and not near["identical"]  # 0.05 < 4 x 2^-7 x 10
    assert not compare_logits(reference, reference + 1.0, torch.bfloat16)["equal_within_tolerance"]
