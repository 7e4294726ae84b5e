"""The reference: Hugging Face transformers behind the ``Runner`` interface.

Generation is a manual greedy loop with a KV cache: it gives the exact time of every token and the
float32 log-softmax of the very logits each token was chosen from.
"""

from __future__ import annotations

import logging
import os
import platform as host_platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npuport.engines.records import Generation, Timing, finite, tpot

log = logging.getLogger(__name__)


class HfRunner:
    """transformers' ``AutoModelForCausalLM`` as a ``Runner``: entering loads the model on ``device``,
    leaving drops it."""

    def __init__(self, model_dir: str | Path, *, device, dtype, tokenizer, trust_remote_code: bool = False):
        self.model_dir = Path(model_dir)
        self.device, self.dtype = device, dtype
        self.tokenizer = tokenizer
        self.trust_remote_code = trust_remote_code
        self.load_s: float | None = None
        self._model = None

    def __enter__(self) -> HfRunner:
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=self.dtype, trust_remote_code=self.trust_remote_code
        )
        self._model = model.to(self.device).eval()
        synchronize(self.device)
        self.load_s = time.perf_counter() - start
        log.info("transformers %s: model loaded in %.2f s", self.engine["version"], self.load_s)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._model = None

    @property
    def platform(self) -> dict[str, Any]:
        import torch

        if self.device.type == "cuda":
            return {"name": "cuda", "device": f"transformers on {torch.cuda.get_device_name(self.device)}"}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = torch.get_num_threads()
        return {
            "name": "cpu",
            "device": f"transformers on CPU ({host_platform.machine()}, {cores} cores, {threads} threads)",
        }

    @property
    def engine(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "name": "transformers",
            "version": transformers.__version__,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "attn_implementation": getattr(self._model.config, "_attn_implementation", None),
            "python": host_platform.python_version(),
        }

    def generate_greedy(
        self, prompt_ids: Sequence[list[int]], max_tokens: int, top_logprobs: int, stop_ids: Sequence[int]
    ) -> list[Generation]:
        """Each prompt alone, greedy (argmax at every step, as generate(do_sample=False))."""
        return [
            greedy(
                self._model,
                ids,
                tokenizer=self.tokenizer,
                max_tokens=max_tokens,
                stop_ids=set(stop_ids),
                k=top_logprobs,
                device=self.device,
            )  # fmt: skip
            for ids in prompt_ids
        ]


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy(
    model, prompt_ids: list[int], *, tokenizer, max_tokens: int, stop_ids: set[int], k: int, device
) -> Generation:
    """Greedy decoding one token at a time; tokens, logprobs, top-k and per-token times.

    Like vLLM, the stop token is the last of ``token_ids`` but is left out of ``text``.
    """
    import torch

    tokens, chosen, tops, times = [], [], [], []
    inputs = torch.tensor([prompt_ids], device=device)
    past = None
    finish = "length"
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(max_tokens):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            token = int(torch.argmax(logits))  # same rule and tie-break as generate(do_sample=False)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(logprobs, k)
            synchronize(device)
            times.append(time.perf_counter())
            tokens.append(token)
            chosen.append(finite(logprobs[token]))
            tops.append([[int(t), finite(v)] for t, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)])
            if token in stop_ids:
                finish = "stop"
                break
            inputs = torch.tensor([[token]], device=device)
    return Generation(
        prompt_token_ids=list(prompt_ids),
        text=tokenizer.decode(tokens[:-1] if finish == "stop" else tokens, skip_special_tokens=True),
        token_ids=tokens,
        token_logprobs=chosen,
        top_logprobs=tops,
        finish_reason=finish,
        stop_reason=tokens[-1] if finish == "stop" else None,
        timing=Timing(times[-1] - start, times[0] - start, tpot(times[0], times[-1], len(tokens))),
    )
