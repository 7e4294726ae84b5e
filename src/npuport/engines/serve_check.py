"""The `vllm serve` check: start vLLM's OpenAI-compatible server on loopback, ask it every prompt, stop it.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the module behind ``vllm serve``,
same flags) in its own process group, so that stopping it also stops the engine processes it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings
from npuport.engines.records import PromptRecord, replayed_temp_log, tail_lines

log = logging.getLogger(__name__)

STOP_GRACE_S = 30


def engine_flags(engine: EngineSettings, trust_remote_code: bool) -> list[str]:
    """The engine settings as `vllm serve` flags (the same values the offline `LLM` got)."""
    flags = [
        "--dtype", str(engine.dtype),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--seed", str(engine.seed),
    ]  # fmt: skip
    if engine.enforce_eager:
        flags.append("--enforce-eager")
    if trust_remote_code:
        flags.append("--trust-remote-code")
    return flags


def vllm_serve_command(model_dir: str | Path, engine: EngineSettings, trust_remote_code: bool = False) -> str:
    """The command to serve this model on the target host."""
    return shlex.join(["vllm", "serve", str(model_dir), *engine_flags(engine, trust_remote_code)])


def api_server_argv(
    model_dir: str | Path, engine: EngineSettings, *, host: str, port: int, trust_remote_code: bool = False
) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", host, "--port", str(port),
        *engine_flags(engine, trust_remote_code),
    ]  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict[str, Any] | None, timeout: float) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_healthy(proc: subprocess.Popen, base_url: str, timeout_s: float) -> str | None:
    """None once /health answers 200; otherwise why it never did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with code {proc.returncode} before /health answered"
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(base_url + "/health", timeout=5) as response:
                if response.status == 200:
                    return None
        time.sleep(1)
    return f"/health did not answer 200 within {timeout_s} s"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group_gone(proc: subprocess.Popen, pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    return False


def stop_group(proc: subprocess.Popen) -> dict[str, Any]:
    """SIGINT to the whole process group, then SIGTERM, then SIGKILL: no process of it may outlive the check."""
    pgid = proc.pid  # start_new_session made the server the leader of its own group
    for sig, grace in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        if wait_group_gone(proc, pgid, grace):
            return {"signal": sig.name, "pgid": pgid, "returncode": proc.poll(), "processes_left": False}
    return {"signal": "SIGKILL", "pgid": pgid, "returncode": proc.poll(), "processes_left": group_alive(pgid)}


@dataclass(frozen=True)
class Answer:
    """The server's answer to one prompt."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float


def ask(
    base_url: str, model: str, prompt: str | list[int], *, generation: GenerationSettings, timeout: float
) -> Answer:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": generation.max_tokens,
        "temperature": generation.temperature,
        "seed": generation.seed,
    }
    start = time.perf_counter()
    reply = http_json(base_url + "/v1/completions", body, timeout)
    latency = time.perf_counter() - start
    choice = reply["choices"][0]
    usage = reply.get("usage") or {}  # the server's JSON: usage is optional in the OpenAI API
    return Answer(
        text=choice["text"],
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        latency_s=latency,
    )


def compare_with_offline(answer: Answer, offline: PromptRecord) -> dict[str, Any]:
    generated = offline.generation
    return {
        **asdict(answer),
        "prompt": offline.prompt,
        "text_equal_offline": answer.text == generated.text,
        "prompt_tokens_equal_offline": answer.prompt_tokens == len(generated.prompt_token_ids),
        "completion_tokens_equal_offline": answer.completion_tokens == generated.num_tokens,
    }


def run_serve_check(
    model_dir: str | Path,
    *,
    engine: EngineSettings,
    generation: GenerationSettings,
    serve: ServeSettings,
    offline_prompts: Sequence[PromptRecord],
    trust_remote_code: bool = False,
    log_path: str | Path | None = None,
) -> dict[str, Any]:
    """Serve the model, send every prompt of ``offline_prompts`` to /v1/completions, compare with the offline text.

    Raw prompts go as text (as a user sends them); chat-template prompts go as the offline token ids.
    Server output goes to ``log_path`` (appended), else to a temp file replayed to stderr afterwards.
    """
    model_dir = Path(model_dir).resolve()
    port = free_port(serve.host)
    argv = api_server_argv(model_dir, engine, host=serve.host, port=port, trust_remote_code=trust_remote_code)
    result: dict[str, Any] = {
        "status": "failed",
        "reason": None,
        "command_ran": argv,
        "vllm_serve_command": vllm_serve_command(model_dir, engine, trust_remote_code),
        "url": f"http://{serve.host}:{port}",
        "startup_seconds": None,
        "served_model": None,
        "prompts": [],
        "all_text_equal_offline": None,
        "shutdown": None,
        "log_tail": [],
    }
    log.info("serve check: %s", shlex.join(argv))
    with server_log(log_path) as path:
        proc = None
        try:
            with open(path, "ab") as out:
                start = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # fmt: skip
            query_server(proc, result, offline_prompts, started=start, generation=generation, serve=serve)
        except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
            result["reason"] = f"{type(exc).__name__}: {exc}"
        finally:
            if proc is not None:
                stop_server(proc, result)
            result["log_tail"] = tail_lines(path)
    log.info("serve check: %s%s", result["status"], f" ({result['reason']})" if result["reason"] else "")
    return result


def query_server(
    proc: subprocess.Popen,
    result: dict[str, Any],
    offline_prompts: Sequence[PromptRecord],
    *,
    started: float,
    generation: GenerationSettings,
    serve: ServeSettings,
) -> None:
    """Wait for /health, then ask every prompt; fills ``result`` as it goes (so a failure keeps what came)."""
    why = wait_healthy(proc, result["url"], serve.startup_timeout_s)
    if why:
        result["reason"] = why
        return
    result["startup_seconds"] = time.perf_counter() - started
    served = http_json(result["url"] + "/v1/models", None, serve.request_timeout_s)
    result["served_model"] = served["data"][0]["id"]
    for offline in offline_prompts:
        prompt = offline.generation.prompt_token_ids if generation.chat_template else offline.prompt
        answer = ask(result["url"], result["served_model"], prompt, generation=generation,
                     timeout=serve.request_timeout_s)  # fmt: skip
        result["prompts"].append(compare_with_offline(answer, offline))
    result["all_text_equal_offline"] = all(p["text_equal_offline"] for p in result["prompts"])
    result["status"] = "ok"


def stop_server(proc: subprocess.Popen, result: dict[str, Any]) -> None:
    """Stop the server's whole process group; a process that survives fails the check."""
    result["shutdown"] = stop_group(proc)
    if result["shutdown"]["processes_left"]:
        result["status"] = "failed"
        result["reason"] = (result["reason"] or "") + " server processes survived SIGKILL"


@contextlib.contextmanager
def server_log(log_path: str | Path | None) -> Iterator[Path]:
    """The file the server writes to: ``log_path`` (appended), else a temp file that is replayed to stderr
    and removed afterwards."""
    if log_path is not None:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with replayed_temp_log("npuport-serve-") as path:
        yield path
