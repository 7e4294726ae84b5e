"""Run one pipeline stage from a Snakemake script: output to the log, one-line errors."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from npuport.core.errors import NpuportError


@contextlib.contextmanager
def redirect_to_log(log_path: str | Path | None) -> Iterator[None]:
    """Send fd 1 and 2 (Python and C level, child processes too) to ``log_path`` while inside."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_stage(name: str, log_path: str | Path | None, body: Callable[[], None]) -> None:
    """Run ``body`` with output in the log; a user error exits 1 with one line on stderr."""
    try:
        with redirect_to_log(log_path):
            try:
                body()
            except NpuportError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                raise
            except Exception:
                traceback.print_exc()
                raise
    except NpuportError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        print(f"{name}: failed: {type(exc).__name__}: {exc} (traceback in {log_path})", file=sys.stderr)
        sys.exit(1)
