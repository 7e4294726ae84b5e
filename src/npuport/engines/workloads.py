"""The workload patterns of the deployment configurations, run on a started offline engine.

Every pattern scores the same token sequences teacher-forced (each one request that generates one token) and
takes the engine's logits with the logit tap (npuport.engines.logit_tap), which works whatever the graph mode:

- ``alone``: each sequence as the only request (prefix cache reset first, so every position is computed);
- ``batch``: each sequence inside one engine step with ``concurrent - 1`` other sequences of other lengths (sized
  to fit the step's token budget and the engine's max_num_seqs together, so nothing is chunked);
- ``prefix_hit``: another request that shares the sequence's first ``prefix_tokens`` tokens (and then goes its own
  way) runs first; the sequence then finds that prefix in the prefix cache and only the rest is computed.

What actually happened is recorded per sequence (positions computed, engine steps, requests in each step, tokens
served from the cache), so a pattern that did not take place (no cache hit, a batch split over steps) shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npuport.engines.deployment import Workload

log = logging.getLogger(__name__)

SEGMENT_FILE = "segment-{index:03d}.safetensors"
GREEDY_OTHER_TOKENS = 64  # prompt tokens of each other sequence beside a greedy prompt (on average)
METHOD = (
    "the logits vLLM's model computes from the final hidden states of every token the engine scheduled for the "
    "request (GPUModelRunner._model_forward, outside any compiled graph), its own compute_logits on them; one "
    "teacher-forced request per sequence that generates one token"
)


def filler_lengths(room: int, count: int) -> list[int]:
    """``count`` distinct lengths (at least 2 tokens each) that sum to at most ``room``: 1, 2, ..., count parts."""
    parts = count * (count + 1) // 2
    lengths = [max(2, room * (k + 1) // parts) for k in range(count)]
    while lengths and sum(lengths) > room:
        lengths.pop()
    return lengths


def fillers(pool: Sequence[int], lengths: Sequence[int], *, bos: int | None, offset: int = 0) -> list[list[int]]:
    """Token sequences of the given lengths cut from ``pool`` (wrapping around), each led by ``bos`` when given."""
    out = []
    start = offset
    for length in lengths:
        body = [pool[(start + i) % len(pool)] for i in range(length - (bos is not None))]
        out.append(([bos] if bos is not None else []) + body)
        start += length * 7 + 13
    return out


def _params(key: str | None):
    from vllm import SamplingParams

    from npuport.engines.logit_tap import MARK

    return SamplingParams(max_tokens=1, temperature=0.0, extra_args={MARK: key} if key is not None else None)


def budget(llm) -> tuple[int, int]:
    """(tokens per engine step, sequences per step) of the running engine's scheduler."""
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    return int(scheduler.max_num_batched_tokens), int(scheduler.max_num_seqs)


def score(
    llm,
    sequences: Sequence[Sequence[int]],
    directory: str | Path,
    *,
    workload: Workload,
    pool: Sequence[int],
    bos: int | None,
) -> dict[str, Any]:
    """The engine's logits on each of ``sequences`` under ``workload``, written to ``directory/segment-NNN``; what
    happened per sequence. The logit tap is installed for the call and removed after it."""
    from npuport.engines import logit_tap

    directory = Path(directory)
    llm.collective_rpc(logit_tap.install)
    records = []
    try:
        for index, ids in enumerate(sequences):
            key, path = str(index), directory / SEGMENT_FILE.format(index=index)
            llm.reset_prefix_cache()
            record: dict[str, Any] = {"file": path.name, "tokens": len(ids)}
            if workload.kind == "batch":
                record |= _batch(llm, list(ids), key, workload, pool, bos, index)
            elif workload.kind == "prefix_hit":
                record |= _prefix_hit(llm, list(ids), key, workload)
            else:
                llm.generate([{"prompt_token_ids": list(ids)}], _params(key), use_tqdm=False)
            found = _collected(llm, {key: str(path)})
            if key not in found:
                raise RuntimeError(f"the logit tap recorded nothing for sequence {index}")
            record |= found[key]
            path.chmod(0o644)
            records.append(record)
    finally:
        llm.collective_rpc(logit_tap.remove)
    return {"workload": workload.as_dict(), "files": [r["file"] for r in records], "sequences": records,
            "method": METHOD}  # fmt: skip


def _collected(llm, paths: dict[str, str]) -> dict[str, dict]:
    from npuport.engines import logit_tap

    merged: dict[str, dict] = {}
    for found in llm.collective_rpc(logit_tap.collect, args=(paths,)):
        for key, value in (found or {}).items():
            merged.setdefault(key, value)
    return merged


def _batch(llm, ids: list[int], key: str, workload: Workload, pool, bos, index: int) -> dict[str, Any]:
    tokens, seqs = budget(llm)
    count = min(workload.concurrent, seqs) - 1
    lengths = filler_lengths(tokens - len(ids), count)
    others = fillers(pool, lengths, bos=bos, offset=97 * (index + 1))
    half = len(others) // 2
    requests = [*others[:half], ids, *others[half:]]
    params = [_params(None)] * half + [_params(key)] + [_params(None)] * (len(others) - half)
    llm.generate([{"prompt_token_ids": r} for r in requests], params, use_tqdm=False)
    return {"other_lengths": lengths}


def _prefix_hit(llm, ids: list[int], key: str, workload: Workload) -> dict[str, Any]:
    shared = ids[: min(workload.prefix_tokens, len(ids) - 1)]
    # another request with the same prefix that then goes its own way (the sequence's next tokens reversed)
    other = shared + list(reversed(ids[len(shared) : len(shared) + 16]))
    llm.generate([{"prompt_token_ids": other}], _params(None), use_tqdm=False)
    out = llm.generate([{"prompt_token_ids": ids}], _params(key), use_tqdm=False)[0]
    return {"shared_tokens": len(shared), "cached_tokens": int(getattr(out, "num_cached_tokens", 0) or 0)}


def greedy(
    llm,
    prompts: Sequence[Sequence[int]],
    *,
    workload: Workload,
    params,
    pool: Sequence[int],
    bos: int | None,
) -> list[dict[str, Any]]:
    """Each prompt generated greedily under ``workload`` (``params``: the smoke stage's sampling): alone, inside a
    batch with other sequences, or after the same prompt ran once (its full KV blocks then come from the cache)."""
    results = []
    for index, ids in enumerate(prompts):
        llm.reset_prefix_cache()
        ids = list(ids)
        note: dict[str, Any] = {}
        if workload.kind == "batch":
            tokens, seqs = budget(llm)
            count = min(workload.concurrent, seqs) - 1
            # short other sequences that decode beside the prompt as long as it does
            room = min(tokens - len(ids), GREEDY_OTHER_TOKENS * count)
            others = fillers(pool, filler_lengths(room, count), bos=bos, offset=31 * (index + 1))
            outs = llm.generate([{"prompt_token_ids": r} for r in [ids, *others]], params, use_tqdm=False)
            out = outs[0]
            note["other_sequences"] = len(others)
        else:
            if workload.kind == "prefix_hit":
                llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
            out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
            if workload.kind == "prefix_hit":
                note["cached_tokens"] = int(getattr(out, "num_cached_tokens", 0) or 0)
        results.append({"token_ids": list(out.outputs[0].token_ids), **note})
    return results
