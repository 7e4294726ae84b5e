"""Build a synthetic checkpoint with the real BitCPM4-CANN-1B shapes, for measuring the pipeline at full scale.

    python resources/make_realshape.py [OUT] [--config download|correct] [--layers 28] [--seed 0]

OUT defaults to results/realshape-synthetic-src/ (git-ignored). Writes, like the real download repo:
- pytorch_model.bin: one torch.save'd state dict, bfloat16, ~3.24 GB: hidden 2048, 28 layers, 16 heads,
  2 KV heads, head_dim 128, intermediate 6144, vocab 73,448, untied lm_head. The seven projections of every
  layer are already fused ternary (per group of 128 input features: {-a, 0, +a}, a random per group), so
  `fuse: auto` converts the format only; embeddings and lm_head are N(0, 0.02). Random weights: the text
  the model generates is noise, but every byte an engine reads is real.
- config.json: --config download (default) writes the download repo's config whose hidden_size,
  num_hidden_layers, num_attention_heads and intermediate_size are wrong (2560/32/32/10240, as in the
  reference report), so introspect/repair_config do real work; --config correct writes the true values.
  LongRoPE with equal long/short factors (64 = head_dim / 2 values; the values are a synthetic ramp, not the
  real model's), max_position_embeddings = original_max_position_embeddings = 32768.
- generation_config.json: bos 1, eos [2, 73440].
- tokenizer.json (+ tokenizer_config.json, special_tokens_map.json): a synthetic byte-level BPE with exactly
  73,448 tokens built with the `tokenizers` library: <unk> <s> </s> at 0-2, the 256 byte symbols, then
  deterministic merges (every byte pair, then pairs + one byte) up to id 73439, and the chat/tool special
  tokens at 73440-73447 (<|im_end|> = 73440 as in the real model). It prepends <s> like Llama's tokenizer and
  round-trips any UTF-8 text (Chinese included).

Deterministic: the same files for the same seed and torch/tokenizers versions. Peak memory about the
checkpoint size (the state dict is built in RAM, then saved); takes ~1-2 min and 3.3 GB of disk.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_model  # noqa: E402
from realshape_spec import REAL, projection_shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "realshape-synthetic-src"

# What the reference report found in the download repo's config.json (the weights say otherwise).
DOWNLOAD_REPO_WRONG = {
    "hidden_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 10240,
}
GROUP_SIZE = 128
MAX_POSITIONS = 32768

BOS_ID, EOS_ID, IM_END_ID = 1, 2, 73440
BASE_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2
# ids 73440..73447, the layout of the MiniCPM3/4 tokenizers (only <|im_end|> = 73440 is from the model card).
TAIL_SPECIALS = [
    "<|im_end|>",
    "<|im_start|>",
    "<|tool_call|>",
    "<|execute_start|>",
    "<|execute_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# ---------------------------------------------------------------- config files


def longrope_factors(head_dim: int = REAL["head_dim"]) -> list[float]:
    """head_dim / 2 factors rising smoothly from 1.0 (synthetic; equal long and short, as in BitCPM4)."""
    n = head_dim // 2
    return [round(1.0 + 15.0 * (i / (n - 1)) ** 2, 4) for i in range(n)]


def correct_config(layers: int = REAL["num_hidden_layers"]) -> dict:
    factors = longrope_factors()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **REAL,
        "num_hidden_layers": layers,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-05,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "rope_type": "longrope",
            "long_factor": factors,
            "short_factor": list(factors),
            "original_max_position_embeddings": MAX_POSITIONS,
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def download_config(layers: int = REAL["num_hidden_layers"]) -> dict:
    """The config the real download repo ships: four size fields wrong (layers wrong by the same +4 here)."""
    return {**correct_config(layers), **DOWNLOAD_REPO_WRONG, "num_hidden_layers": layers + 4}


def generation_config() -> dict:
    return {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, IM_END_ID], "do_sample": False}


def tokenizer_config() -> dict:
    return {**make_tiny_model.tokenizer_config(MAX_POSITIONS), "chat_template": CHAT_TEMPLATE}


def special_tokens_map() -> dict:
    return {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": TAIL_SPECIALS}


# ---------------------------------------------------------------- tokenizer


def _symbol_order(alphabet: list[str]) -> list[str]:
    """The 256 byte-level symbols, likeliest first: space, lower, upper, digits, ASCII punctuation, the rest."""
    from tokenizers import pre_tokenizers

    space = pre_tokenizers.ByteLevel.alphabet()  # the byte-level symbol of b" " is "Ġ"
    assert "Ġ" in space
    groups = ["Ġ", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", ".,!?'\"-:;()"]
    first = [c for group in groups for c in group]
    return first + sorted(set(alphabet) - set(first))


def synthetic_merges(symbols: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` merges: every ordered pair of symbols (likeliest first), then pair + symbol."""
    merges = [(a, b) for a in symbols for b in symbols]
    pairs = [a + b for a, b in merges]
    merges += [(p, s) for p in pairs for s in symbols][: max(0, count - len(merges))]
    return merges[:count]


