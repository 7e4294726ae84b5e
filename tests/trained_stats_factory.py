"""A small Llama with the statistics of a trained model, built on purpose into its weights (offline, deterministic).

Random weights and the embedded 1M-parameter model lack what trained causal LMs have, and what decides how bf16
implementations differ from float32 there:

- **massive activations** (Sun et al. 2024, "Massive Activations in Large Language Models"): a couple of residual
  dimensions hold values ~1000x the median, at the first token, from an early layer on and then constant;
- **attention sinks** (Xiao et al. 2023, StreamingLLM): in the later layers most heads put most of their attention
  mass on position 0, whose value vector is nearly zero (attending to it is a no-op);
- **peaked first-layer attention**: the first layer's heads attend sharply (previous token, the token itself, two
  back) on the exact embeddings;
- **wide-ranged RMSNorm weights**, small on the massive dimensions (the norm absorbs them).

How each is made (``build_trained_stats_llama``; a plain ``LlamaForCausalLM``, 6 layers, hidden 256, GQA 8:2,
untied ``lm_head``, RoPE, vocabulary 1024, 5,049,600 parameters):

1. every weight is drawn from a seeded generator at scales where signals neither vanish nor blow up; a few residual
   dimensions are reserved (no random weight reads or writes them): CONST_DIMS (a constant direction in every
   token's embedding, spread over 16 dims so that its bf16 rounding averages out), TRIGGER (set in the bos
   embedding only) and the two MASSIVE dimensions;
2. layer 0: KV head 0's four query heads are positional (RoPE's four fastest pairs read the constant, the query
   rotated so that the logit peaks at a fixed offset), KV head 1's are content heads (query = scaled key: a token
   attends to itself and its repeats); logits are calibrated on real text to peaks of ~5-8;
3. layer 1's MLP has one neuron that reads TRIGGER, so fires at bos only, and writes MASSIVE_VALUES into the MASSIVE
   dimensions; nothing else reads or writes them, so they stay to the last layer;
4. layers 2 on: every key reads the constant into RoPE's three slowest pairs against the query, so that every key
   whose normalized input holds the constant is pushed SINK_OFFSETS (per query head; 0: not a sink) below a key
   that does not: bos, whose normalized input is all massive activation. The sink's key and value are ~0, and the
   bf16 error of each push is per key (it averages out), not one per row (a row's softmax would scale);
5. the untied ``lm_head`` is a ridge regression of the next token on the final hidden states (resources/ text),
   with a temperature fitted by cross-entropy: the model predicts real text better than chance, peaked.

Each constructed scale is calibrated on float32 activations of resources/ text (one thread, scales rounded), then
the weights are stored in bfloat16 with transformers' own ``save_pretrained`` (model, generation config, and a
byte-level BPE tokenizer trained with the ``tokenizers`` library and saved with the library's defaults).
``measure_trained_stats`` reports what the statistics are; ``python tests/trained_stats_factory.py OUT`` builds
the model into OUT and prints them.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

from npuport.weights.fuse import one_torch_thread

REPO = Path(__file__).resolve().parents[1]
TEXTS = (REPO / "resources" / "tiny_corpus.txt", REPO / "resources" / "evaluation.txt")

SEED = 20240223
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
BOS_ID, EOS_ID = 1, 2
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 256, 6, 8, 2, 32, 768
ROPE_THETA = 10000.0
MAX_POSITIONS = 2048
RMS_EPS = 1e-5

# Reserved residual dimensions: CONST_DIMS carry a constant direction (every token's embedding, signs alternating),
# TRIGGER is set in the bos embedding only, MASSIVE receive the massive activations.
CONST_DIMS = tuple(range(4, HIDDEN, 16))  # 16 dims: the constant is read as their signed mean (rounding averages)
CONST_SIGNS = tuple((-1.0) ** i for i in range(len(CONST_DIMS)))
TRIGGER = 77
MASSIVE = (140, 203)
MASSIVE_VALUES = (640.0, -256.0)  # written at bos by layer 1's MLP
MASSIVE_LAYER = 1
RESERVED = (*CONST_DIMS, TRIGGER, *MASSIVE)
EMBED_STD, CONST_VALUE, TRIGGER_VALUE = 0.05, 0.05, 1.0
# Random blocks' output scale per layer (o_proj, down_proj): the residual stream grows with depth.
OUT_SCALE = [0.012 * 1.35**layer for layer in range(LAYERS)]
QK_STD = 0.7  # random query/key weights x HIDDEN**-0.5: random attention logits of std ~0.7
NORM_LOG_STD = 0.5  # RMSNorm weights: log-normal
NORM_OUTLIERS = {11: 6.0, 58: 0.03, 99: 4.5, 170: 0.02, 231: 8.0}  # dims with extreme weights in every norm
MASSIVE_NORM_WEIGHT = 0.05  # every norm's weight on the MASSIVE dims (absorbs them)

# Layer 0, KV head 0: positional heads, one per query head: (offset, logit amplitude per RoPE pair).
POSITIONAL_HEADS = ((1, 2.0), (0, 1.6), (2, 1.8), (1, 1.4))
POSITIONAL_PAIRS = (0, 1, 2, 3)
# Layer 0, KV head 1: content heads, the mean logit of a token on itself.
CONTENT_SELF_LOGITS = (7.0, 5.5, 4.5, 6.0)
# Layers 2 on: how far every key but the sink's is pushed down, per query head (8 heads; 0: not a sink), cycled by
# layer; the push reads CONST_DIMS, which the sink's normalized input lacks (its massive activation dominates it).
SINK_OFFSETS = (9.0, 7.0, 5.5, 8.0, 10.0, 6.5, 0.0, 7.5)
SINK_PAIRS = tuple(range(HEAD_DIM // 2 - 3, HEAD_DIM // 2))  # RoPE's 3 slowest pairs: ~no rotation in 1000 positions
SINK_KEY = 4.0  # |key| along the push direction
CALIBRATION_TOKENS = 256  # tokens per calibration sequence (bos-led)
CALIBRATION_STRIDE = 3  # every third sequence calibrates the constructed scales; all of them fit lm_head
LM_HEAD_RIDGE = 1e-2
MASSIVE_RATIO = 100.0  # a massive activation: |value| >= this x the median |value| of its layer's output


# ---------------------------------------------------------------- tokenizer


def corpus_lines() -> list[str]:
    return [line for path in TEXTS for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_tokenizer():
    """Byte-level BPE on resources/ text; <s> prepended to every encoded text (like Llama's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    assert tokenizer.get_vocab_size() == VOCAB_SIZE, tokenizer.get_vocab_size()
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    return tokenizer


def calibration_sequences(tokenizer, length: int = CALIBRATION_TOKENS) -> list[list[int]]:
    """The resources/ texts as bos-led sequences of ``length`` tokens (the last one shorter)."""
    sequences = []
    for path in TEXTS:
        ids = tokenizer.encode(path.read_text(encoding="utf-8")).ids[1:]
        sequences += [[BOS_ID, *ids[start : start + length - 1]] for start in range(0, len(ids), length - 1)]
    return [s for s in sequences if len(s) > 16]


# ---------------------------------------------------------------- weights


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA,
        tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None,
    )  # fmt: skip


