"""The report's figures (matplotlib, Agg backend): PNG files that the Markdown report links to."""

# Labels are English and prompts are numbered ("prompt 1"): the default fonts have no CJK glyphs, and the
# report's tables map each number to its prompt. A figure whose data was not measured is not drawn.

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot is imported

from npuport.report.artifacts import Artifacts  # noqa: E402

LOGPROB_DIFF = "logprob_diff.png"
SPEED = "speed.png"
_DPI = 110


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    # Fixed metadata: the same data gives the same bytes, so Snakemake and reviewers see no spurious change.
    figure.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def logprob_diff_plot(compare: dict, path: Path, limit: float | None = None) -> Path | None:
    """|engine logprob - reference logprob| per generated position (teacher-forced), one line per prompt."""
    series = [
        (i, (p.get("teacher_forced") or {}).get("abs_logprob_diff_per_position") or [])
        for i, p in enumerate(compare.get("prompts") or [], start=1)
    ]
    series = [(i, values) for i, values in series if values]
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 3.8))
    for index, values in series:
        axes.plot(range(len(values)), values, marker=".", markersize=3, linewidth=1, label=f"prompt {index}")
    if limit is not None:
        axes.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"max_abs_logprob_diff {limit:g}")
    axes.set_xlabel("generated token position")
    axes.set_ylabel("max |logprob diff| over engine top-k")
    axes.set_title("Teacher-forced logprob difference, engine vs reference")
    if max(max(values) for _, values in series) > 0:
        axes.set_yscale("symlog", linthresh=1e-3)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _speed_values(document: dict) -> dict[str, float | None]:
    prompts = [p for p in document.get("prompts") or [] if isinstance(p, dict)]

    def mean(key):
        values = [p[key] for p in prompts if isinstance(p.get(key), int | float)]
        return sum(values) / len(values) if values else None

    throughput = document.get("throughput") or {}
    return {
        "tokens/s single": (throughput.get("single") or {}).get("tokens_per_s"),
        "tokens/s batch": (throughput.get("batch") or {}).get("tokens_per_s"),
        "TTFT ms": None if mean("ttft_s") is None else mean("ttft_s") * 1000,
        "TPOT ms": None if mean("tpot_s") is None else mean("tpot_s") * 1000,
    }


def _label(value: float | None) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def speed_plot(smoke: dict, baseline: dict, path: Path) -> Path | None:
    """Throughput and latency of the engine beside the baseline (a missing value leaves its bar out)."""
    sides = {"engine (smoke)": _speed_values(smoke), "reference (baseline)": _speed_values(baseline)}
    metrics = ["tokens/s single", "tokens/s batch", "TTFT ms", "TPOT ms"]
    if not any(v is not None for values in sides.values() for v in values.values()):
        return None
    figure, panels = plt.subplots(1, len(metrics), figsize=(10, 3.4))
    colors = {"engine (smoke)": "tab:blue", "reference (baseline)": "tab:gray"}
    for axes, metric in zip(panels, metrics, strict=True):
        names = list(sides)
        values = [sides[name][metric] for name in names]
        bars = axes.bar(range(len(names)), [v or 0 for v in values], color=[colors[n] for n in names])
        axes.bar_label(bars, labels=[_label(v) for v in values], fontsize=8)
        axes.set_xticks(range(len(names)), [n.split(" ")[0] for n in names], fontsize=8)
        axes.set_title(metric, fontsize=9)
        axes.margins(y=0.2)
    figure.suptitle("Engine vs reference: throughput (higher is better) and latency (lower is better)", fontsize=10)
    return _save(figure, path)


def draw(artifacts: Artifacts, plots_dir: Path) -> dict[str, str]:
    """Draw every plot whose data was measured into ``plots_dir``; plot name -> file name."""
    drawn = {}
    compare = artifacts.compare
    checks = compare.records("checks")
    limit = next((c.get("limit") for c in checks if c.get("threshold") == "max_abs_logprob_diff"), None)
    if logprob_diff_plot(dict(compare.data), plots_dir / LOGPROB_DIFF, limit):
        drawn["logprob_diff"] = LOGPROB_DIFF
    if speed_plot(dict(artifacts.smoke.data), dict(artifacts.baseline.data), plots_dir / SPEED):
        drawn["speed"] = SPEED
    return drawn
