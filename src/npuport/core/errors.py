"""Errors the pipeline reports to the user as one line naming the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path

# Longest message shown; a longer one (a tensor name of a megabyte) is cut in the middle.
MAX_MESSAGE_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with control characters (newlines included) escaped, cut in the middle beyond ``limit``."""
    text = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)
    if len(text) > limit:
        keep = limit // 2
        text = f"{text[:keep]} [... {len(text) - 2 * keep} characters ...] {text[-keep:]}"
    return text


class NpuportError(Exception):
    """A user-facing failure: bad input, not a bug. Message is one line.

    Whatever the path or the problem holds (a file name with a newline, a tensor name of a megabyte), the
    message stays one line of bounded length: control characters are escaped and the middle of an overlong
    message is cut.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else one_line(str(path))
        self.problem = one_line(problem)
        super().__init__(one_line(f"{self.path}: {self.problem}") if self.path else self.problem)