def _free(width: int = HIDDEN) -> torch.Tensor:
    """Mask of the residual dimensions random weights may read and write."""
    mask = torch.ones(width)
    mask[list(RESERVED)] = 0.0
    return mask


def _randn(generator: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * std


def _norm_weight(generator: torch.Generator) -> torch.Tensor:
    weight = torch.exp(_randn(generator, HIDDEN, std=NORM_LOG_STD))
    for dim, value in NORM_OUTLIERS.items():
        weight[dim] = value
    weight[list(MASSIVE)] = MASSIVE_NORM_WEIGHT
    weight[[*CONST_DIMS, TRIGGER]] = 1.0
    return weight


@torch.no_grad()
def random_weights(model, generator: torch.Generator) -> None:
    """Every parameter from ``generator``; the reserved dimensions are read and written by no random weight."""
    free = _free()
    inner = model.model
    embed = _randn(generator, VOCAB_SIZE, HIDDEN, std=EMBED_STD) * free
    embed[:, list(CONST_DIMS)] = CONST_VALUE * torch.tensor(CONST_SIGNS)
    embed[BOS_ID, TRIGGER] = TRIGGER_VALUE
    inner.embed_tokens.weight.copy_(embed)
    for index, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj):
            linear.weight.copy_(_randn(generator, *linear.weight.shape, std=QK_STD * HIDDEN**-0.5) * free)
        attn.v_proj.weight.copy_(_randn(generator, *attn.v_proj.weight.shape, std=HIDDEN**-0.5) * free)
        attn.o_proj.weight.copy_(_randn(generator, HIDDEN, HEADS * HEAD_DIM, std=OUT_SCALE[index] * HIDDEN**-0.5))
        attn.o_proj.weight[list(RESERVED)] = 0.0
        for linear in (mlp.gate_proj, mlp.up_proj):
            linear.weight.copy_(_randn(generator, INTERMEDIATE, HIDDEN, std=HIDDEN**-0.5) * free)
        mlp.down_proj.weight.copy_(_randn(generator, HIDDEN, INTERMEDIATE, std=OUT_SCALE[index] * INTERMEDIATE**-0.5))
        mlp.down_proj.weight[list(RESERVED)] = 0.0
        layer.input_layernorm.weight.copy_(_norm_weight(generator))
        layer.post_attention_layernorm.weight.copy_(_norm_weight(generator))
    inner.norm.weight.copy_(_norm_weight(generator))
    model.lm_head.weight.copy_(_randn(generator, VOCAB_SIZE, HIDDEN, std=HIDDEN**-0.5))


