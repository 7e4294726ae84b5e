"""JSON from files a stranger wrote, parsed with limits on size, nesting depth and numbers."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from npuport.core.errors import NpuportError
from npuport.core.paths import readable

# config.json, tokenizer_config.json and index files are kilobytes to a few megabytes (the index of a
# 100k-tensor model is about 10 MB); 64 MiB leaves room while bounding the parsed objects to about 1 GB.
MAX_JSON_BYTES = 64 << 20
# No checkpoint file nests deeper than about 6; 64 keeps every later recursion (json.dumps, repr) far from
# Python's limit of 1000.
MAX_DEPTH = 64
# The bound is what an integer can cost, not what is usual: real files carry integers far above 64 bits
# (transformers writes model_max_length = VERY_LARGE_INTEGER, int(1e30), 31 digits, for every tokenizer without a
# length limit). Parsing n digits costs about n^2 (Python itself refuses more than 4300): at 300, a file of the
# size limit full of such integers parses in well under a second, and no checkpoint file needs a tenth of it.
MAX_INT_DIGITS = 300

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refused(ValueError):
    """A value the limits refuse, raised from inside the parser's hooks."""


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows to infinity")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _check_strings(value: Any) -> None:
    """Refuse a string holding a lone UTF-16 surrogate (valid JSON, but no UTF-8 output could hold it)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused(f"string {item[:40]!r} holds a lone UTF-16 surrogate") from None


def loads(text: str | bytes, *, source: str | Path | None, what: str = "", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with the limits: no NaN/Infinity, integers of at most MAX_INT_DIGITS digits, nesting of
    at most ``max_depth`` (checked before parsing, so the parser never recurses deep). NpuportError naming
    ``source`` for anything else than valid JSON within the limits; ``what`` (e.g. "safetensors header")
    starts the problem when given."""
    lead = f"{what} is " if what else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NpuportError(source, f"{lead}not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise NpuportError(source, f"{lead}refused: JSON nested {depth} levels deep (at most {max_depth})")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
        if _SURROGATE_ESCAPE.search(text):
            _check_strings(value)
        return value
    except _Refused as exc:
        raise NpuportError(source, f"{lead}refused: {exc}") from None
    except json.JSONDecodeError as exc:
        where = f"at line {exc.lineno} column {exc.colno}"
        raise NpuportError(source, f"{lead}not valid JSON ({exc.msg} {where})") from None


def read_bytes(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; NpuportError otherwise (a FIFO is never opened)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NpuportError(path, "file not found") from None
    except OSError as exc:
        raise NpuportError(path, f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise NpuportError(path, "refused: not a regular file")
    if info.st_size > max_bytes:
        raise NpuportError(path, f"refused: {info.st_size} bytes, more than the {max_bytes} allowed for this file")
    with readable(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NpuportError(path, f"refused: grew beyond the {max_bytes} bytes allowed for this file")
    return data


def read(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file, read and parsed within the limits."""
    return loads(read_bytes(path, max_bytes=max_bytes), source=path, max_depth=max_depth)
