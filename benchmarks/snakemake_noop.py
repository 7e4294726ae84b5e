"""Start time of a no-op `snakemake --cores 4 report` against that of an empty workflow, in the same run.

    python benchmarks/snakemake_noop.py [--repeats 5] [--profile] [-- SNAKEMAKE_ARGS...]

e.g. `python benchmarks/snakemake_noop.py -- --configfile config/models/realshape-synthetic.yaml`.
The pipeline must be up to date first (a dry run must say there is nothing to do; otherwise this refuses
rather than start real work). The empty workflow is one rule whose only input already exists, so both runs
end in "Nothing to be done". The two commands run alternately --repeats times each, with the same snakemake
executable and --cores 4; the medians of their wall times are compared. Target: no-op <= 2x
empty. --profile runs the no-op once more under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# One target that already exists: "Nothing to be done", like the no-op report (a rule with no input would run a job).
EMPTY_SNAKEFILE = 'rule all:\n    input: "present.txt"\n'
TARGET_RATIO = 2.0


def timed(argv: list[str], cwd: Path, timeout: float) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def jobs_pending(extra: list[str], timeout: float) -> str | None:
    """None when a dry run of `report` has nothing to do, else the dry run's job summary."""
    argv = [*SNAKEMAKE, "--cores", "4", "report", "--dry-run", *extra]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"dry run failed ({done.returncode}):\n{text[-3000:]}")
    if "Nothing to be done" in text:
        return None
    summary = [line for line in text.splitlines() if line.strip() and not line.startswith(("[", "Building", "Job"))]
    return "\n".join(summary[-25:])


def profile_noop(extra: list[str], timeout: float) -> None:
    out = Path(tempfile.mkdtemp(prefix="npuport-noop-prof-")) / "noop.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "snakemake", "--cores", "4", "report", *extra]
    subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=timeout, check=True)
    import pstats

    print("\nno-op run under cProfile, top 25 by cumulative time:")
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(25)
    shutil.rmtree(out.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per snakemake call")
    parser.add_argument("--profile", action="store_true", help="also cProfile one no-op run")
    parser.add_argument("snakemake_args", nargs="*", help="extra snakemake arguments (after --)")
    args = parser.parse_args(argv)

    pending = jobs_pending(args.snakemake_args, args.timeout)
    if pending:
        print(f"the workflow is not up to date, so `report` would not be a no-op; run it first:\n{pending}")
        return 2
    empty = Path(tempfile.mkdtemp(prefix="npuport-empty-workflow-"))
    (empty / "Snakefile").write_text(EMPTY_SNAKEFILE)
    (empty / "present.txt").touch()
    noop_argv = [*SNAKEMAKE, "--cores", "4", "report", *args.snakemake_args]
    empty_argv = [*SNAKEMAKE, "--cores", "4"]
    noop, base = [], []
    try:
        for _ in range(args.repeats):
            base.append(timed(empty_argv, empty, args.timeout))
            noop.append(timed(noop_argv, ROOT, args.timeout))
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    ratio = statistics.median(noop) / statistics.median(base)
    load = os.getloadavg()[0]
    print(f"empty workflow:           median {statistics.median(base):.2f} s  ({', '.join(f'{t:.2f}' for t in base)})")
    print(f"no-op `snakemake report`: median {statistics.median(noop):.2f} s  ({', '.join(f'{t:.2f}' for t in noop)})")
    print(f"ratio {ratio:.2f} (target <= {TARGET_RATIO:g}): {'met' if ratio <= TARGET_RATIO else 'MISSED'}; "
          f"1-min load average {load:.2f}; args: {' '.join(args.snakemake_args) or '(default config)'}")  # fmt: skip
    if args.profile:
        profile_noop(args.snakemake_args, args.timeout)
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
