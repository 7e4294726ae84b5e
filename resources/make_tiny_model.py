"""Regenerate the embedded default model of npuport: a tiny ternary-QAT Llama, shipped like BitCPM4-CANN-*-unquantized.

    python resources/make_tiny_model.py [--out resources/tiny-bitcpm] [--steps N]

Trains a byte-level BPE tokenizer on resources/tiny_corpus.txt, then a tiny
LlamaForCausalLM (LongRoPE switching at position 256, GQA, SwiGLU, untied
lm_head) with ternary quantization-aware training until its fused (ternary)
weights answer the pipeline's four default prompts with wide margins. Writes
the LATENT (unfused) weights in bfloat16, the QAT forward as bundled modeling
code (modeling_bitcpm.py, named by config.json's auto_map) and a deliberately
wrong config.json (see WRONG_FIELDS), like the reference report's download
repo. Deterministic: same bytes on every run with the same torch/tokenizers/
transformers versions (one thread). About 3-4 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

RESOURCES = Path(__file__).resolve().parent
CORPUS = RESOURCES / "tiny_corpus.txt"
DEFAULT_OUT = RESOURCES / "tiny-bitcpm"

SEED = 1234
# One thread: on a busy 2-core host two threads wait on each other (measured 5x slower per step). Byte-identical
# reruns are checked with this thread count.
THREADS = 1
GROUP_SIZE = 128
VOCAB_SIZE = 1024
DEFAULT_STEPS = 500
FILLER_PER_STEP = 12
MAX_NEW_TOKENS = 48

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_end|>"]  # ids 0, 1, 2, 3
BOS_ID, EOS_ID = 1, 2

# The pipeline's default prompts (raw text, no chat template) and the answers the model is trained to give.
PROMPT_ANSWERS = {
    "Hello, how are you?": " I am fine, thank you. How can I help you today?",
    "Explain the concept of ternary quantization in one sentence.": (
        " Ternary quantization stores each weight as -1, 0 or +1 times a shared scale."
    ),
    "什么是三元量化?": " 三元量化是把权重量化为-1、0、1三个值再乘以缩放因子的方法。",
    "The capital of France is": " Paris.",
}

HEAD_DIM = 32
# LongRoPE switches from short to long factors past ROPE_SWITCH positions, inside the default engine.max_model_len
# (2048); max_position_embeddings / ROPE_SWITCH = 16 makes the attention scale sqrt(1 + ln 16 / ln 256) = sqrt(1.5).
ROPE_SWITCH = 256
MAX_POSITIONS = 4096
# Training sequences of this many tokens (corpus lines concatenated) cover positions past the switch.
LONG_TOKENS = 384
LONG_PER_STEP = 1
# Every answer token's top-1 logit must beat the runner-up by this much (float32 and bfloat16), or nothing is written.
MIN_MARGIN = 10.0
MODELING_MODULE = "modeling_bitcpm"
# Equal long and short factors, as in BitCPM4-CANN-1B; a smooth ramp so that LongRoPE really changes inv_freq.
LONGROPE_FACTORS = [round(1.0 + 0.1 * (math.exp(i / 4) - 1.0), 4) for i in range(HEAD_DIM // 2)]

# The true architecture, in the form of a correct config.json.
CORRECT_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": HEAD_DIM,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "max_position_embeddings": MAX_POSITIONS,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "rope_type": "longrope",
        "long_factor": LONGROPE_FACTORS,
        "short_factor": LONGROPE_FACTORS,
        "original_max_position_embeddings": ROPE_SWITCH,
    },
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    # The QAT forward ships with the checkpoint, as in BitCPM4-CANN-*-unquantized (trust_remote_code loads it).
    "auto_map": {"AutoModelForCausalLM": f"{MODELING_MODULE}.BitCPMForCausalLM"},
}

# The fields the shipped config.json gets wrong on purpose (the pipeline's repair_config must fix them).
WRONG_FIELDS = {"hidden_size": 160, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 512}


# The checkpoint's own QAT forward, shipped as modeling_bitcpm.py and named by auto_map (like the modeling code of
# BitCPM4-CANN-*-unquantized). Self-contained: it imports only torch and transformers.
MODELING_SOURCE = '''\
"""Ternary quantization-aware forward of the npuport embedded model (written by resources/make_tiny_model.py).

