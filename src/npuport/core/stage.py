"""Run one pipeline stage from a Snakemake script: logging and all output to the log, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from npuport.core.errors import NpuportError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("npuport")


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
    with open(log_path, "a", encoding="utf-8") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def configure_logging(level: int = logging.INFO) -> None:
    """The one logging set-up of a stage process: every library logger writes to stderr (the stage log)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def _console(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_stage(name: str, log_path: str | Path | None, body: Callable[[], None]) -> None:
    """Run ``body`` with logging and output in the log; a failure exits 1 with one line on the console
    (the log keeps the traceback)."""
    try:
        with redirect_to_log(log_path):
            configure_logging()
            try:
                body()
            except NpuportError as exc:
                log.error("%s: error: %s", name, exc)
                raise
            except Exception:
                log.exception("%s: failed", name)
                raise
    except NpuportError as exc:
        _console(f"{name}: error: {exc}")
        sys.exit(1)
    except Exception as exc:
        _console(f"{name}: failed: {type(exc).__name__}: {exc} (traceback in {log_path})")
        sys.exit(1)
