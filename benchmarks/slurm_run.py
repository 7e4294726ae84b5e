"""Where the SLURM end-to-end test's time goes: its own `snakemake --profile profiles/slurm report` run (the
arguments of tests/test_slurm.py's `slurm_run` fixture) on the test's single-node cluster, then one row per job:
when it was submitted (seconds after snakemake started), how long it queued and ran (scontrol), and how long after
its end snakemake noticed it (its log). Needs root and the SLURM packages (.ci/install-slurm.sh).

    python benchmarks/slurm_run.py [extra snakemake arguments]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import copy_workflow  # noqa: E402
from slurm_cluster import start_cluster  # noqa: E402
from test_slurm import SLURM_ARGS, TEST_CONFIG  # noqa: E402

SCONTROL_TIME = "%Y-%m-%dT%H:%M:%S"
LOG_TIME = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")


def noticed(log: str) -> dict[str, datetime]:
    """Snakemake job id -> the time its log says the job finished."""
    found, stamp = {}, None
    for line in log.splitlines():
        if match := LOG_TIME.match(line):
            stamp = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y")
        elif (match := re.match(r"Finished jobid: (\d+) ", line)) and stamp:
            found[match[1]] = stamp
    return found


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="npuport-slurm-run-") as tmp, start_cluster() as cluster:
        workdir = copy_workflow(Path(tmp) / "wf")
        args = ["--profile", "profiles/slurm", "--configfile", TEST_CONFIG, *SLURM_ARGS, *extra, "report"]
        env = os.environ | cluster.env | {"NPUPORT_SLURM_PARTITION": cluster.partition, "NPUPORT_SLURM_ACCOUNT": "",
                                           "NPUPORT_SLURM_GRES": ""}  # fmt: skip
        started = datetime.now().replace(microsecond=0)
        wall = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True,
                             text=True)  # fmt: skip
        wall = time.monotonic() - wall
        log = run.stdout + run.stderr
        print(f"snakemake {' '.join(args)}\nexit {run.returncode}, {wall:.0f} s")
        if run.returncode:
            print(log[-4000:])
        submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log)
        seen, jobs = noticed(log), cluster.jobs()
        rows = []
        for job, slurm_id, rule in submitted:
            record = jobs[slurm_id]
            submit, start, end = (datetime.strptime(record[k], SCONTROL_TIME) for k in
                                  ("SubmitTime", "StartTime", "EndTime"))  # fmt: skip
            late = (seen[job] - end).total_seconds() if job in seen else float("nan")
            rows.append(((submit - started).total_seconds(), rule, (start - submit).total_seconds(),
                         (end - start).total_seconds(), late, record["JobState"]))  # fmt: skip
        print(f"{'rule':20} {'submitted':>9} {'queued':>6} {'ran':>5} {'noticed':>7}  state")
        for submit, rule, queued, ran, late, state in sorted(rows):
            print(f"{rule:20} {submit:9.0f} {queued:6.0f} {ran:5.0f} {late:7.0f}  {state}")
        print(f"sum: ran {sum(r[3] for r in rows):.0f} s, noticed after the end {sum(r[4] for r in rows):.0f} s, "
              f"{len(rows)} submissions (the plugin sleeps 5 s before each)")  # fmt: skip
        return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
