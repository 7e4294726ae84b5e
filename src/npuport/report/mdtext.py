"""Markdown text that artifact content cannot break: escaped inline text, code spans, fenced blocks, tables."""

# Everything a report shows from an artifact (model output, paths, error text) goes through one of these, so a
# ``|``, newline, backtick, ``<script>``, ``*`` or ``#`` in it renders as itself and never as Markdown or HTML.

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

# ASCII punctuation that can start Markdown syntax anywhere in a line (CommonMark allows escaping any of it).
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~&!$])")
# Syntax that only counts at the start of a line: bullet/setext/thematic markers and ordered-list markers.
_LINE_START = re.compile(r"^(\s*)([-+=])")
_ORDERED = re.compile(r"^(\s*\d+)([.)])(?=\s|$)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NEWLINES = re.compile(r"\r\n|\r|\n")
NEWLINE_MARK = " ↵ "


class Md(str):
    """Markdown that is trusted as is (built by this module or from the report's own message catalog)."""


def _one_line(value: object) -> str:
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return _NEWLINES.sub(NEWLINE_MARK, text).replace("\t", " ")


def text(value: object) -> Md:
    """``value`` as inline Markdown on one line that renders as the literal text (newlines shown as ↵)."""
    if isinstance(value, Md):
        return value
    escaped = _INLINE_SPECIAL.sub(r"\\\1", _one_line(value))
    escaped = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)
    return Md(_ORDERED.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped))


def code(value: object) -> Md:
    """``value`` as an inline code span on one line, safe inside a table cell."""
    body = _one_line(value)
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * (longest + 1)
    if body.startswith("`") or body.endswith("`") or (body.startswith(" ") and body.endswith(" ") and body.strip()):
        body = f" {body} "
    # GFM splits table rows at unescaped pipes before it parses code spans; "\|" stays a pipe inside the span.
    return Md(f"{ticks}{body.replace('|', chr(92) + '|')}{ticks}") if body else Md("")


def fence(value: object, info: str = "") -> Md:
    """``value`` verbatim in a fenced code block whose fence no line of it can close."""
    body = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)).replace("\r\n", "\n").replace("\r", "\n")
    longest = max((len(run) for run in re.findall(r"`{3,}", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    info = re.sub(r"[^A-Za-z0-9_+-]", "", info)
    return Md(f"{ticks}{info}\n{body if body.endswith(chr(10)) else body + chr(10)}{ticks}")


def cell(value: object) -> str:
    """A table cell: anything untrusted escaped, and in trusted Markdown too a bare ``|`` (it would end the
    cell) escaped and newlines (they would end the row) joined; None shows as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, Md):
        return re.sub(r"(?<!\\)\|", r"\\|", _NEWLINES.sub(" ", value))
    return text(value)


def table(rows: Sequence[Sequence[object]], headers: Sequence[object]) -> Md:
    """A GitHub-flavoured Markdown table (pandas ``to_markdown``) with every cell escaped unless trusted."""
    frame = pd.DataFrame([[cell(v) for v in row] for row in rows], columns=[cell(h) for h in headers], dtype=object)
    # numparse off: cells are already formatted text; tabulate must not re-format "1,024" or "0.10".
    return Md(frame.to_markdown(index=False, disable_numparse=True))


def link(label: object, target: str) -> Md:
    """A relative link; the target is percent-encoded where Markdown would misread it."""
    safe = re.sub(r"[^A-Za-z0-9/._~-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), target)
    return Md(f"[{text(label)}]({safe})")


def image(alt: object, target: str) -> Md:
    return Md("!" + link(alt, target))
