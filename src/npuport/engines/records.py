"""What the `smoke` (vLLM) and `baseline` (transformers) stages share.

The runner interface both engines implement (``Runner``), the records that flow between a runner and its
stage (``Prompt``, ``Timing``, ``Generation``, ``PromptRecord``), the prompt loop both stages run
(``run_prompts``), the remote-code rule, eos ids from generation_config.json, prompt encoding, the
documents' top-level shape, and capture of everything a process (and the processes it starts) prints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError
from npuport.core.settings import GenerationSettings

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class Prompt:
    """A prompt and the token ids both engines get for it."""

    text: str
    token_ids: list[int]


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of one request; ``method`` says how each was measured (None: the stage says it once)."""

    latency_s: float
    ttft_s: float | None
    tpot_s: float | None
    method: dict[str, str] | None = None


@dataclass(frozen=True)
class Generation:
    """One prompt's output as a runner returns it."""

    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    token_logprobs: list[float | None]  # the chosen token's logprob at every position (None: not finite)
    top_logprobs: list[list[list]]  # [token_id, logprob] pairs by rank at every position
    finish_reason: str | None  # "stop" (a stop id, the last of token_ids) or "length"
    stop_reason: int | str | None
    timing: Timing
    engine_prompt_token_ids: list[int] | None = None  # what the engine reports it got (vLLM)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt's entry in smoke.json / baseline.json (``compare`` reads both alike)."""

    prompt: str
    generation: Generation

    def as_dict(self) -> dict[str, Any]:
        g = self.generation
        record = {
            "prompt": self.prompt,
            "prompt_token_ids": [int(t) for t in g.prompt_token_ids],
            "text": g.text,
            "token_ids": [int(t) for t in g.token_ids],
            "token_logprobs": g.token_logprobs,
            "top_logprobs": g.top_logprobs,
            "finish_reason": g.finish_reason,
            "num_tokens": g.num_tokens,
            "latency_s": g.timing.latency_s,
            "ttft_s": g.timing.ttft_s,
            "tpot_s": g.timing.tpot_s,
            "stop_reason": g.stop_reason,
        }
        if g.engine_prompt_token_ids is not None:
            record["engine_prompt_token_ids"] = list(g.engine_prompt_token_ids)
        if g.timing.method is not None:
            record["timing_method"] = g.timing.method
        return record


@dataclass(frozen=True)
class StopTokens:
    """The ids both engines stop at, and where they come from."""

    ids: list[int]
    source: str


class Runner(Protocol):
    """What both engines offer their stage (as vLLM's own tests have VllmRunner and HfRunner).

    A context manager: entering loads the model (``load_s`` then says how long it took), leaving
    releases it. ``platform`` says where it ran, ``engine`` what ran.
    """

    load_s: float | None

    @property
    def platform(self) -> dict[str, Any]: ...

    @property
    def engine(self) -> dict[str, Any]: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def generate_greedy(
        self, prompt_ids: Sequence[list[int]], max_tokens: int, top_logprobs: int, stop_ids: Sequence[int]
    ) -> list[Generation]:
        """Each prompt as a request of its own (timed), in order."""
        ...


@dataclass(frozen=True)
class PromptRun:
    """What ``run_prompts`` measured: the warm-up, every prompt alone, and their throughput."""

    warmup: dict[str, Any]
    records: list[PromptRecord]
    single: dict[str, Any]


def check_prompts_fit(prompts: Sequence[Prompt], max_model_len: int) -> None:
    """Every prompt must leave room for at least one generated token in ``max_model_len``; checked before any
    engine starts, so a runaway prompt is a one-line error, not a long wait."""
    for number, prompt in enumerate(prompts, 1):
        if len(prompt.token_ids) >= max_model_len:
            raise NpuportError(
                None,
                f"prompt {number} ({prompt.text[:40]!r}...) has {len(prompt.token_ids)} tokens, no room in "
                f"engine.max_model_len {max_model_len}",
            )


def output_budget(prompt: Prompt, max_tokens: int, max_model_len: int) -> int:
    """Tokens a runner may generate for ``prompt``: max_tokens, cut where prompt + output reach max_model_len
    (where vLLM stops too, so both runners are bounded alike)."""
    return max(1, min(max_tokens, max_model_len - len(prompt.token_ids)))


