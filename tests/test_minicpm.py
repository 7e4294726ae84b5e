"""MiniCPM: family detection, the fold of its scales into a plain Llama, and proof that the fold is exact.

The proof runs one tiny MiniCPM checkpoint (remote code + auto_map, tied head, ternary projections, LongRoPE,
head_dim 32, scale_emb 12, scale_depth 1.4, hidden/dim_model_base = 6) on four runtimes, all float32:
(c) its own remote code in transformers, (a) vLLM's native MiniCPMForCausalLM, unconverted;
(b) the folded LlamaForCausalLM in transformers (no remote code) and in vLLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoint_factory import Arch, llama_state_dict, write_checkpoint
from conftest import TEST_KV_CACHE_BYTES
from minicpm_factory import GROUP_SIZE, MiniCPMArch, minicpm_state_dict, write_minicpm_checkpoint
from safetensors.torch import load_file, save_file

from npuport.core.errors import NpuportError
from npuport.weights.fuse import INDEX_NAME, fuse
from npuport.weights.introspect import introspect_checkpoint
from npuport.weights.minicpm import (
    LM_HEAD,
    FoldPlan,
    detect_family,
    fold_plan,
    llama_config,
    model_code_files,
    scales_from_config,
)
from npuport.weights.repair_config import repair
from npuport.weights.ternary import fake_quant, groups_are_ternary, is_quantized_linear
from npuport.weights.tokenizer_check import check_checkpoint_tokenizer

PROMPTS = [
    "Hello, how are you?",
    "Explain the concept of ternary quantization in one sentence.",
    "什么是三元量化?",
    "The capital of France is",
]
MAX_TOKENS = 12
SEED = 3  # every greedy step of this seed's model has a top-1/top-2 gap above 0.01 (checked below)
ARCH = MiniCPMArch()
RESIDUAL = ARCH.scale_depth / ARCH.num_hidden_layers**0.5
DIVISOR = ARCH.hidden_size / ARCH.dim_model_base
# Tolerances on |logprob difference|, float32 everywhere. The fold only moves a constant multiplication across a
# matmul (and vLLM uses other CPU kernels for the same math), so what is left is float32 rounding: measured on
# this host, transformers Llama vs the remote-code reference 2.3e-5 (whole vocabulary, every position) and vLLM
# (either model) vs the reference 1.8e-5 (every reported top-5 logprob). The bounds leave 4x and 10x for other
# CPUs; a wrong fold misses them by orders of magnitude (test_a_wrong_fold_is_caught).
TF_TOL = 1e-4
ENGINE_TOL = 2e-4


def convert(src: Path, out: Path, **fuse_settings) -> dict:
    """introspect -> repair -> fuse, as the pipeline runs them."""
    introspection = introspect_checkpoint(src)
    config, _ = repair(src / "config.json", introspection)
    return fuse(src, config, introspection, out, **({"group_size": GROUP_SIZE} | fuse_settings))


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values())):
        tensors.update(load_file(path / shard))
    return tensors


@pytest.fixture(scope="module")
def minicpm_dir(tmp_path_factory) -> Path:
    return write_minicpm_checkpoint(
        tmp_path_factory.mktemp("minicpm") / "ckpt", ARCH, minicpm_state_dict(ARCH, seed=SEED)
    )


@pytest.fixture(scope="module")
def folded(minicpm_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("folded") / "model"
    # small shards: the untied head must land in the index like any other tensor
    return out, convert(minicpm_dir, out, max_shard_size=200_000)


@pytest.fixture(scope="module")
def prompt_ids(folded) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folded[0])  # the folded dir loads without remote code
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


# -- detection ----------------------------------------------------------------------------------------------


def test_llama_config_is_family_llama():
    family = detect_family(Arch().config(), ["model.embed_tokens.weight", "lm_head.weight"])
    assert family == {"family": "llama", "source": family["source"], "scales": None, "problems": []}


def test_minicpm_config_is_family_minicpm_with_its_scales():
    family = detect_family(ARCH.config())
    assert family["family"] == "minicpm" and family["problems"] == []
    assert family["scales"] == {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 16}
    assert "architectures MiniCPMForCausalLM" in family["source"] and "scale_emb 12.0" in family["source"]
    # the scale keys alone are enough to tell (a config whose architectures were edited to Llama)
    renamed = ARCH.config() | {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    assert detect_family(renamed)["family"] == "minicpm"
    # transformers' native port names it minicpm4
    native = ARCH.config() | {"architectures": ["MiniCPM4ForCausalLM"], "model_type": "minicpm4"}
    assert "model_type minicpm4" in detect_family(native)["source"]


@pytest.mark.parametrize(
    ("edit", "names", "problem"),
    [
        ({"dim_model_base": None}, [], "dim_model_base is None"),
        ({"scale_depth": 0}, [], "scale_depth is 0"),
        ({"num_experts": 8}, [], "num_experts 8"),
        ({}, ["model.layers.0.mlp.experts.0.w1.weight"], "expert tensors under model.layers.0.mlp"),
        ({"hidden_act": "fatrelu"}, [], "hidden_act 'fatrelu'"),
    ],
)
def test_what_blocks_a_fold_is_named(edit, names, problem):
    config = ARCH.config() | edit
    family = detect_family(config, names)
    assert family["family"] == "minicpm"
    assert any(problem in p for p in family["problems"]), family["problems"]
    with pytest.raises(NpuportError, match="cannot fold MiniCPM"):
        scales_from_config(config, names)


def test_introspection_reports_the_family(minicpm_dir, tmp_path):
    doc = introspect_checkpoint(minicpm_dir)
    assert doc["derived"]["family"] == "minicpm"
    assert doc["derived"]["family_scales"] == {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 16}
    assert "MiniCPMForCausalLM" in doc["sources"]["family"]
    assert doc["derived"]["tie_word_embeddings"] is True  # no lm_head tensor
    llama = write_checkpoint(tmp_path / "llama", llama_state_dict(Arch()), config=Arch().config())
    doc = introspect_checkpoint(llama)
    assert doc["derived"]["family"] == "llama" and doc["derived"]["family_scales"] is None


def test_repair_loads_a_remote_code_config_when_trusted(minicpm_dir):
    """With trust_remote_code the load check needs the shipped configuration_minicpm.py beside config.json."""
    introspection = introspect_checkpoint(minicpm_dir)
    _, report = repair(minicpm_dir / "config.json", introspection, trust_remote_code=True)
    assert report["transformers_config_class"] == "MiniCPMConfig"
    _, report = repair(minicpm_dir / "config.json", introspection)
    assert report["transformers_config_class"].startswith("not checked")


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_tokenizer_of_a_minicpm_download_is_checked(minicpm_dir, trust_remote_code):
    """Untrusted, the MiniCPM config.json (auto_map) is kept away from AutoTokenizer, which cannot parse it."""
    config, _ = repair(minicpm_dir / "config.json", introspect_checkpoint(minicpm_dir), trust_remote_code)
    checked = check_checkpoint_tokenizer(minicpm_dir, config, trust_remote_code)
    assert checked["tokens"] == 1024 and checked["embedding_rows"] == ARCH.vocab_size


# -- the plan -------------------------------------------------------------------------------------------------


def test_model_code_files_are_what_auto_map_loads_for_config_and_model():
    auto_map = ARCH.config()["auto_map"] | {
        "AutoTokenizer": ["tokenization_minicpm.MiniCPMTokenizer", None],
        "AutoModelForSeq2SeqLM": "other/repo--modeling_other.Model",  # code from another hub repo: not a file here
    }
    files = model_code_files({"auto_map": auto_map})
    assert files == {"configuration_minicpm.py", "modeling_minicpm.py"}
    assert model_code_files({}) == set()


def test_llama_config_drops_what_only_minicpm_reads():
    config = llama_config(ARCH.config())
    for key in ("auto_map", "scale_emb", "scale_depth", "dim_model_base"):
        assert key not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False
    assert config["rope_scaling"] == ARCH.config()["rope_scaling"] and config["hidden_size"] == ARCH.hidden_size


def test_plan_factor_per_tensor_name():
    names = list(minicpm_state_dict(ARCH))
    plan = FoldPlan(scales_from_config(ARCH.config()), ARCH.config(), names)
    assert plan.tied and plan.embed == "model.embed_tokens.weight"
    assert plan.factor("model.embed_tokens.weight") == 12.0
    assert plan.factor(LM_HEAD) == pytest.approx(1 / DIVISOR)
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.0.self_attn.o_proj.bias"):  # fmt: skip
        assert plan.factor(name) == pytest.approx(RESIDUAL), name
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):  # fmt: skip
        assert plan.factor(name) == 1.0 and plan.transform(name) is None, name
    assert [n for n, _ in plan.derived("model.embed_tokens.weight")] == [LM_HEAD]
    assert plan.drops(LM_HEAD)  # a stored head that aliases the tied embedding is replaced
    untied = FoldPlan(plan.scales, ARCH.config() | {"tie_word_embeddings": False}, [*names, LM_HEAD])
    assert not untied.tied and untied.derived("model.embed_tokens.weight") == [] and not untied.drops(LM_HEAD)
    assert plan.describe()["notes"] == []
    sparse = FoldPlan(plan.scales, ARCH.config() | {"sparse_config": {"topk": 64}}, names)
    assert "attends densely" in sparse.describe()["notes"][0]


def test_plan_follows_the_mode(minicpm_dir):
    minicpm_intro = {"derived": {"family": "minicpm"}}
    llama_intro = {"derived": {"family": "llama"}}
    names = list(minicpm_state_dict(ARCH))
    assert fold_plan("never", ARCH.config(), minicpm_intro, names) is None
    assert fold_plan("auto", ARCH.config(), minicpm_intro, names) is not None
    assert fold_plan("auto", Arch().config(), llama_intro, names) is None
    assert fold_plan("auto", ARCH.config(), {}, names) is not None  # an introspection without a family
    with pytest.raises(NpuportError, match="no MiniCPM scales"):
        fold_plan("fold", Arch().config(), llama_intro, names)
    with pytest.raises(NpuportError, match="not one of auto, fold, never"):
        fold_plan("always", ARCH.config(), minicpm_intro, names)


# -- the fold in fuse -----------------------------------------------------------------------------------------


def test_fold_writes_scaled_weights_and_an_untied_head(minicpm_dir, folded):
    out, doc = folded
    source, result = load_file(minicpm_dir / "model.safetensors"), load_dir(out)
    assert set(result) == set(source) | {LM_HEAD}
    embed = source["model.embed_tokens.weight"]
    assert torch.equal(result["model.embed_tokens.weight"], embed * 12.0)
    assert torch.equal(result[LM_HEAD], embed / DIVISOR)
    for name, tensor in source.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert torch.equal(result[name], tensor * RESIDUAL), name
        elif name != "model.embed_tokens.weight":
            assert torch.equal(result[name], tensor), name
    assert len(doc["shards"]) > 1
    head = next(r for r in doc["tensors"] if r["name"] == LM_HEAD)
    assert head["derived_from"] == "model.embed_tokens.weight" and head["minicpm_factor"] == pytest.approx(1 / 6)


def test_folded_config_and_fuse_document(folded):
    out, doc = folded
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False and "auto_map" not in config and "scale_emb" not in config
    assert config["head_dim"] == 32  # repaired from the shapes; MiniCPM derives it from hidden / heads
    minicpm = doc["minicpm"]
    assert minicpm["mode"] == "auto" and minicpm["folded"] is True
    assert "plain LlamaForCausalLM" in minicpm["decision"]
    assert minicpm["scales"]["residual_scale"] == pytest.approx(RESIDUAL)
    assert minicpm["scales"]["logit_divisor"] == pytest.approx(DIVISOR)
    assert "untied by the fold" in minicpm["lm_head_source"]
    # the checkpoint was already ternary: auto fusion only converted it, and the folded linears stay ternary
    assert doc["tensors_quantized"] == 0 and doc["all_linears_ternary"] is True
    # nothing loads MiniCPM's own modules any more; the tokenizer files are all there
    assert doc["side_files_left_out"] == ["configuration_minicpm.py", "modeling_minicpm.py"]
    assert not list(out.glob("*.py")) and {"tokenizer.json", "tokenizer_config.json"} <= set(doc["side_files"])


def test_folded_linears_stay_ternary(folded):
    tensors = load_dir(folded[0])
    linears = [n for n in tensors if is_quantized_linear(n)]
    assert len(linears) == 7 * ARCH.num_hidden_layers
    for name in linears:
        assert bool(groups_are_ternary(tensors[name], GROUP_SIZE).all()), name


def test_latent_weights_are_quantized_before_they_are_scaled(tmp_path):
    latent = minicpm_state_dict(ARCH, ternary=False, seed=SEED)
    src = write_minicpm_checkpoint(tmp_path / "latent", ARCH, latent)
    # the evidence that these are ternary QAT weights (auto fuses nothing without): a config.json declaration
    config = json.loads((src / "config.json").read_text()) | {"ternary": {"group_size": GROUP_SIZE}}
    (src / "config.json").write_text(json.dumps(config))
    doc = convert(src, tmp_path / "out")
    assert doc["tensors_quantized"] == 7 * ARCH.num_hidden_layers and doc["all_linears_ternary"] is True
    assert doc["group_size_source"] == "evidence" and doc["minicpm"]["folded"] is True
    assert "ternary" not in json.loads((tmp_path / "out" / "config.json").read_text())
    result = load_dir(tmp_path / "out")
    for name, weight in latent.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert torch.equal(result[name], fake_quant(weight, GROUP_SIZE) * RESIDUAL), name
        elif is_quantized_linear(name):
            assert torch.equal(result[name], fake_quant(weight, GROUP_SIZE)), name
    # the same model as MiniCPM running its QAT forward: fake_quant(latent) inside, scales at run time
    qat = {n: fake_quant(w, GROUP_SIZE) if is_quantized_linear(n) else w for n, w in latent.items()}
    reference = write_minicpm_checkpoint(tmp_path / "qat", ARCH, qat)
    ids = torch.tensor([[1, 17, 300, 42, 901, 5, 77, 640]])
    ref, folded = _log_probs(_remote_model(reference), ids), _log_probs(_llama_model(tmp_path / "out"), ids)
    assert (ref - folded).abs().max().item() < TF_TOL


def test_bfloat16_checkpoint_is_folded_in_float32_and_rounded_once(tmp_path):
    src = write_minicpm_checkpoint(tmp_path / "bf16", ARCH, minicpm_state_dict(ARCH, seed=SEED), dtype=torch.bfloat16)
    convert(src, tmp_path / "out")
    source, result = load_file(src / "model.safetensors"), load_dir(tmp_path / "out")
    embed = source["model.embed_tokens.weight"]
    assert result["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert torch.equal(result["model.embed_tokens.weight"], (embed.float() * 12.0).bfloat16())
    assert torch.equal(result[LM_HEAD], (embed.float() / DIVISOR).bfloat16())
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    assert torch.equal(result[o_proj], (source[o_proj].float() * RESIDUAL).bfloat16())
    assert bool(groups_are_ternary(result[o_proj], GROUP_SIZE).all())


def test_untied_checkpoint_keeps_its_own_head(tmp_path):
    arch = MiniCPMArch(tie_word_embeddings=False)
    state = minicpm_state_dict(arch, seed=SEED)
    src = write_minicpm_checkpoint(tmp_path / "untied", arch, state)
    doc = convert(src, tmp_path / "out")
    result = load_dir(tmp_path / "out")
    assert torch.equal(result[LM_HEAD], state[LM_HEAD] / DIVISOR)
    assert torch.equal(result["model.embed_tokens.weight"], state["model.embed_tokens.weight"] * 12.0)
    assert doc["minicpm"]["lm_head_source"] == LM_HEAD
    ids = torch.tensor([[1, 17, 300, 42, 901, 5]])
    ref, folded = _log_probs(_remote_model(src), ids), _log_probs(_llama_model(tmp_path / "out"), ids)
    assert (ref - folded).abs().max().item() < TF_TOL


def test_never_leaves_minicpm_as_it_is(minicpm_dir, tmp_path):
    doc = convert(minicpm_dir, tmp_path / "out", minicpm="never")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["MiniCPMForCausalLM"] and "auto_map" in config
    assert doc["minicpm"]["folded"] is False and "left in config.json" in doc["minicpm"]["decision"]
    assert {"configuration_minicpm.py", "modeling_minicpm.py"} <= set(doc["side_files"])  # auto_map needs them
    source, result = load_file(minicpm_dir / "model.safetensors"), load_dir(tmp_path / "out")
    assert set(result) == set(source) and all(torch.equal(result[n], source[n]) for n in source)


def test_fold_on_a_llama_checkpoint_is_refused(tmp_path):
    src = write_checkpoint(
        tmp_path / "llama", llama_state_dict(Arch(vocab_size=1024)), config=Arch(vocab_size=1024).config()
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).write_bytes((Path(__file__).parents[1] / "resources/tiny-bitcpm" / name).read_bytes())
    with pytest.raises(NpuportError, match="no MiniCPM scales"):
        convert(src, tmp_path / "out", minicpm="fold")
    assert not (tmp_path / "out").exists()
    assert convert(src, tmp_path / "auto")["minicpm"]["folded"] is False


# -- equivalence: transformers --------------------------------------------------------------------------------


def _remote_model(directory: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(model).__name__ == "MiniCPMForCausalLM"
    return model


def _llama_model(directory: Path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()  # no remote code
    assert type(model) is LlamaForCausalLM
    return model


def _log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0].double(), dim=-1)


def greedy(model, prompt: list[int], steps: int) -> dict:
    """Greedy decoding with a full forward per step (the fixture's remote code keeps no KV cache)."""
    ids, tokens, gaps = list(prompt), [], []
    for _ in range(steps):
        top = _log_probs(model, torch.tensor([ids]))[-1].topk(2)
        tokens.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        ids.append(tokens[-1])
    return {"token_ids": tokens, "min_gap": min(gaps), "log_probs": _log_probs(model, torch.tensor([ids]))}


@pytest.fixture(scope="module")
def hf_runs(minicpm_dir, folded, prompt_ids) -> dict:
    reference, llama = _remote_model(minicpm_dir), _llama_model(folded[0])
    return {
        "minicpm": [greedy(reference, ids, MAX_TOKENS) for ids in prompt_ids],
        "llama": [greedy(llama, ids, MAX_TOKENS) for ids in prompt_ids],
    }


def test_transformers_llama_decodes_like_the_minicpm_reference(hf_runs):
    for reference, llama in zip(hf_runs["minicpm"], hf_runs["llama"], strict=True):
        assert reference["min_gap"] > 0.01  # no near-tie: equal tokens are a real check
        assert llama["token_ids"] == reference["token_ids"]
        # teacher-forced over prompt + output, every position, the whole vocabulary
        assert (llama["log_probs"] - reference["log_probs"]).abs().max().item() < TF_TOL


def test_a_wrong_fold_is_caught(minicpm_dir, folded, tmp_path):
    """Leaving one scale out (o_proj of layer 0 not multiplied by scale_depth / sqrt(L)) is far outside TF_TOL."""
    out, _ = folded
    tensors = load_dir(out)
    name = "model.layers.0.self_attn.o_proj.weight"
    tensors[name] = load_file(minicpm_dir / "model.safetensors")[name]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file(tensors, wrong / "model.safetensors")
    (wrong / "config.json").write_text((out / "config.json").read_text())
    ids = torch.tensor([[1, 17, 300, 42, 901, 5, 77, 640]])
    ref, bad = _log_probs(_remote_model(minicpm_dir), ids), _log_probs(_llama_model(wrong), ids)
    assert (ref - bad).abs().max().item() > 100 * TF_TOL


# -- equivalence: vLLM ----------------------------------------------------------------------------------------

ENGINE_SCRIPT = textwrap.dedent("""
    import json
    import os
    import sys


    def run(model, trust_remote_code, prompts, max_tokens, kv_cache_bytes):
        from vllm import LLM, SamplingParams

        from npuport.engines.vllm_runner import shut_down

        llm = LLM(model=model, trust_remote_code=trust_remote_code, dtype="float32", enforce_eager=True,
                  kv_cache_memory_bytes=kv_cache_bytes, max_model_len=256, seed=0, distributed_executor_backend="uni")
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=5, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        runs = [{"token_ids": list(o.outputs[0].token_ids),
                 "top": [{str(t): lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs]}
                for o in outputs]
        architecture = llm.llm_engine.model_config.architecture
        shut_down(llm, set(), 0.0)  # the pipeline's offline-engine shutdown, so the next engine starts clean
        return {"architecture": architecture, "runs": runs}


    if __name__ == "__main__":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: one vLLM import for both
        models, prompts, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
        max_tokens, kv_cache_bytes = int(sys.argv[4]), int(sys.argv[5])
        results = {name: run(model, trust, prompts, max_tokens, kv_cache_bytes)
                   for name, (model, trust) in models.items()}
        with open(out, "w") as f:
            json.dump(results, f)
""")


def run_vllm(models: dict[str, tuple[Path, bool]], prompts: list[list[int]], work: Path) -> dict:
    """vLLM on each model (name -> (directory, trust_remote_code)), float32, CPU backend here: one process, the
    engines one after the other inside it."""
    script, out = work / "engine.py", work / "runs.json"
    script.write_text(ENGINE_SCRIPT)
    spec = {name: [str(model), trust] for name, (model, trust) in models.items()}
    args = [sys.executable, str(script), json.dumps(spec), json.dumps(prompts), str(out), str(MAX_TOKENS),
            str(TEST_KV_CACHE_BYTES)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def vllm_runs(minicpm_dir, folded, prompt_ids, tmp_path_factory) -> dict:
    """The unconverted MiniCPM (remote code) and the folded Llama, in one vLLM process."""
    models = {"minicpm": (minicpm_dir, True), "llama": (folded[0], False)}
    return run_vllm(models, prompt_ids, tmp_path_factory.mktemp("vllm"))


@pytest.mark.engine
def test_vllm_runs_minicpm_natively_and_the_fold_as_llama(vllm_runs):
    assert vllm_runs["minicpm"]["architecture"] == "MiniCPMForCausalLM"
    assert vllm_runs["llama"]["architecture"] == "LlamaForCausalLM"


@pytest.mark.engine
def test_all_four_runtimes_decode_the_same_tokens(vllm_runs, hf_runs):
    for i, reference in enumerate(hf_runs["minicpm"]):
        assert vllm_runs["minicpm"]["runs"][i]["token_ids"] == reference["token_ids"], PROMPTS[i]
        assert vllm_runs["llama"]["runs"][i]["token_ids"] == reference["token_ids"], PROMPTS[i]
        assert hf_runs["llama"][i]["token_ids"] == reference["token_ids"], PROMPTS[i]


@pytest.mark.engine
def test_vllm_logprobs_match_the_reference(vllm_runs, hf_runs, prompt_ids):
    """Every top-5 logprob vLLM reports, on both models, against the remote-code reference's logprob of the same
    token at the same position."""
    for engine in ("minicpm", "llama"):
        for ids, run, reference in zip(prompt_ids, vllm_runs[engine]["runs"], hf_runs["minicpm"], strict=True):
            for step, top in enumerate(run["top"]):
                expected = reference["log_probs"][len(ids) - 1 + step]
                worst = max(abs(lp - expected[int(t)].item()) for t, lp in top.items())
                assert worst < ENGINE_TOL, (engine, step, worst)


# -- the pipeline -------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_pipeline_folds_a_minicpm_source(workflow_copy):
    """download -> introspect -> repair_config -> fuse under the real Snakefile, with default settings and
    trust_remote_code false: the folded model/ needs no remote code."""
    from conftest import run_snakemake

    write_minicpm_checkpoint(workflow_copy / "minicpm-src", ARCH, minicpm_state_dict(ARCH, seed=SEED))
    config = {
        "models": [{"name": "tiny-minicpm", "source": {"kind": "local", "path": "minicpm-src"}}],
        "fuse": {"group_size": GROUP_SIZE},
    }
    (workflow_copy / "minicpm.yaml").write_text(json.dumps(config))
    run_snakemake(workflow_copy, "results/tiny-minicpm/model", "--configfile", "minicpm.yaml")
    results = workflow_copy / "results" / "tiny-minicpm"
    introspection = json.loads((results / "introspect.json").read_text())
    assert introspection["derived"]["family"] == "minicpm"
    repair_report = json.loads((results / "repair.json").read_text())
    assert repair_report["transformers_config_class"].startswith("not checked")
    fused = json.loads((results / "model" / "fuse.json").read_text())
    assert fused["minicpm"]["folded"] is True and fused["minicpm"]["mode"] == "auto"
    config = json.loads((results / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
