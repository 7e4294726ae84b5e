"""What every remote source shares: a total deadline, retries with backoff, bounded child processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from npuport.core.atomic import read_json, write_json
from npuport.core.errors import NpuportError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 3600
DEFAULT_MAX_RETRIES = 4
DEFAULT_BACKOFF_S = 2.0
_MAX_BACKOFF_S = 60.0
_TAIL_BYTES = 4000


class TransientError(Exception):
    """A failure worth retrying: network down, connection dropped, 5xx/429 answers."""


@dataclass
class Fetched:
    """A checkpoint a source has brought into its cache, before verification and publication.

    ``files`` maps each relative path to what the source advertised: ``size``, ``sha256`` (LFS or
    hub metadata) and/or ``git_oid`` (git blob sha1). ``root`` holds the files; symlinks in it may
    point anywhere under ``trusted_root``. ``discard(path)`` removes a bad copy from the cache.
    """

    root: Path
    trusted_root: Path
    files: dict[str, dict]
    resolved: dict
    discard: Callable[[str], None] = field(default=lambda rel: None)


@dataclass
class Policy:
    """The transport settings of a source spec (schema keys timeout_s, max_retries, retry_backoff_s)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def from_source(cls, source: dict) -> Policy:
        return cls(
            timeout_s=float(source.get("timeout_s", DEFAULT_TIMEOUT_S)),
            max_retries=int(source.get("max_retries", DEFAULT_MAX_RETRIES)),
            backoff_s=float(source.get("retry_backoff_s", DEFAULT_BACKOFF_S)),
        )

    def remaining(self) -> float:
        return self.timeout_s - (time.monotonic() - self.started)

    def timed_out(self, what: str, cache: Path) -> NpuportError:
        return NpuportError(
            what,
            f"download did not finish within timeout_s={self.timeout_s:g}; what was fetched stays in {cache} "
            "and a rerun resumes from it",
        )


def with_retries(attempt: Callable[[], T], policy: Policy, what: str, cache: Path) -> T:
    """Call ``attempt`` until it stops raising TransientError, backing off exponentially, within the deadline."""
    for number in range(policy.max_retries + 1):
        try:
            return attempt()
        except TransientError as exc:
            if number == policy.max_retries:
                raise NpuportError(what, f"failed after {number + 1} attempt(s): {exc}") from None
            delay = min(policy.backoff_s * 2**number, _MAX_BACKOFF_S)
            if policy.remaining() <= delay:
                raise policy.timed_out(what, cache) from None
            log.warning("attempt %d failed (%s); retrying in %g s", number + 1, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def run_bounded(cmd: list[str], policy: Policy, what: str, cache: Path, **popen) -> tuple[int, str]:
    """Run ``cmd``, its output streamed to our stderr (the stage log); (exit code, output tail).

    The child gets its own process group, killed whole when the deadline passes.
    """
    remaining = policy.remaining()
    if remaining <= 0:
        raise policy.timed_out(what, cache)
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            **popen,
        )
    except FileNotFoundError:
        raise NpuportError(what, f"{cmd[0]} is not installed (not found on PATH)") from None
    tail = bytearray()
    pump = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
    pump.start()
    try:
        code = proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise policy.timed_out(what, cache) from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    pump.join(timeout=5)
    return code, tail.decode("utf-8", "replace")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the stage process dies, so that no download outlives a killed job."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(stream, tail: bytearray) -> None:
    sys.stderr.flush()
    while chunk := stream.read1(65536):
        os.write(2, chunk)
        tail.extend(chunk)
        del tail[:-_TAIL_BYTES]
    stream.close()


def run_worker(kind: str, request: dict, *, policy: Policy, what: str, cache: Path, env: dict | None = None) -> dict:
    """Run ``fetch_in_worker(request)`` of source ``kind`` in a child interpreter (killable at the deadline).

    Returns its value; a transient failure raises TransientError, any other NpuportError.
    """
    cache.mkdir(parents=True, exist_ok=True)
    request_path, result_path = cache / f".{kind}-request.json", cache / f".{kind}-result.json"
    write_json(request_path, request)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "npuport.download.sources.worker", kind, str(request_path), str(result_path)]
    code, tail = run_bounded(cmd, policy, what, cache, env=os.environ | (env or {}))
    if not result_path.exists():
        raise TransientError(f"worker exited with code {code} without a result: {tail.strip()[-300:]}")
    result = read_json(result_path)
    if result["status"] == "ok":
        return result["value"]
    if result["status"] == "transient":
        raise TransientError(result["error"])
    raise NpuportError(what, result["error"])


def without_credentials(url: str) -> str:
    """``url`` with any user:password@ part removed, for manifests, logs and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete leftovers matching ``pattern`` (e.g. partial files a killed run could never reuse)."""
    if directory.is_dir():
        for path in directory.rglob(pattern):
            path.unlink(missing_ok=True)
