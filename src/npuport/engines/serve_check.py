"""vLLM's OpenAI-compatible server on loopback, and the serve check: every offline prompt asked again through
/v1/completions, the answer compared with the offline engine's text.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the module behind ``vllm serve``, same flags) in
its own process group. ``served`` starts it, waits for /health and stops it by process group on every path (an
exception inside the block included); processes it started that left the group and survive are found by their pid,
killed and reported. The `bench` stage runs the check and its load ladder on one server (npuport.engines.bench).

The server starts with the default dispositions of SIGINT and SIGTERM whatever the stage inherited
(``npuport.core.spawn.default_signals``: a pipeline started as a background job ignores SIGINT, and so would every
process it starts), and the stop sequence skips a signal the server's process ignores instead of waiting out its
grace period; the shutdown record names the signal that ended it, the signals sent and the seconds it took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings
from npuport.core.spawn import default_signals, ignored_signals
from npuport.engines.records import PromptRecord, replayed_temp_log, tail_lines
from npuport.engines.vllm_env import engine_environment, with_environment

log = logging.getLogger(__name__)

# The stop sequence: each signal to the server's process group, then up to this many seconds for the group to go
STOP_GRACE_S = 30  # SIGINT: vLLM's server shuts its engine down
TERM_GRACE_S = 10  # SIGTERM
KILL_GRACE_S = 10  # SIGKILL: until the kernel has ended them
# smoke.json's "serve" since the check moved to the bench stage (kept so that readers of smoke.json find the key)
SERVE_MOVED = {"status": "not run", "reason": "the serve check runs in the bench stage (bench.json)"}


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
    if engine.kv_cache_memory_bytes is not None:
        flags += ["--kv-cache-memory-bytes", str(engine.kv_cache_memory_bytes)]
    if engine.max_num_batched_tokens is not None:
        flags += ["--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    for key, flag in (("enable_prefix_caching", "prefix-caching"), ("enable_chunked_prefill", "chunked-prefill")):
        value = getattr(engine, key)
        if value is not None:  # None: vLLM's default
            flags.append(f"--enable-{flag}" if value else f"--no-enable-{flag}")
    if engine.kv_cache_dtype != "auto":
        flags += ["--kv-cache-dtype", engine.kv_cache_dtype]
    for key in ("compilation_config", "additional_config"):
        value = getattr(engine, key)
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", json.dumps(value, sort_keys=True, separators=(",", ":"))]
    if engine.enforce_eager:
        flags.append("--enforce-eager")
    if trust_remote_code:
        flags.append("--trust-remote-code")
    return flags


def vllm_serve_command(model_dir: str | Path, engine: EngineSettings, trust_remote_code: bool = False) -> str:
    """The command to serve this model on the target host, with the variables the engine ran with."""
    argv = ["vllm", "serve", str(model_dir), *engine_flags(engine, trust_remote_code)]
    return with_environment(argv, engine_environment(engine))


def api_server_argv(
    model_dir: str | Path, engine: EngineSettings, *, host: str, port: int, trust_remote_code: bool = False
) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", host, "--port", str(port),
        *engine_flags(engine, trust_remote_code),
    ]  # fmt: skip


# Where the kernel takes the ports of outgoing connections and of bind(0) (net.ipv4.ip_local_port_range's default).
EPHEMERAL_PORTS = (32768, 60999)
# The first port free_port considers: above the well-known and most registered service ports.
LOWEST_PORT = 10000


def ephemeral_ports() -> tuple[int, int]:
    """The host's ephemeral port range (Linux), else the kernel's default."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_PORTS


def free_port(host: str) -> int:
    """A port free on ``host`` now, outside the ephemeral range: the server binds it seconds later (after its imports),
    and a port from bind(0) is one the kernel hands to the next outgoing connection or bind(0) of any process
    meanwhile (seen: the bench server failing with "Address already in use" on a loaded host)."""
    low, high = ephemeral_ports()
    candidates = [p for p in range(LOWEST_PORT, 65536) if not low <= p <= high] or list(range(1024, 65536))
    random.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # every one tried is taken: the kernel's choice
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


# --- processes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that tell a process apart and where it belongs."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    start: int  # clock ticks after boot: a reused pid has another


def proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces and parentheses
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def all_processes() -> list[ProcStat]:
    stats = (proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [s for s in stats if s is not None]


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every living process below ``root`` ({} where /proc cannot be read)."""
    with contextlib.suppress(OSError):
        children: dict[int, list[ProcStat]] = {}
        for stat in all_processes():
            children.setdefault(stat.ppid, []).append(stat)
        found, frontier = {}, [root]
        while frontier:
            for stat in children.get(frontier.pop(), []):
                if stat.pid not in found and stat.state != "Z":
                    found[stat.pid] = stat.start
                    frontier.append(stat.pid)
        return found
    return {}


def still_running(known: dict[int, int]) -> list[int]:
    """The pids of ``known`` (pid -> start time) that still run: same start time, not a zombie."""
    running = []
    for pid, start in known.items():
        stat = proc_stat(pid)
        if stat is not None and stat.start == start and stat.state != "Z":
            running.append(pid)
    return running


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs (zombies waiting for a reaper do not count, where /proc tells)."""
    with contextlib.suppress(OSError):
        return any(s.pgrp == pgid and s.state != "Z" for s in all_processes())
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


def stop_group(proc: subprocess.Popen, known: dict[int, int] | None = None) -> dict[str, Any]:
    """SIGINT to the whole process group, then SIGTERM, then SIGKILL, each followed by its grace period; a signal
    that the group's leader ignores (its SigIgn in /proc) is not sent: it would only cost its grace period. Then
    SIGKILL by pid to every process of ``known`` (the server's descendants, pid -> start time) that left the group
    and still runs. Those are reported in ``left_after_shutdown``: the server's own shutdown left them behind.

    The record: ``signal`` (the one after which the group was gone), ``signals_sent``, ``ignored_by_server`` (SIGINT
    and SIGTERM if the leader ignored them when the stop began; None where /proc does not tell) and ``seconds``."""
    pgid = proc.pid  # start_new_session made the server the leader of its own group
    ignored = ignored_signals(pgid) if proc.poll() is None else set()
    ignored_stops = None if ignored is None else sorted({"SIGINT", "SIGTERM"} & ignored)
    stopped: dict[str, Any] = {"signal": "SIGKILL", "pgid": pgid, "signals_sent": [],
                               "ignored_by_server": ignored_stops}  # fmt: skip
    started = time.monotonic()
    for sig, grace in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        if sig.name in (ignored_stops or ()):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        stopped["signals_sent"].append(sig.name)
        if wait_group_gone(proc, pgid, grace):
            stopped["signal"] = sig.name
            break
    if ignored_stops:
        log.warning("the server ignored %s: not sent", ", ".join(ignored_stops))
    known = known or {}
    left = [{"pid": pid, "cmdline": _cmdline(pid)} for pid in still_running(known)]
    for entry in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGKILL)
    if left:
        log.warning("server processes left after shutdown, killed by pid: %s", left)
    deadline = time.monotonic() + KILL_GRACE_S
    while still_running(known) and time.monotonic() < deadline:  # SIGKILL takes effect when the kernel gets to it
        time.sleep(0.1)
    gone = not group_alive(pgid) and not still_running(known)
    log.info("server stopped: %s sent, %s, %.1f s", ", ".join(stopped["signals_sent"]),
             f"gone after {stopped['signal']}" if gone else "processes left", time.monotonic() - started)  # fmt: skip
    return stopped | {"returncode": proc.poll(), "processes_left": bool(left) or not gone,
                      "left_after_shutdown": left, "all_gone": gone,
                      "seconds": round(time.monotonic() - started, 3)}  # fmt: skip


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return "?"