def build_tokenizer(vocab_size: int = REAL["vocab_size"]):
    """Byte-level BPE with exactly ``vocab_size`` tokens; <s> is prepended to every encoded text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    symbols = _symbol_order(sorted(pre_tokenizers.ByteLevel.alphabet()))
    n_merges = vocab_size - len(BASE_SPECIALS) - len(symbols) - len(TAIL_SPECIALS)
    merges = synthetic_merges(symbols, n_merges)
    vocab = {token: i for i, token in enumerate(BASE_SPECIALS + symbols + [a + b for a, b in merges] + TAIL_SPECIALS)}
    assert len(vocab) == vocab_size, "merged tokens must be distinct"
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in BASE_SPECIALS + TAIL_SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    assert tokenizer.get_vocab_size() == vocab_size
    assert tokenizer.token_to_id("<|im_end|>") == IM_END_ID and tokenizer.token_to_id("</s>") == EOS_ID
    return tokenizer


# ---------------------------------------------------------------- weights


def ternary_weight(rows: int, cols: int, generator: torch.Generator, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """bfloat16 weight whose every group of ``group_size`` columns holds only {-a, 0, +a}, a random per group."""
    signs = torch.randint(-1, 2, (rows, cols // group_size, group_size), generator=generator, dtype=torch.int8)
    scales = (0.005 + 0.02 * torch.rand(rows, cols // group_size, 1, generator=generator)).to(torch.bfloat16)
    return (signs.to(torch.bfloat16) * scales).reshape(rows, cols)  # exact: a product with -1, 0 or 1


def state_dict(layers: int, seed: int) -> dict[str, torch.Tensor]:
    from npuport.weights.ternary import QUANTIZED_PROJECTIONS

    g = torch.Generator().manual_seed(seed)
    h, vocab = REAL["hidden_size"], REAL["vocab_size"]
    shapes = projection_shapes()

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": normal(vocab, h)}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for proj in QUANTIZED_PROJECTIONS:
            sd[f"{p}{proj}.weight"] = ternary_weight(*shapes[proj], g)
        sd[f"{p}input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        sd[f"{p}post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd["lm_head.weight"] = normal(vocab, h)
    return sd


# ---------------------------------------------------------------- output


def write(out: Path, layers: int, seed: int, config: str) -> None:
    from npuport.core.atomic import atomic_dir
    from npuport.core.atomic import write_json as dump

    with atomic_dir(out) as tmp:
        tokenizer = build_tokenizer()
        tokenizer.save(str(tmp / "tokenizer.json"))
        dump(tmp / "tokenizer_config.json", tokenizer_config())
        dump(tmp / "special_tokens_map.json", special_tokens_map())
        dump(tmp / "generation_config.json", generation_config())
        dump(tmp / "config.json", download_config(layers) if config == "download" else correct_config(layers))
        weights = state_dict(layers, seed)
        torch.save(weights, tmp / "pytorch_model.bin")
        del weights
        tmp.chmod(0o755)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"directory to (re)write ({DEFAULT_OUT})"
    )
    parser.add_argument("--config", choices=["download", "correct"], default="download",
                        help="config.json as the download repo ships it (4 size fields wrong) or correct")  # fmt: skip
    parser.add_argument(
        "--layers", type=int, default=REAL["num_hidden_layers"], help="decoder layers (28; fewer for quick checks)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sha256", action="store_true", help="print the sha256 of every file written")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    started = time.perf_counter()
    write(args.out, args.layers, args.seed, args.config)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s")
    if args.sha256:
        for path in sorted(args.out.iterdir()):
            print(f"  sha256 {digest(path)}  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
