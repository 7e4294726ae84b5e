"""What the `smoke` (vLLM) and `baseline` (transformers) stages share.

Settings with the reference report's defaults, the remote-code rule, eos ids from
generation_config.json, prompt encoding, the per-prompt record both documents use,
and capture of everything a process (and the processes it starts) prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError

REFERENCE_PROMPTS = [
    "Hello, how are you?",
    "Explain the concept of ternary quantization in one sentence.",
    "什么是三元量化?",
    "The capital of France is",
]

ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "bfloat16",
    "max_model_len": 2048,
    "max_num_seqs": 32,
    "gpu_memory_utilization": 0.3,
    "enforce_eager": True,
    "tensor_parallel_size": 1,
    "seed": 42,
}
GENERATION_DEFAULTS: dict[str, Any] = {
    "prompts": REFERENCE_PROMPTS,
    "temperature": 0.0,
    "seed": 42,
    "max_tokens": 128,
    "top_logprobs": 5,
    "chat_template": False,
}
SERVE_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "host": "127.0.0.1",
    "startup_timeout_s": 180,
    "request_timeout_s": 60,
}
BASELINE_DEFAULTS: dict[str, Any] = {"device": "cpu", "dtype": "float32"}

LOG_TAIL_LINES = 50
RECORD_KEYS = (
    "prompt", "prompt_token_ids", "text", "token_ids", "token_logprobs", "top_logprobs",
    "finish_reason", "num_tokens", "latency_s", "ttft_s", "tpot_s",
)  # fmt: skip


def settings(defaults: dict[str, Any], given: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """``given`` over ``defaults``; an unknown key is a user error (a typo would otherwise be ignored)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise NpuportError(None, f"{what} settings: unknown key(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    return {**defaults, **given}


def remote_code_refusal(model_dir: str | Path, trust_remote_code: bool) -> str | None:
    """Why loading must be refused, or None: an ``auto_map`` (custom code shipped with the checkpoint, in
    config.json or tokenizer_config.json) is only followed when the pipeline config allows it."""
    if trust_remote_code:
        return None
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        auto_map = read_json(path).get("auto_map") if path.is_file() else None
        if auto_map:
            classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
            return (
                f"{path} declares auto_map ({classes}): loading it would run Python code shipped with the "
                "checkpoint, which never happens by default. If you trust that code, set "
                "`trust_remote_code: true` on this model's entry in the pipeline config."
            )
    return None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def stop_token_ids(model_dir: str | Path, tokenizer) -> dict[str, Any]:
    """The ids both engines stop at: generation_config.json's ``eos_token_id`` (else config.json's), plus
    the tokenizer's eos token, at which vLLM always stops as well."""
    model_dir = Path(model_dir)
    ids, sources = [], []
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file() and (ids := _as_id_list(read_json(path).get("eos_token_id"))):
            sources.append(f"{name}: eos_token_id")
            break
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and int(eos) not in ids:
        ids.append(int(eos))
        sources.append("tokenizer eos_token_id")
    return {"ids": ids, "source": " + ".join(sources) or "none: no eos_token_id in the model or tokenizer"}


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a problem of this model directory
        raise NpuportError(model_dir, f"tokenizer does not load: {type(exc).__name__}: {exc}") from exc


def encode_prompt(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """Token ids the engines get: the raw prompt with the tokenizer's special tokens (bos), or the chat template."""
    if chat_template:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template already writes bos and role markers
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def finite(x: float) -> float | None:
    """JSON has no NaN/inf: a non-finite logprob is stored as null."""
    x = float(x)
    return x if math.isfinite(x) else None


def prompt_record(
    prompt: str,
    prompt_token_ids: list[int],
    text: str,
    token_ids: list[int],
    token_logprobs: list[float | None],
    top_logprobs: list[list[list]],
    finish_reason: str | None,
    latency_s: float,
    ttft_s: float | None,
    tpot_s: float | None,
    **extra: Any,
) -> dict[str, Any]:
    """The per-prompt record both stages write (``compare`` reads smoke.json and baseline.json alike)."""
    return {
        "prompt": prompt,
        "prompt_token_ids": [int(t) for t in prompt_token_ids],
        "text": text,
        "token_ids": [int(t) for t in token_ids],
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "finish_reason": finish_reason,
        "num_tokens": len(token_ids),
        "latency_s": latency_s,
        "ttft_s": ttft_s,
        "tpot_s": tpot_s,
        **extra,
    }


def tpot(first_token_s: float, last_token_s: float, num_tokens: int) -> float | None:
    """Mean time per output token after the first; undefined for fewer than two tokens."""
    return (last_token_s - first_token_s) / (num_tokens - 1) if num_tokens > 1 else None


def throughput(tokens: int, seconds: float) -> dict[str, Any]:
    return {"tokens": int(tokens), "seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else None}


def document(stage: str, status: str, reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """Top-level shape of smoke.json / baseline.json; every key is present whatever the status."""
    doc: dict[str, Any] = {
        "stage": stage,
        "status": status,
        "reason": reason,
        "log_tail": [],
        "engine": {},
        "platform": {},
        "settings": {},
        "load_seconds": None,
        "warmup": None,
        "prompts": [],
        "throughput": {"single": None, "batch": None},
        "kv_cache": None,
    }
    doc.update(fields)
    return doc


def tail_lines(path: str | Path, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return lines[-n:]


@contextlib.contextmanager
def redirect_fds(path: str | Path, append: bool = True) -> Iterator[Path]:
    """Send file descriptors 1 and 2 to ``path`` (this process and every process it starts meanwhile).

    sys.stdout/sys.stderr are pointed at the new fds too, since they may not write to fd 1/2
    (pytest's capture, for one). The streams made here never close the fds, so a logging handler
    that picked one up keeps writing to whatever fd 1/2 are later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for f in (fd, *saved_fds):
            os.close(f)


@contextlib.contextmanager
def captured_output() -> Iterator[Path]:
    """Capture what this process and its children print into a temp file; replay it to stderr afterwards.

    Engines log from worker processes that inherit fds 1/2, so capture happens at fd level.
    The caller reads the tail (``tail_lines``) inside the block; after it the file is gone.
    """
    fd, name = tempfile.mkstemp(prefix="npuport-engine-", suffix=".log")
    os.close(fd)
    path = Path(name)
    try:
        with redirect_fds(path, append=False):
            yield path
    finally:
        with contextlib.suppress(OSError):
            sys.stderr.write(path.read_text(encoding="utf-8", errors="replace"))
            sys.stderr.flush()
        path.unlink(missing_ok=True)