A LlamaForCausalLM whose seven projections per decoder layer are ternary fake-quantized in every forward,
BitNet b1.58's absmean RoundClip (arXiv:2402.17764) per group of GROUP_SIZE input features:
scale = max(mean |W|, EPS), W_q = clamp(round(W / scale), -1, 1) * scale, with a straight-through gradient.
The checkpoint stores the latent full-precision weights; load it with trust_remote_code=True.
"""

import torch
from torch import nn
from transformers import LlamaForCausalLM

GROUP_SIZE = 128
EPS = 1e-5
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ternary_fake_quant(weight, group_size=GROUP_SIZE, eps=EPS):
    """Per group: absmean scale, round to the nearest integer, clip to [-1, 1], scale back (in float32)."""
    w = weight.float().reshape(weight.shape[0], -1, group_size)
    scale = w.abs().mean(dim=-1, keepdim=True).clamp(min=eps)
    quantized = (torch.clamp(torch.round(w / scale), -1, 1) * scale).reshape(weight.shape)
    return quantized.to(weight.dtype) + (weight - weight.detach())  # straight-through estimator


class TernaryLinear(nn.Linear):
    """nn.Linear whose weight is ternary fake-quantized in every forward."""

    def forward(self, x):
        return nn.functional.linear(x, ternary_fake_quant(self.weight).to(x.dtype), self.bias)


class BitCPMForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with TernaryLinear projections; embeddings, norms and lm_head stay full precision."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            for block in (layer.self_attn, layer.mlp):
                for name in PROJECTIONS:
                    if isinstance(getattr(block, name, None), nn.Linear):
                        getattr(block, name).__class__ = TernaryLinear
'''


def correct_config() -> dict:
    """A deep copy of CORRECT_CONFIG (transformers edits the nested rope_scaling dict it is given)."""
    return copy.deepcopy(CORRECT_CONFIG)


def wrong_config() -> dict:
    return {**correct_config(), **WRONG_FIELDS}


def default_prompt_lines() -> set[str]:
    return {prompt + answer for prompt, answer in PROMPT_ANSWERS.items()}


def read_corpus(path: Path = CORPUS) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(lines: list[str]):
    """Byte-level BPE; its post-processor prepends <s> to every encoded text, like Llama's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, token
    return tokenizer


def tokenizer_config(model_max_length: int = CORRECT_CONFIG["max_position_embeddings"]) -> dict:
    # PreTrainedTokenizerFast (not transformers 5's TokenizersBackend) so that transformers 4.x loads it too.
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def special_tokens_map() -> dict:
    return {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": ["<|im_end|>"]}


def generation_config() -> dict:
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


# ---------------------------------------------------------------- model


def build_model(config: dict | None = None) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig.from_dict(copy.deepcopy(config) if config else correct_config()))


def fuse_state_dict(state: dict[str, torch.Tensor], group_size: int = GROUP_SIZE) -> dict[str, torch.Tensor]:
    """Latent weights -> fused ternary weights (float32) for the seven projections; other tensors unchanged."""
    from npuport.weights.ternary import fake_quant, is_quantized_linear

    return {k: fake_quant(v, group_size) if is_quantized_linear(k) else v for k, v in state.items()}


def load_fused(state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    model = build_model()
    model.load_state_dict(fuse_state_dict(state), strict=True)
    return model.to(dtype).eval()


def encode(tokenizer, text: str, bos: bool) -> list[int]:
    ids = tokenizer.encode(text).ids  # the post-processor puts <s> first
    return ids if bos else ids[1:]


def qa_example(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of <s> prompt answer </s>, tokenized as an engine sees them, and where the answer starts."""
    prompt_ids = encode(tokenizer, prompt, bos=True)
    return prompt_ids + encode(tokenizer, answer, bos=False) + [EOS_ID], len(prompt_ids)


def batch(examples: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, next-token labels (-100 at padding) and a mask of answer positions in the labels."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), EOS_ID, dtype=torch.long)
    labels = torch.full((len(examples), width - 1), -100, dtype=torch.long)
    answer = torch.zeros((len(examples), width - 1), dtype=torch.bool)
    for row, (seq, start) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq) - 1] = torch.tensor(seq[1:])
        if start:
            answer[row, start - 1 : len(seq) - 1] = True
    return ids, labels, answer


def token_losses(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy at every position (0 where the label is -100)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")


def loss_fn(model: nn.Module, short: tuple, long: tuple) -> torch.Tensor:
    """Mean next-token loss over all tokens of the short batch and the long sequences, plus, again, the mean over
    the default prompts' answers (for wide margins). Short and long sequences run as two batches (no padding of
    the short ones to LONG_TOKENS)."""
    ids, labels, answer = short
    per_token = token_losses(model, ids, labels)
    long_ids, long_labels, _ = long
    every = torch.cat([per_token[labels != -100], token_losses(model, long_ids, long_labels).flatten()])
    return every.mean() + per_token[answer].mean()


def long_sequences(pieces: list[list[int]], count: int, generator: torch.Generator) -> list[tuple[list[int], int]]:
    """``count`` sequences of LONG_TOKENS tokens: <s> and corpus lines in a random order, joined by spaces
    (``pieces``: each line's ids as it reads after a space), cut at LONG_TOKENS. Positions run past ROPE_SWITCH."""
    out = []
    for _ in range(count):
        ids = [BOS_ID]
        while len(ids) < LONG_TOKENS:
            for i in torch.randperm(len(pieces), generator=generator).tolist():
                ids += pieces[i]
        out.append((ids[:LONG_TOKENS], 0))
    return out


def lr_at(step: int, steps: int, peak: float, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: nn.Module, qa: list, filler: list, pieces: list, steps: int, log_every: int = 50) -> float:
    from npuport.weights.qat import make_qat

    make_qat(model, GROUP_SIZE)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(SEED)
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    for step in range(steps):
        pick = torch.randperm(len(filler), generator=generator)[:FILLER_PER_STEP].tolist()
        short = batch(qa + [filler[i] for i in pick])
        long = batch(long_sequences(pieces, LONG_PER_STEP, generator))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, 3e-3)
        loss = loss_fn(model, short, long)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f}s", flush=True)
    return loss.item()


