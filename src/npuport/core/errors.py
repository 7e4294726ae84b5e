"""Errors the pipeline reports to the user as one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class NpuportError(Exception):
    """A user-facing failure: bad input, not a bug. Message is one line."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
