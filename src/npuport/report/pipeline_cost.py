"""What each stage cost: the Snakemake benchmark files (one per stage) as one table."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

# Snakemake's columns (max_* in MB, io_* in MB, cpu_time in seconds) -> our names.
COLUMNS = {
    "s": "wall_s",
    "max_rss": "max_rss_mb",
    "cpu_time": "cpu_s",
    "mean_load": "mean_load",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
}


def read_benchmark(path: Path) -> dict:
    """The last run recorded in one benchmark file (``--benchmark-repeats`` writes one row per run)."""
    frame = pd.read_csv(path, sep="\t", na_values=["NA", "-", ""])
    if frame.empty:
        return {"stage": path.stem, **dict.fromkeys(COLUMNS.values())}
    row = frame.iloc[-1]
    values = {}
    for column, name in COLUMNS.items():
        value = pd.to_numeric(row.get(column), errors="coerce")
        values[name] = None if pd.isna(value) else float(value)
    return {"stage": path.stem, "runs": len(frame), **values}


def stage_costs(benchmarks: Iterable[str | Path]) -> pd.DataFrame:
    """One row per benchmark file that exists, in the order given (a stage's name is its file's stem); an empty
    frame when there is nothing to read."""
    rows = [read_benchmark(Path(p)) for p in benchmarks if Path(p).is_file()]
    return pd.DataFrame(rows, columns=["stage", "runs", *COLUMNS.values()])


def totals(costs: pd.DataFrame) -> dict:
    """Sum of wall and CPU time, and the largest peak RSS of any stage (stages run as separate processes)."""

    def total(column, how):
        values = costs[column].dropna() if column in costs else pd.Series(dtype=float)
        return None if values.empty else float(getattr(values, how)())

    return {"wall_s": total("wall_s", "sum"), "cpu_s": total("cpu_s", "sum"), "max_rss_mb": total("max_rss_mb", "max")}