def run_prompts(runner: Runner, prompts: Sequence[Prompt], *, generation: GenerationSettings,
                stop_ids: Sequence[int], warmup_note: str, max_model_len: int) -> PromptRun:  # fmt: skip
    """One warm-up request (the first prompt; it carries one-time costs and is left out of throughput),
    then every prompt alone, timed."""

    def generate(prompt: Prompt) -> Generation:
        budget = output_budget(prompt, generation.max_tokens, max_model_len)
        return runner.generate_greedy([prompt.token_ids], budget, generation.top_logprobs, stop_ids)[0]

    first = generate(prompts[0])
    warmup = {"prompt": prompts[0].text, "num_tokens": first.num_tokens, "latency_s": first.timing.latency_s,
              "ttft_s": first.timing.ttft_s, "tpot_s": first.timing.tpot_s}  # fmt: skip
    if first.timing.method is not None:
        warmup["timing_method"] = first.timing.method
    warmup["note"] = warmup_note
    log.info("warm-up: %d tokens in %.2f s", first.num_tokens, first.timing.latency_s)
    records = []
    for prompt in prompts:
        records.append(PromptRecord(prompt.text, generate(prompt)))
        done = records[-1].generation
        log.info("prompt %d: %d tokens in %.2f s", len(records), done.num_tokens, done.timing.latency_s)
    single = throughput(
        sum(r.generation.num_tokens for r in records), sum(r.generation.timing.latency_s for r in records)
    )
    return PromptRun(warmup, records, single)


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


def stop_token_ids(model_dir: str | Path, tokenizer) -> StopTokens:
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
    return StopTokens(ids, " + ".join(sources) or "none: no eos_token_id in the model or tokenizer")


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


def encode_prompts(tokenizer, generation: GenerationSettings) -> list[Prompt]:
    """The configured prompts with their token ids."""
    return [Prompt(text, encode_prompt(tokenizer, text, generation.chat_template)) for text in generation.prompts]


def prompt_format(generation: GenerationSettings) -> str:
    """How the prompts became token ids, in words for the documents."""
    if generation.chat_template:
        return "tokenizer chat template (user turn, generation prompt), token ids given to the engine"
    return "raw prompt, tokenizer special tokens (bos) added, token ids given to the engine"


def finite(x: float) -> float | None:
    """JSON has no NaN/inf: a non-finite logprob is stored as null."""
    x = float(x)
    return x if math.isfinite(x) else None


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
    (pytest's capture, for one), and so are the logging handlers that write to the old ones (an in-process
    engine logs through a handler made when vLLM was imported). The streams made here never close the fds, so a
    logging handler that picked one up keeps writing to whatever fd 1/2 are later.
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
        moved = _point_handlers({saved_streams[0]: sys.stdout, saved_streams[1]: sys.stderr})
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for handler, stream in moved:
            handler.setStream(stream)
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for f in (fd, *saved_fds):
            os.close(f)


def _point_handlers(streams: dict) -> list[tuple[logging.StreamHandler, object]]:
    """Point every logging StreamHandler that writes to a key of ``streams`` at its value; (handler, old stream)
    of each one moved."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    moved = []
    for handler in {h for logger in loggers for h in getattr(logger, "handlers", [])}:
        if isinstance(handler, logging.StreamHandler) and handler.stream in streams:
            moved.append((handler, handler.setStream(streams[handler.stream])))
    return moved


@contextlib.contextmanager
def captured_output() -> Iterator[Path]:
    """Capture what this process and its children print into a temp file; replay it to stderr afterwards.

    Engines log from worker processes that inherit fds 1/2, so capture happens at fd level.
    The caller reads the tail (``tail_lines``) inside the block; after it the file is gone.
    """
    with replayed_temp_log("npuport-engine-") as path, redirect_fds(path, append=False):
        yield path


@contextlib.contextmanager
def replayed_temp_log(prefix: str) -> Iterator[Path]:
    """A temporary log file; its content is replayed to stderr (the stage log) and the file removed afterwards."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            sys.stderr.write(path.read_text(encoding="utf-8", errors="replace"))
            sys.stderr.flush()
        path.unlink(missing_ok=True)