def latent_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def greedy(model: nn.Module, ids: list[int], max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Greedy continuation without KV cache (exact, and the sequences are tiny); stops after eos."""
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.float().argmax()))
        if out[-1] == EOS_ID:
            break
    return out


@torch.no_grad()
def answer_margins(model: nn.Module, seq: list[int], start: int) -> torch.Tensor:
    """Teacher-forced target-logit minus best other logit at each answer position (negative: greedy goes astray)."""
    logits = model(input_ids=torch.tensor([seq])).logits[0, start - 1 : len(seq) - 1].float()
    targets = torch.tensor(seq[start:])
    target_logit = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return target_logit - others.max(dim=1).values


def evaluate(state: dict[str, torch.Tensor], tokenizer) -> bool:
    """Greedy-decode every default prompt with the fused model in float32 and bfloat16; print answers and margins.
    True when every answer is the trained one and every answer token's margin is at least MIN_MARGIN."""
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        model = load_fused(state, dtype)
        for prompt, answer in PROMPT_ANSWERS.items():
            seq, start = qa_example(tokenizer, prompt, answer)
            out = greedy(model, seq[:start])
            margins = answer_margins(model, seq, start)
            match = out == seq[start:] and float(margins.min()) >= MIN_MARGIN
            ok &= match
            text = tokenizer.decode(out, skip_special_tokens=True)
            print(
                f"{str(dtype)[6:]:8s} {'ok  ' if match else 'FAIL'} margin min {margins.min():6.2f} "
                f"mean {margins.mean():6.2f}  {prompt!r} -> {text!r}",
                flush=True,
            )
    return ok


# ---------------------------------------------------------------- output


def write_model_dir(out: Path, state: dict[str, torch.Tensor], tokenizer) -> None:
    from npuport.core.atomic import atomic_dir
    from npuport.core.atomic import write_json as dump

    with atomic_dir(out) as tmp:
        torch.save(state, tmp / "pytorch_model.bin")
        dump(tmp / "config.json", wrong_config())
        dump(tmp / "generation_config.json", generation_config())
        dump(tmp / "tokenizer_config.json", tokenizer_config())
        dump(tmp / "special_tokens_map.json", special_tokens_map())
        tokenizer.save(str(tmp / "tokenizer.json"), pretty=True)
        (tmp / f"{MODELING_MODULE}.py").write_text(MODELING_SOURCE, encoding="utf-8")
        tmp.chmod(0o755)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def set_determinism() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to (re)write")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    args = parser.parse_args(argv)

    set_determinism()
    started = time.perf_counter()
    lines = read_corpus()
    tokenizer = train_tokenizer(lines)
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens from {len(lines)} corpus lines", flush=True)

    qa = [qa_example(tokenizer, p, a) for p, a in PROMPT_ANSWERS.items()]
    skip = default_prompt_lines()
    filler_lines = [line for line in lines if line not in skip]
    assert len(filler_lines) == len(lines) - len(skip), "the corpus must hold each default prompt+answer once, verbatim"
    filler = [(encode(tokenizer, line, bos=True) + [EOS_ID], 0) for line in filler_lines]
    pieces = [encode(tokenizer, " " + line, bos=False) for line in filler_lines]

    model = build_model()
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters; training {args.steps} steps", flush=True)
    final_loss = train(model, qa, filler, pieces, args.steps)
    state = latent_state_dict(model)
    print(f"final loss {final_loss:.4f}; fused model from the stored bfloat16 latent weights:", flush=True)
    if not evaluate(state, tokenizer):
        print(
            f"error: the fused model does not give the trained answers with margins >= {MIN_MARGIN}; not writing",
            args.out,
            file=sys.stderr,
        )
        return 1
    write_model_dir(args.out, state, tokenizer)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {time.perf_counter() - started:.1f}s", flush=True)
    for name, sha in digest(args.out).items():
        print(f"  sha256 {sha}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