def _round(value: float, digits: int = 4) -> float:
    """Calibrated scales rounded to ``digits`` significant digits (last-bit differences of a forward pass vanish)."""
    return float(f"{value:.{digits}g}")


class _Captured(Exception):
    """Ends a calibration forward pass once the wanted activations are captured."""


@torch.no_grad()
def normed_inputs(model, sequences: list[list[int]], layer: int, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of layer ``layer``'s ``which`` norm (input_layernorm / post_attention_layernorm) on every token of
    ``sequences`` ([tokens, hidden], float32), and whether each token is at position 0."""
    norm = getattr(model.model.layers[layer], which)
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        captured.append(output[0].float())
        raise _Captured  # the layers after it are not needed

    handle = norm.register_forward_hook(hook)
    try:
        for ids in sequences:
            with contextlib.suppress(_Captured):
                model.model(torch.tensor([ids]))
    finally:
        handle.remove()
    first = torch.cat([torch.arange(len(ids)) == 0 for ids in sequences])
    return torch.cat(captured), first


def _head_rows(head: int, dims) -> list[int]:
    return [head * HEAD_DIM + d for d in dims]


def _pair_dims(pairs) -> list[int]:
    """Both dims of each RoPE pair (transformers' rotate_half layout: dim i pairs with i + HEAD_DIM / 2)."""
    return [*pairs, *(p + HEAD_DIM // 2 for p in pairs)]


def const_mean(normed: torch.Tensor) -> float:
    """The constant direction's mean normalized value over the tokens of ``normed`` (rounded)."""
    return _round(float((normed[:, list(CONST_DIMS)] * torch.tensor(CONST_SIGNS)).mean()))


def const_reader(value: float, const: float) -> torch.Tensor:
    """A weight row that reads ``value`` from a token whose normalized constant direction is ``const``."""
    row = torch.zeros(HIDDEN)
    row[list(CONST_DIMS)] = torch.tensor(CONST_SIGNS) * _round(value / (len(CONST_DIMS) * const))
    return row


@torch.no_grad()
def peaked_first_layer(model, sequences: list[list[int]], generator: torch.Generator) -> None:
    """Layer 0: KV head 0 positional (POSITIONAL_HEADS), KV head 1 content (CONTENT_SELF_LOGITS)."""
    attn = model.model.layers[0].self_attn
    normed, first = normed_inputs(model, sequences, 0, "input_layernorm")
    rest = normed[~first]
    const = const_mean(rest)
    inv_freq = ROPE_THETA ** -(torch.arange(0, HEAD_DIM, 2).double() / HEAD_DIM)
    half = HEAD_DIM // 2
    # KV head 0: each pair of POSITIONAL_PAIRS of the key reads the constant with a random phase, length 1; a
    # query head reads it into the same pairs rotated back by its offset (logit max at key = query - offset)
    pairs = _pair_dims(POSITIONAL_PAIRS)
    phases = torch.rand(len(POSITIONAL_PAIRS), generator=generator).double() * 2 * math.pi
    attn.k_proj.weight[_head_rows(0, pairs)] = 0.0
    for index, pair in enumerate(POSITIONAL_PAIRS):
        phase = float(phases[index])
        attn.k_proj.weight[pair] = const_reader(math.cos(phase), const)
        attn.k_proj.weight[pair + half] = const_reader(math.sin(phase), const)
    for head, (offset, amplitude) in enumerate(POSITIONAL_HEADS):
        attn.q_proj.weight[_head_rows(head, pairs)] = 0.0
        for index, pair in enumerate(POSITIONAL_PAIRS):
            angle = float(phases[index] - offset * inv_freq[pair])
            length = amplitude * math.sqrt(HEAD_DIM)
            attn.q_proj.weight[head * HEAD_DIM + pair] = const_reader(length * math.cos(angle), const)
            attn.q_proj.weight[head * HEAD_DIM + pair + half] = const_reader(length * math.sin(angle), const)
    # KV head 1: a random projection of the content as key; each query head the same, scaled
    projection = _randn(generator, HEAD_DIM, HIDDEN, std=HIDDEN**-0.5) * _free()
    self_logit = float((rest @ projection.T).pow(2).sum(-1).mean()) / math.sqrt(HEAD_DIM)
    attn.k_proj.weight[HEAD_DIM : 2 * HEAD_DIM] = projection
    group = HEADS // KV_HEADS
    for index, target in enumerate(CONTENT_SELF_LOGITS):
        head = group + index
        attn.q_proj.weight[head * HEAD_DIM : (head + 1) * HEAD_DIM] = projection * _round(target / self_logit)


@torch.no_grad()
def massive_writer(model, sequences: list[list[int]]) -> None:
    """Layer MASSIVE_LAYER's MLP neuron 0 reads TRIGGER (set at bos only) and writes MASSIVE_VALUES."""
    mlp = model.model.layers[MASSIVE_LAYER].mlp
    normed, first = normed_inputs(model, sequences, MASSIVE_LAYER, "post_attention_layernorm")
    trigger = _round(float(normed[first][:, TRIGGER].mean()))
    gate = up = 8.0  # the neuron's pre-activations at bos: silu(8) * 8 = 63.97
    mlp.gate_proj.weight[0] = 0.0
    mlp.up_proj.weight[0] = 0.0
    mlp.gate_proj.weight[0, TRIGGER] = gate / trigger
    mlp.up_proj.weight[0, TRIGGER] = up / trigger
    activation = gate * torch.sigmoid(torch.tensor(gate)).item() * up
    mlp.down_proj.weight[:, 0] = 0.0
    for dim, value in zip(MASSIVE, MASSIVE_VALUES, strict=True):
        mlp.down_proj.weight[dim, 0] = _round(value / activation)


@torch.no_grad()
def sinks(model, sequences: list[list[int]], generator: torch.Generator) -> None:
    """Layers MASSIVE_LAYER + 1 on: every key but the sink's pushed SINK_OFFSETS (per query head) below it."""
    dims = _pair_dims(SINK_PAIRS)
    group = HEADS // KV_HEADS
    for index in range(MASSIVE_LAYER + 1, LAYERS):
        attn = model.model.layers[index].self_attn
        normed, first = normed_inputs(model, sequences, index, "input_layernorm")
        const = const_mean(normed[~first])
        for kv in range(KV_HEADS):
            direction = torch.randn(len(dims), generator=generator)
            direction /= direction.norm()
            attn.k_proj.weight[_head_rows(kv, dims)] = 0.0
            for d, u in zip(dims, direction.tolist(), strict=True):
                attn.k_proj.weight[kv * HEAD_DIM + d] = const_reader(-SINK_KEY * u, const)
            for head in range(kv * group, (kv + 1) * group):
                push = SINK_OFFSETS[(head + index) % HEADS] * math.sqrt(HEAD_DIM) / SINK_KEY
                attn.q_proj.weight[_head_rows(head, dims)] = 0.0
                for d, u in zip(dims, direction.tolist(), strict=True):
                    attn.q_proj.weight[head * HEAD_DIM + d] = const_reader(push * u, const)


@torch.no_grad()
def fit_lm_head(model, sequences: list[list[int]]) -> float:
    """Ridge regression of the next token's one-hot on the final hidden states, then the temperature of least
    cross-entropy; returns that cross-entropy (nats per token)."""
    features, targets = [], []
    for ids in sequences:
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0].double()
        features.append(hidden[:-1])
        targets.append(torch.tensor(ids[1:]))
    x, y = torch.cat(features), torch.cat(targets)
    onehot = torch.nn.functional.one_hot(y, VOCAB_SIZE).double()
    gram = x.T @ x + LM_HEAD_RIDGE * len(x) * torch.eye(HIDDEN, dtype=torch.float64)
    weight = torch.linalg.solve(gram, x.T @ onehot).T  # [vocab, hidden]
    logits = x @ weight.T
    best = min(
        (float(torch.nn.functional.cross_entropy(logits * t, y)), t) for t in [2.0**k for k in range(0, 9)]
    )  # temperatures 1 .. 256, the coarse search is deterministic
    model.lm_head.weight.copy_((weight * best[1]).float())
    return best[0]


def build_trained_stats_llama(directory: Path) -> Path:
    """The model (bf16 safetensors), its tokenizer and generation config in ``directory``, all written by
    transformers' ``save_pretrained`` with the library's defaults. Same bytes on every run (same versions)."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    with one_torch_thread():  # the same sums on every host
        tokenizer = train_tokenizer()
        sequences = calibration_sequences(tokenizer)
        calibration = sequences[::CALIBRATION_STRIDE]
        generator = torch.Generator().manual_seed(SEED)
        model = LlamaForCausalLM(llama_config()).float().eval()
        random_weights(model, generator)
        peaked_first_layer(model, calibration, generator)
        massive_writer(model, calibration)
        sinks(model, calibration, generator)
        fit_lm_head(model, sequences)
        model = model.to(torch.bfloat16)
        model.generation_config.bos_token_id, model.generation_config.eos_token_id = BOS_ID, EOS_ID
        model.save_pretrained(directory)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return directory


def shared_trained_stats_llama(tmp_path_factory) -> Path:
    """The model built once per test session (pytest-xdist workers included: the first builds it under a lock)."""
    import os

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory, done = root / "trained-stats" / "model", root / "trained-stats" / "complete"
    with FileLock(root / "trained-stats.lock"):
        if not done.exists():
            build_trained_stats_llama(directory)
            done.touch()
    return directory


# ---------------------------------------------------------------- measurement


@torch.no_grad()
def measure_trained_stats(model_dir: Path, token_ids: list[int]) -> dict:
    """The statistics on one bos-led sequence, transformers in float32 with eager attention:

    - ``layers``: per decoder layer output (the residual stream), the largest |value| over the median |value|,
      the dims of the largest values (each dim's largest |value| at least MASSIVE_RATIO x the median) and the
      positions of their largest values;
    - ``attention``: per layer and head, the mean attention mass on position 0 over the query positions >= 1,
      and the mean largest attention weight over query positions >= 1 (how peaked);
    - ``norms``: per RMSNorm, the smallest and largest |weight| and their ratio;
    - ``bf16_finite``: whether the bfloat16 forward (sdpa, the default) gives finite logits and hidden states.
    """
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([token_ids])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    outputs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple)
                                                                             else out))  # fmt: skip
               for layer in model.model.layers]  # fmt: skip
    try:
        result = model(ids, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for index, hidden in enumerate(outputs):
        values = hidden[0].abs()
        median = float(values.median())
        per_dim = values.max(dim=0).values
        dims = [int(d) for d in torch.argsort(per_dim, descending=True)[:4] if per_dim[d] >= MASSIVE_RATIO * median]
        top = float(values.max())
        layers.append({"layer": index, "top": top, "median": median, "ratio": top / median, "dims": dims,
                       "positions": sorted({int(values[:, d].argmax()) for d in dims})})  # fmt: skip
    attention = []
    for index, weights in enumerate(result.attentions):
        rows = weights[0, :, 1:, :]  # heads x query positions >= 1 x keys
        attention.append({"layer": index, "sink": [round(float(v), 4) for v in rows[:, :, 0].mean(-1)],
                          "peak": [round(float(v), 4) for v in rows.max(-1).values.mean(-1)]})  # fmt: skip
    norms = {}
    for name, parameter in model.named_parameters():
        if name.endswith("norm.weight"):
            w = parameter.abs()
            norms[name.removesuffix(".weight")] = {"min": float(w.min()), "max": float(w.max()),
                                                   "ratio": float(w.max() / w.min())}  # fmt: skip
    low = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    low_out = low(ids, output_hidden_states=True)
    finite = bool(torch.isfinite(low_out.logits).all()) and all(bool(torch.isfinite(h).all())
                                                                 for h in low_out.hidden_states)  # fmt: skip
    loss = float(torch.nn.functional.cross_entropy(result.logits[0, :-1].float(), ids[0, 1:]))
    return {"tokens": len(token_ids), "layers": layers, "attention": attention, "norms": norms,
            "bf16_finite": finite, "text_loss": loss}  # fmt: skip


def evaluation_ids(model_dir: Path, tokens: int = 256) -> list[int]:
    """The first ``tokens`` tokens of resources/evaluation.txt with the model's tokenizer (bos first)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return list(tokenizer((REPO / "resources" / "evaluation.txt").read_text(encoding="utf-8"))["input_ids"][:tokens])


def describe(stats: dict) -> str:
    lines = [f"{stats['tokens']} tokens; text loss {stats['text_loss']:.3f} nats/token (uniform: "
             f"{math.log(VOCAB_SIZE):.3f}); bf16 forward finite: {stats['bf16_finite']}"]  # fmt: skip
    for layer, attn in zip(stats["layers"], stats["attention"], strict=True):
        sink = attn["sink"]
        lines.append(
            f"layer {layer['layer']}: top |h| {layer['top']:8.2f} / median {layer['median']:.4f} = "
            f"{layer['ratio']:8.0f}x dims {layer['dims']} at {layer['positions']}; attention on pos 0 mean "
            f"{sum(sink) / len(sink):.3f} heads {sink}; mean max weight {attn['peak']}"
        )
    for name, norm in stats["norms"].items():
        lines.append(f"{name}: |w| {norm['min']:.3g} .. {norm['max']:.3g} (x{norm['ratio']:.0f})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("/tmp/trained-stats-llama")
    start = time.perf_counter()
    build_trained_stats_llama(out)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.iterdir())
    parameters = json.loads((out / "config.json").read_text(encoding="utf-8"))
    print(f"built {out} in {elapsed:.1f}s ({size / 1e6:.2f} MB; hidden {parameters['hidden_size']})")
    print(describe(measure_trained_stats(out, evaluation_ids(out))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
