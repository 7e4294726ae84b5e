"""Report tables declared as columns: (header message key, getter of the row's cell) pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from npuport.report.mdtext import Md, table
from npuport.report.messages import Messages


class Verbatim(str):
    """A column header shown as written (escaped like any text), not a message key: "#", "W", "HBM MB"."""


Column = tuple[str, Callable[[Any], object]]


def column_table(t: Messages, rows: Iterable[Any], columns: Sequence[Column]) -> Md:
    """One table row per item of ``rows``; each column's header is ``t(key)`` (or a Verbatim), its cell getter(row)."""
    headers = [key if isinstance(key, Verbatim) else t(key) for key, _ in columns]
    return table([[cell(row) for _, cell in columns] for row in rows], headers)
