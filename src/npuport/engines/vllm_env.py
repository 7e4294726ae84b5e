"""The engine settings vLLM reads from the environment rather than from its arguments or `vllm serve`'s flags.

One so far: ``aot_compile``, vLLM's AOT compile cache (``VLLM_USE_AOT_COMPILE``). The offline engine (VllmRunner)
and the server (the bench stage) run with the same variables, and the recorded `vllm serve` command carries them.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping, Sequence

from npuport.core.settings import EngineSettings

AOT_COMPILE = "VLLM_USE_AOT_COMPILE"
# the engine settings keys that are environment variables (not LLM(...) arguments, not `vllm serve` flags)
ENV_KEYS = ("aot_compile",)


@functools.cache
def cpu_backend() -> bool | None:
    """Whether vLLM resolves its CPU backend on this host (None: vLLM cannot be imported or resolve a platform here;
    the stage that needs it records why)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - a missing or broken vLLM is the engine stages' to record, not this lookup's
        return None


def engine_environment(engine: EngineSettings, *, cpu: bool | None = None) -> dict[str, str]:
    """The variables to set for an engine with these settings. ``aot_compile`` auto: nothing for an eager engine
    (nothing is compiled); off on vLLM's CPU backend (vLLM 0.32 cannot load its AOT artifact there: every compiled
    start traces again, and torch inductor's cache is keyed by the model's path: benchmarks/README.md); vLLM's own
    default elsewhere. ``cpu``: None asks vLLM."""
    value = engine.aot_compile
    if value == "auto":
        compiled_on_cpu = not engine.enforce_eager and (cpu_backend() if cpu is None else cpu)
        value = False if compiled_on_cpu else None
    return {} if value is None else {AOT_COMPILE: "1" if value else "0"}


def with_environment(argv: Sequence[str], environment: Mapping[str, str]) -> str:
    """A shell command line: the variables, then the command."""
    return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in environment.items()), shlex.join(argv)])
