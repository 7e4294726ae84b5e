"""Write the data of the lm-eval task group ``npuport_tiny`` (resources/tasks/npuport_tiny/) from tiny_corpus.txt.

    python resources/make_accuracy_task.py [--out resources/tasks/npuport_tiny]

Two zero-shot tasks that the embedded model (resources/tiny-bitcpm, fused) answers and a broken port does not:

- ``mc.jsonl`` (``npuport_tiny_mc``, multiple choice by log-likelihood, metric acc): one item per corpus line.
  The context is the first half of the line (its words; for a Chinese line, its characters, cut at the nearest
  boundary between two tokens of the model's tokenizer, as the model saw it in training), the correct choice its
  true continuation; the 3 distractors are continuations of other lines in the same language, drawn with a
  fixed seed, never one that would complete the context into a corpus line too. For the four default prompt
  lines the context is the prompt and the correct choice its trained answer. The position of the correct
  choice is drawn with the same seeded generator.
- ``gen.jsonl`` (``npuport_tiny_gen``, greedy generate_until, metric exact_match): the four default prompts with
  their trained answers, then each other corpus line cut after its first two thirds, with the rest of the line as
  the answer (the model was trained on every line as ``<s> line </s>``, so it goes on to eos).

Every item is kept: the task is not filtered on what the model gets right. Measured with lm-eval 0.4.13's hf
backend on the fused model (float32, CPU): acc 1.0 and exact_match 1.0 (72 items each), in about 8 s; with the
sign of layer 1's MLP output flipped, 0.875 and 0.14 (tests/test_accuracy.py). Deterministic: same bytes on every
run (the model's tokenizer.json only, no model weights).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
sys.path.insert(0, str(RESOURCES))
from make_tiny_model import CORPUS, PROMPT_ANSWERS, read_corpus  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

MODEL_DIR = RESOURCES / "tiny-bitcpm"
DEFAULT_OUT = RESOURCES / "tasks" / "npuport_tiny"
SEED = 20240518
DISTRACTORS = 3
MC_CONTEXT_FRACTION = 0.5
GEN_CONTEXT_FRACTION = 2 / 3


def is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def token_boundaries(tokenizer: Tokenizer, line: str) -> list[int]:
    """Character offsets inside ``line`` between two whole tokens: byte-level BPE merges Chinese characters into
    tokens and splits some across two, and a prompt cut inside a token is not tokenized as in training."""
    offsets = tokenizer.encode(line, add_special_tokens=False).offsets
    return [end for (_, end), (start, _) in zip(offsets, offsets[1:], strict=False) if end == start]


def split_line(tokenizer: Tokenizer, line: str, fraction: float) -> tuple[str, str]:
    """``line`` as (context, continuation) cut after ``fraction`` of its words (of its characters, at the
    nearest token boundary, when Chinese); the continuation keeps its leading space so that context +
    continuation is the line."""
    for prompt, answer in PROMPT_ANSWERS.items():
        if line == prompt + answer:
            return prompt, answer
    if is_chinese(line):
        target = len(line) * fraction
        cut = min(token_boundaries(tokenizer, line), key=lambda b: (abs(b - target), b))
        return line[:cut], line[cut:]
    words = line.split(" ")
    cut = min(max(1, round(len(words) * fraction)), len(words) - 1)
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def mc_items(tokenizer: Tokenizer, lines: list[str], rng: random.Random) -> list[dict]:
    pairs = [split_line(tokenizer, line, MC_CONTEXT_FRACTION) for line in lines]
    corpus = set(lines)
    items = []
    for index, (context, answer) in enumerate(pairs):
        pool = [
            other
            for j, (_, other) in enumerate(pairs)
            if j != index and is_chinese(other) == is_chinese(answer) and other != answer
            and context + other not in corpus
        ]  # fmt: skip
        choices = rng.sample(sorted(set(pool)), DISTRACTORS)
        gold = rng.randrange(DISTRACTORS + 1)
        choices.insert(gold, answer)
        items.append({"id": index, "context": context, "choices": choices, "gold": gold})
    return items


def gen_items(tokenizer: Tokenizer, lines: list[str]) -> list[dict]:
    items = [{"prompt": prompt, "answer": answer.strip()} for prompt, answer in PROMPT_ANSWERS.items()]
    prompt_lines = {prompt + answer for prompt, answer in PROMPT_ANSWERS.items()}
    for line in lines:
        if line not in prompt_lines:
            context, answer = split_line(tokenizer, line, GEN_CONTEXT_FRACTION)
            items.append({"prompt": context, "answer": answer.strip()})
    return [{"id": index, **item} for index, item in enumerate(items)]


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    lines = read_corpus(CORPUS)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    mc, gen = mc_items(tokenizer, lines, random.Random(SEED)), gen_items(tokenizer, lines)
    write_jsonl(args.out / "mc.jsonl", mc)
    write_jsonl(args.out / "gen.jsonl", gen)
    print(f"wrote {len(mc)} multiple-choice and {len(gen)} generation items to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
