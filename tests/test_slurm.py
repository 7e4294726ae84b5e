"""End to end on a real SLURM: the default workflow through `--profile profiles/slurm`, every stage a job.

A single-node cluster (Debian's slurmctld/slurmd/munge, count-only GRES ``npu:2``) is started for
this module by tests/slurm_cluster.py and stopped by pid afterwards, also when a test fails. The
model is the embedded one under another name; the config asks for the ``npu`` accelerator
resource, so the profile maps smoke and env_probe to ``--gres=npu:1``. Without the SLURM packages
the module is skipped (``NPUPORT_REQUIRE_SLURM=1`` turns the skip into a failure, for CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow, run_snakemake, scenario_config
from slurm_cluster import SlurmUnavailable, check_host, start_cluster

from npuport.core.spawn import default_signals

pytestmark = pytest.mark.e2e

MODELS = ("tiny-slurm",)
# Scenario .test/slurm: the embedded model under this name, engine stages holding `npu`.
TEST_CONFIG = ".test/slurm/config.yaml"
# What the profile asks for, per rule (scontrol's view of the submitted job).
EXPECTED_LIMITS = {
    "download": ("04:00:00", "2000M"),
    "introspect": ("00:30:00", "4000M"),
    "repair_config": ("00:30:00", "2000M"),
    "fuse": ("02:00:00", "4000M"),
    "env_probe": ("00:30:00", "2000M"),
    "smoke": ("02:00:00", "10000M"),  # the rule's mem_mb
    "baseline": ("04:00:00", "8000M"),
    "compare": ("02:00:00", "4000M"),
    "layers": ("02:00:00", "4000M"),
    "bench": ("02:00:00", "10000M"),
    "accuracy_reference": ("02:00:00", "8000M"),
    "accuracy": ("00:30:00", "2000M"),
    "report_model": ("00:30:00", "2000M"),
    "report_index": ("00:30:00", "2000M"),
}
NPU_RULES = {"env_probe", "smoke", "bench"}
# Deterministic artifacts: everything up to the fused model (the engine stages record timings).
DETERMINISTIC = ("introspect.json", "config.json", "repair.json", "download", "model")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
# The run's arguments besides the profile, the config file and the target (benchmarks/slurm_run.py runs the same).
SLURM_ARGS = (
    # This cluster has no accounting database: job states come from squeue (MinJobAge covers it).
    "--slurm-status-command",
    "squeue",
    # The plugin's first status check, and its interval again after every check that saw a job end (each check that
    # saw none adds 10 s): 1 s, the least it accepts (default 40).
    "--slurm-init-seconds-before-status-checks",
    "1",
    # Two CPUs on the node: the profile's threads (sized for real nodes) are capped.
    "--max-threads",
    "1",
)


def run_until_done(workdir: Path, args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run snakemake; past ``timeout`` stop it with SIGINT (it cancels its SLURM jobs; SIGTERM would
    make it wait for them). It starts with SIGINT at its default disposition (npuport.core.spawn), so the SIGINT
    reaches it also when pytest runs as a background job, which ignores SIGINT."""
    log = workdir / "snakemake-slurm.log"
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            default_signals([sys.executable, "-m", "snakemake", *args]),
            cwd=workdir,
            env=os.environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return process.returncode, log.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        check_host()
    except SlurmUnavailable as reason:
        if os.environ.get("NPUPORT_REQUIRE_SLURM") == "1":
            pytest.fail(str(reason))
        pytest.skip(str(reason))
    with start_cluster(keep_dir=tmp_path_factory.mktemp("slurm-daemon-logs")) as started:
        yield started


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """`snakemake --profile profiles/slurm report` on the scenario; (workdir, snakemake output, job id -> rule)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    config = scenario_config("slurm", workdir)
    assert config == workdir / TEST_CONFIG
    assert [m["name"] for m in yaml.safe_load(config.read_text(encoding="utf-8"))["models"]] == list(MODELS)
    args = ["--profile", "profiles/slurm", "--configfile", TEST_CONFIG, *SLURM_ARGS, "report"]
    # The partition through the profile's environment variable (it is not the default one); empty = unset.
    env = cluster.env | {
        "NPUPORT_SLURM_PARTITION": cluster.partition,
        "NPUPORT_SLURM_ACCOUNT": "",
        "NPUPORT_SLURM_GRES": "",
    }
    returncode, output = run_until_done(workdir, args, env, timeout=900)
    if returncode != 0:
        jobs = cluster.command("squeue", "--states=all", "--format=%i %j %T %r %b %C %m %l", check=False)
        pytest.fail(f"snakemake under SLURM failed ({returncode}):\n{output[-6000:]}\n{jobs}\n{cluster.log_tails()}")
    rules = {}
    for job_id, log in SUBMITTED.findall(output):
        rules[job_id] = re.search(r"/rule_(\w+)/", log)[1]
    return workdir, output, rules


def test_every_job_ran_as_a_slurm_job(slurm_run, cluster):
    workdir, output, rules = slurm_run
    # Every job of the workflow but `report` (a local rule: the target) went through sbatch: one per
    # rule and model, report_index once for all models.
    expected = Counter({rule: len(MODELS) for rule in EXPECTED_LIMITS} | {"report_index": 1})
    assert Counter(rules.values()) == expected, output[-3000:]
    known = cluster.jobs()
    for job_id, rule in rules.items():
        job = known[job_id]
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), (rule, job)
        assert job["Partition"] == cluster.partition, (rule, job["Partition"])  # from NPUPORT_SLURM_PARTITION
        log = next(workdir.glob(f".snakemake/slurm_logs/rule_{rule}/**/{job_id}.log"))
        assert f"rule {rule}:" in log.read_text(encoding="utf-8"), log
    assert set(known) == set(rules), "the cluster ran jobs that snakemake did not submit"


def test_engine_jobs_asked_for_the_npu_gres(slurm_run, cluster):
    _, _, rules = slurm_run
    for job_id, rule in rules.items():
        job = cluster.job(job_id)
        if rule in NPU_RULES:
            assert job.get("TresPerNode") == "gres:npu:1", (rule, job)
        else:
            assert "TresPerNode" not in job, (rule, job)


def test_profile_resources_reach_sbatch(slurm_run, cluster):
    _, _, rules = slurm_run
    for job_id, rule in rules.items():
        job = cluster.job(job_id)
        assert (job["TimeLimit"], job["MinMemoryNode"]) == EXPECTED_LIMITS[rule], (rule, job)
        assert job["NumCPUs"] == "1"  # the profile's threads, capped by --max-threads


def test_every_model_completed(slurm_run):
    workdir, _, _ = slurm_run
    assert (workdir / "results" / "report.md").is_file()
    for model in MODELS:
        results = workdir / "results" / model
        for artifact in ("smoke.json", "baseline.json", "compare.json"):
            document = json.loads((results / artifact).read_text(encoding="utf-8"))
            assert document["status"] in ("ok", "passed"), (model, artifact, document.get("reason"))
        assert (results / "report.md").is_file() and (results / "env.json").is_file()


def digests(results: Path) -> dict[str, str]:
    """sha256 of every deterministic artifact under results/<model>/ (the manifest's absolute source
    path and Snakemake's directory markers aside)."""
    found = {}
    for name in DETERMINISTIC:
        path = results / name
        for file in sorted(path.rglob("*") if path.is_dir() else [path]):
            if not file.is_file() or file.name == ".snakemake_timestamp":
                continue
            if file.name == "manifest.json":
                data = json.dumps(json.loads(file.read_text(encoding="utf-8"))["files"]).encode()
            else:
                data = file.read_bytes()
            found[str(file.relative_to(results))] = hashlib.sha256(data).hexdigest()
    return found


def test_artifacts_equal_a_local_run(slurm_run, tmp_path):
    slurm_workdir, _, _ = slurm_run
    local = copy_workflow(tmp_path / "local")
    targets = [f"results/{model}/{name}" for model in MODELS for name in ("model", "repair.json")]
    run_snakemake(local, *targets, "--configfile", TEST_CONFIG)
    for model in MODELS:
        expected = digests(local / "results" / model)
        assert len(expected) > 10 and any(name.endswith(".safetensors") for name in expected)
        assert digests(slurm_workdir / "results" / model) == expected, model


def planned_resources(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Rule -> the `resources:` line of its first job in a dry run with the SLURM profile."""
    output = run_snakemake(workdir, "-n", "report", "--profile", "profiles/slurm", "--configfile", "npu.yaml", env=env)
    blocks = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", output.stdout, re.M)
    return dict(reversed(blocks))


@pytest.mark.parametrize(
    ("env", "everywhere", "on_engine_stages"),
    [
        (
            {"NPUPORT_SLURM_PARTITION": "all", "NPUPORT_SLURM_ACCOUNT": "proj-7", "NPUPORT_SLURM_GRES": "davinci:1"},
            {"slurm_partition=all", "slurm_account=proj-7"},  # `all` stays a string, not Python's all()
            {"gres=davinci:1"},
        ),
        ({}, set(), {"gres=npu:1"}),
        ({"NPUPORT_SLURM_GRES": "none"}, set(), set()),
    ],
    ids=["from-environment", "defaults", "no-gres"],
)
def test_profile_takes_partition_account_and_gres_from_the_environment(tmp_path, env, everywhere, on_engine_stages):
    """No cluster needed: the dry run shows what each job would be submitted with."""
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "npu.yaml").write_text("accelerator: {resource: npu}\n", encoding="utf-8")
    unset = (
        "SBATCH_PARTITION",
        "SBATCH_ACCOUNT",
        "NPUPORT_SLURM_PARTITION",
        "NPUPORT_SLURM_ACCOUNT",
        "NPUPORT_SLURM_GRES",
    )
    resources = planned_resources(workdir, dict.fromkeys(unset, "") | env)
    assert set(resources) == set(EXPECTED_LIMITS) | {"report"}
    for rule in EXPECTED_LIMITS:
        items = set(resources[rule].split(", "))
        chosen = {item for item in items if item.startswith(("slurm_partition=", "slurm_account=", "gres="))}
        assert chosen == everywhere | (on_engine_stages if rule in NPU_RULES else set()), rule
