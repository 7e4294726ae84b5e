"""Numbers, facts and statuses as table-cell text; a value no artifact holds is the catalog's "not measured"."""

from __future__ import annotations

import json

from npuport.report.artifacts import Doc
from npuport.report.mdtext import Md
from npuport.report.messages import Messages
from npuport.report.verdicts import NOT_MEASURED, SYMBOLS, format_value


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mean(values) -> float | None:
    numbers = [v for v in values if is_number(v)]
    return sum(numbers) / len(numbers) if numbers else None


def ratio(a, b) -> float | None:
    return a / b if is_number(a) and is_number(b) and b else None


def mark(passed: bool | None) -> str:
    return {True: "✅", False: "❌"}.get(passed, "⚠")


def status_cell(t: Messages, status: str, shown: str | None = None) -> Md:
    """✅ passed / ❌ failed / ⚠ not measured, in the report's language; ``shown``: another word beside the status's
    symbol (a verdict's ``shown``, e.g. ✅ measured)."""
    return Md(f"{SYMBOLS.get(status, SYMBOLS[NOT_MEASURED])} {t('status.' + (shown or status).replace(' ', '_'))}")


def stage_status(doc: Doc) -> str:
    """A smoke/baseline/serve status as a verdict status (ok passed, failed failed, anything else not measured)."""
    return {"ok": "passed", "failed": "failed"}.get(doc.get("status"), NOT_MEASURED)


class Formatter:
    """Numbers and facts as cell text; a value an artifact does not hold is the catalog's "not measured"."""

    def __init__(self, t: Messages):
        self.t = t
        self.missing = t("word.not_measured")

    def num(self, value, digits: int = 3) -> str:
        """Integers with thousands separators; floats with ``digits`` significant digits (tiny ones as 1.2e-05)."""
        if not is_number(value):
            return self.missing
        if isinstance(value, int):
            return f"{value:,}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        whole = len(str(int(abs(value)))) if abs(value) >= 1 else 0
        return f"{value:,.{max(digits - whole, 0)}f}"

    def seconds(self, value) -> str:
        return f"{self.num(value)} s" if is_number(value) else self.missing

    def ms(self, value) -> str:
        return f"{self.num(value * 1000)} ms" if is_number(value) else self.missing

    def mb(self, value) -> str:
        return f"{self.num(value)} MB" if is_number(value) else self.missing

    def bytes(self, value) -> str:
        if not is_number(value):
            return self.missing
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{self.num(value / size)} {unit} ({value:,} B)"
        return f"{value:,} B"

    def value(self, value) -> str:
        """A config or JSON value: absent, true/false, numbers readable, anything else as JSON."""
        if value is None:
            return self.t("word.absent")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{int(value):,}" if value.is_integer() and abs(value) < 1e15 else format_value(value)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def percent(self, fraction, digits: int = 4) -> str:
        """A fraction as a percentage: 0.99487 -> "99.49 %"."""
        return f"{self.num(fraction * 100, digits)} %" if is_number(fraction) else self.missing

    def plus_minus(self, value, uncertainty, *, scale: float = 1.0, unit: str = "") -> str:
        """``value ± uncertainty`` (both times ``scale``, then ``unit``), as llama-perplexity prints them."""
        if not is_number(value):
            return self.missing
        shown = f"{self.metric(value * scale)}{unit}"
        return f"{shown} ± {self.uncertainty(uncertainty * scale)}{unit}" if is_number(uncertainty) else shown

    def uncertainty(self, value) -> str:
        """A standard error with two significant digits (1.5e-05, 0.0015, 0.11, 12)."""
        if not is_number(value):
            return self.missing
        if value == 0 or abs(value) >= 100:
            return self.num(value, 3)
        return f"{value:.1e}" if abs(value) < 1e-3 else f"{value:.2g}"

    def metric(self, value) -> str:
        return format_value(value) if is_number(value) else self.missing

    def yes_no(self, value) -> str:
        if isinstance(value, bool):
            return self.t("word.yes") if value else self.t("word.no")
        return self.missing if value is None else str(value)

    def speed(self, engine_advantage) -> str:
        """How much faster (or slower) the engine is than the reference."""
        if not is_number(engine_advantage) or engine_advantage <= 0:
            return ""
        if engine_advantage >= 1:
            return self.t("perf.faster", x=self.num(engine_advantage))
        return self.t("perf.slower", x=self.num(1 / engine_advantage))
