"""Helpers every probe uses: the "unknown: ..." fact, a step that never raises, key=value files, bounded commands."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def unknown(reason: object) -> str:
    return f"unknown: {reason}"


def safe(what: str, fn, *args):
    """Run one probing step; a failure becomes an "unknown: ..." fact instead of an exception."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the probe must never raise
        log.warning("probe step %s failed: %s", what, exc)
        return unknown(f"{what} failed: {type(exc).__name__}: {exc}")


def read_key_values(path: Path) -> dict[str, str]:
    """Read an Ascend `key=value` info file (ascend_*_install.info, driver version.info)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            pairs[key.strip()] = value.strip()
    return pairs


def tail(text: str, limit: int = 20000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def run_command(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run with a timeout that also ends the command's own children (its process group), then re-raise."""
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=dict(env),
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