# --- the server -----------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process (group) and what is known about it: ready (``served_model`` set) or why not."""

    argv: list[str]
    url: str
    environment: dict[str, str] = field(default_factory=dict)  # set for the server, over this process's own
    proc: subprocess.Popen | None = None
    startup_seconds: float | None = None
    served_model: str | None = None
    failure: str | None = None
    shutdown: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None
    known_processes: dict[int, int] = field(default_factory=dict)  # the server's descendants seen: pid -> start time

    @property
    def ready(self) -> bool:
        return self.failure is None and self.served_model is not None

    def exited(self) -> int | None:
        """The exit code once the server process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def record(self) -> dict[str, Any]:
        return {"command_ran": self.argv, "environment": self.environment, "url": self.url,
                "startup_seconds": self.startup_seconds,
                "served_model": self.served_model, "shutdown": self.shutdown, "log_tail": self.log_tail}  # fmt: skip


@contextlib.contextmanager
def served(
    argv: Sequence[str], *, url: str, serve: ServeSettings, log_path: str | Path | None = None,
    environment: dict[str, str] | None = None,
) -> Iterator[Server]:  # fmt: skip
    """Start the server ``argv`` (with ``environment`` over this process's variables) in a process group of its own,
    wait until ``url``/health answers and /v1/models names the model, yield it (``failure`` says why when it never got
    ready); stop it on every path. Its output goes to ``log_path`` (appended), else to a temp file replayed to stderr;
    ``log_tail`` holds the end."""
    server = Server(list(argv), url, dict(environment or {}))
    log.info("server: %s", with_environment(server.argv, server.environment))
    with server_log(log_path) as path:
        server.log_path = path
        try:
            start_server(server, path, serve)
            yield server
        finally:
            if server.proc is not None:
                log.info("stopping the server")
                server.known_processes |= descendants(server.proc.pid)
                server.shutdown = stop_group(server.proc, server.known_processes)
            server.log_tail = tail_lines(path)


def start_server(server: Server, path: Path, serve: ServeSettings) -> None:
    """Start the process, wait for /health, ask /v1/models; a failure is recorded in ``server.failure``."""
    try:
        with open(path, "ab") as out:
            started = time.perf_counter()
            # default dispositions of the stop signals, whatever this process inherited (npuport.core.spawn)
            server.proc = subprocess.Popen(default_signals(server.argv), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True,
                                           env=os.environ | server.environment)  # fmt: skip
        server.failure = wait_healthy(server.proc, server.url, serve.startup_timeout_s)
        if server.failure is None:
            server.startup_seconds = time.perf_counter() - started
            models = http_json(server.url + "/v1/models", None, serve.request_timeout_s)
            server.served_model = models["data"][0]["id"]
            log.info("server ready after %.1f s", server.startup_seconds)
            server.known_processes |= descendants(server.proc.pid)  # the engine processes, while they are its children
    except (OSError, urllib.error.URLError, KeyError, IndexError, TypeError, ValueError) as exc:
        server.failure = f"{type(exc).__name__}: {exc}"
    if server.failure:
        log.warning("server not ready: %s", server.failure)


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


# --- the serve check ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineAnswer:
    """What the offline engine answered to one prompt (smoke.json's record), for the served answer to match."""

    prompt: str
    prompt_token_ids: list[int]
    text: str
    num_tokens: int

    @classmethod
    def from_record(cls, record: PromptRecord) -> OfflineAnswer:
        g = record.generation
        return cls(record.prompt, list(g.prompt_token_ids), g.text, g.num_tokens)

    @classmethod
    def from_smoke(cls, record: dict[str, Any]) -> OfflineAnswer:
        """From one entry of smoke.json's "prompts"."""
        return cls(record["prompt"], list(record["prompt_token_ids"]), record["text"], record["num_tokens"])


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


def compare_with_offline(answer: Answer, offline: OfflineAnswer) -> dict[str, Any]:
    return {
        **asdict(answer),
        "prompt": offline.prompt,
        "text_equal_offline": answer.text == offline.text,
        "prompt_tokens_equal_offline": answer.prompt_tokens == len(offline.prompt_token_ids),
        "completion_tokens_equal_offline": answer.completion_tokens == offline.num_tokens,
    }


def check_prompts(
    server: Server, offline: Sequence[OfflineAnswer], *, generation: GenerationSettings, serve: ServeSettings
) -> dict[str, Any]:
    """Ask the ready ``server`` every prompt (raw prompts as text, as a user sends them; chat-template prompts as the
    offline token ids); "failed" when the server is not ready, a request fails, or a served text differs from the
    offline one. Returns the check's own fields (``serve_document`` adds the server's)."""
    result: dict[str, Any] = {"status": "failed", "reason": server.failure, "prompts": [],
                              "all_text_equal_offline": None}  # fmt: skip
    if not server.ready:
        return result
    try:
        for record in offline:
            prompt = record.prompt_token_ids if generation.chat_template else record.prompt
            answer = ask(server.url, server.served_model, prompt, generation=generation,
                         timeout=serve.request_timeout_s)  # fmt: skip
            result["prompts"].append(compare_with_offline(answer, record))
    except (OSError, urllib.error.URLError, KeyError, IndexError, TypeError, ValueError) as exc:
        result["reason"] = f"request {len(result['prompts']) + 1} failed: {type(exc).__name__}: {exc}"
        return result
    differ = [i for i, p in enumerate(result["prompts"], 1) if not p["text_equal_offline"]]
    result["all_text_equal_offline"] = not differ
    if differ:
        result["reason"] = f"served text differs from the offline text for prompt(s) {differ} of {len(offline)}"
        return result
    result["status"] = "ok"
    log.info("serve check: %d served answers equal the offline text", len(result["prompts"]))
    return result


def serve_document(server: Server, check: dict[str, Any], *, vllm_serve_command: str) -> dict[str, Any]:
    """The serve check's record (smoke.json's "serve" of old, bench.json's "serve" now), once the server stopped:
    a server process that outlived its shutdown fails it."""
    doc = {"status": check["status"], "reason": check["reason"], **server.record(),
           "vllm_serve_command": vllm_serve_command, "prompts": check["prompts"],
           "all_text_equal_offline": check["all_text_equal_offline"]}  # fmt: skip
    if server.shutdown and server.shutdown["processes_left"]:
        doc["status"] = "failed"
        left = [p["pid"] for p in server.shutdown["left_after_shutdown"]]
        doc["reason"] = " ".join(filter(None, [doc["reason"], f"server processes left after shutdown: {left}"]))
    log.info("serve check: %s%s", doc["status"], f" ({doc['reason']})" if doc["reason"] else "")
    return doc
