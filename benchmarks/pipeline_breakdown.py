"""Where the default run's wall time goes: per stage, and inside the engine stage by phase.

    python benchmarks/pipeline_breakdown.py [--workdir DIR] [--cores 4] [--model NAME] [-- SNAKEMAKE_ARGS...]

Without --workdir the workflow is copied into a temporary directory and `snakemake --cores N report` runs there
from scratch (nothing reused); with --workdir a completed run in DIR is read. Printed:

- per stage (Snakemake's benchmark files, results/<model>/benchmarks/<rule>.tsv): wall seconds, CPU seconds and
  max RSS; wall - CPU is what the stage spent waiting (on 2 cores a stage can also use more CPU than wall);
- the run's wall time, from Snakemake's log (its start to its last line, 1 s resolution);
- inside the two engine stages, the phases between the job's start (Snakemake's log) and the timestamped lines
  npuport writes to logs/<model>/<stage>.log: in `smoke` imports and preparation, the deployed engine's
  construction (compilation, vLLM's profiling and KV cache sizing inside), the warm-up request, the measured
  requests, the evaluation logits, the configurations sharing the deployed engine and its shutdown, then the other
  engines (smoke.json: each deployment configuration's engine start and workload seconds); in `bench` imports,
  the server start (until /health answers), the serve check, the engine's accuracy tasks (lm-eval), the load
  ladder, the server's shutdown; and what follows until each job ends.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "introspect", "repair_config", "fuse", "env_probe", "smoke", "baseline", "compare", "layers",
          "bench", "accuracy_reference", "accuracy", "report_model", "report_index")  # fmt: skip
# Per engine stage, the log lines that end a phase (npuport's own messages), in order.
PHASES = {
    "smoke": (
        ("imports, tokenizer, evaluation plan", re.compile(r"npuport\.engines\.vllm_runner: starting vLLM")),
        ("engine construction (load, profiling, KV cache)", re.compile(r"vllm_runner: engine started")),
        ("warm-up request", re.compile(r"npuport\.engines\.records: warm-up:")),
        ("measured requests (one at a time, then the batch)", re.compile(r"npuport\.engines\.smoke: throughput:")),
        ("evaluation logits (every segment, alone)", re.compile(r"npuport\.engines\.smoke: captured the engine's")),
        ("configurations on the deployed engine, its shutdown", re.compile(r"vllm_runner: engine shut down")),
        # the last shutdown in the log (LAST): every other engine's start, workloads and shutdown
        ("LAST the other engines (configurations, layer capture)", re.compile(r"vllm_runner: engine shut down")),
    ),
    "bench": (
        ("imports", re.compile(r"npuport\.engines\.serve_check: server: ")),
        ("server start (until /health answers)", re.compile(r"npuport\.engines\.serve_check: server ready")),
        ("serve check (the prompts again)", re.compile(r"npuport\.engines\.serve_check: serve check: \d+ served")),
        ("accuracy tasks, engine side (lm-eval)", re.compile(r"npuport\.accuracy\.harness: lm-eval ")),
        ("load ladder (vllm bench serve)", re.compile(r"npuport\.engines\.serve_check: stopping the server")),
        ("server shutdown", re.compile(r"npuport\.engines\.serve_check: serve check: (ok|failed)")),
    ),
}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
JOB_START = re.compile(
    r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]\n(?:local)?rule (\w+):\n"
    r"(?:    .*\n)*?    wildcards: model=([^,\n]+)",
    re.M,
)
SNAKEMAKE_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)


def snakemake_time(text: str) -> datetime:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")


def run_pipeline(cores: int, extra: list[str]) -> tuple[Path, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import copy_workflow  # the tests' copy of the workflow: what a fresh checkout runs

    workdir = copy_workflow(Path(tempfile.mkdtemp(prefix="npuport-breakdown-")) / "wf")
    argv = [sys.executable, "-m", "snakemake", "--cores", str(cores), "report", *extra]
    print(f"running {' '.join(argv[1:])} in {workdir}", file=sys.stderr)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the pipeline failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return workdir, wall


def stage_rows(results: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for stage in STAGES:
        tsv = results / "benchmarks" / f"{stage}.tsv"
        if not tsv.is_file():
            continue
        with open(tsv, encoding="utf-8") as fh:
            record = next(csv.DictReader(fh, delimiter="\t"))
        rows.append((stage, float(record["s"]), float(record["cpu_time"]), float(record["max_rss"])))
    return rows


def snakemake_log(workdir: Path) -> str:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"no Snakemake log under {workdir}/.snakemake/log")
    return logs[-1].read_text(encoding="utf-8")


def run_wall(log: str) -> float:
    start = datetime.strptime(re.search(r"^  Date: (.+)$", log, re.M)[1].strip(), "%Y-%m-%d %H:%M:%S")
    return (snakemake_time(SNAKEMAKE_STAMP.findall(log)[-1]) - start).total_seconds()


def stage_phases(workdir: Path, model: str, log: str, stage: str, wall: float) -> list[tuple[str, float]]:
    """(phase, seconds) inside the ``stage`` job; the job's start has 1 s resolution."""
    starts = [snakemake_time(t) for t, rule, m in JOB_START.findall(log) if rule == stage and m == model]
    if not starts:
        raise SystemExit(f"no {stage} job for model {model} in Snakemake's log")
    stamps = []
    for line in (workdir / "logs" / model / f"{stage}.log").read_text(encoding="utf-8", errors="replace").splitlines():
        found = STAMP.match(line)
        if found:
            stamps.append((datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f"), line))
    phases, previous = [], starts[0]
    for name, pattern in PHASES[stage]:
        hits = [when for when, line in stamps if when >= previous and pattern.search(line)]
        hit = (hits[-1] if name.startswith("LAST ") else hits[0]) if hits else None
        name = name.removeprefix("LAST ")
        if hit is None:
            phases.append((name, float("nan")))
            continue
        phases.append((name, (hit - previous).total_seconds()))
        previous = hit
    phases.append((f"writing {stage}.json, exit", (starts[0] - previous).total_seconds() + wall))
    return phases


def configurations(smoke_json: Path) -> None:
    """Per deployment configuration (smoke.json: deployments): its engine's start (shared engines: the same start)
    and its workload's seconds (greedy prompts and scored segments)."""
    import json

    if not smoke_json.is_file():
        return
    smoke = json.loads(smoke_json.read_text(encoding="utf-8"))
    print("\n| configuration (smoke) | engine start s | workload s | status |")
    print("|---|---:|---:|---|")
    print(f"| deployed | {smoke.get('load_seconds') or float('nan'):.1f} | | {smoke.get('status')} |")
    for row in (smoke.get("deployments") or {}).get("configurations") or []:
        start, work = row.get("engine_start_s"), row.get("seconds")
        shared = " (the deployed engine)" if start == smoke.get("load_seconds") else ""
        start_text = f"{start:.1f}{shared}" if isinstance(start, float) else "—"
        work_text = f"{work:.1f}" if isinstance(work, float) else "—"
        print(f"| {row['name']} | {start_text} | {work_text} | {row['status']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="a completed run to read (default: run one in a temp dir)")
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--model", default="tiny-bitcpm")
    parser.add_argument("snakemake_args", nargs="*", help="after --: passed to snakemake")
    args = parser.parse_args()
    if args.workdir:
        workdir, measured = args.workdir.resolve(), None
    else:
        workdir, measured = run_pipeline(args.cores, args.snakemake_args)
    log = snakemake_log(workdir)
    rows = stage_rows(workdir / "results" / args.model)
    print(f"| stage ({args.model}) | wall s | CPU s | waiting s (wall - CPU) | max RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for stage, wall, cpu, rss in rows:
        print(f"| {stage} | {wall:.1f} | {cpu:.1f} | {max(wall - cpu, 0):.1f} | {rss:,.0f} |")
    total = sum(r[1] for r in rows)
    print(f"| sum of stages | {total:.1f} | {sum(r[2] for r in rows):.1f} | | |")
    here = f"; measured here {measured:.1f} s" if measured else ""
    print(f"\nrun wall (Snakemake's log): {run_wall(log):.0f} s{here}")
    configurations(workdir / "results" / args.model / "smoke.json")
    for stage in PHASES:
        wall = next((r[1] for r in rows if r[0] == stage), None)
        if wall is None:
            continue
        print(f"\n| inside {stage} ({wall:.1f} s) | s |")
        print("|---|---:|")
        for name, seconds in stage_phases(workdir, args.model, log, stage, wall):
            print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
