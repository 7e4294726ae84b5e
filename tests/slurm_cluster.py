"""A real single-node SLURM cluster (Debian's slurmctld, slurmd, munge) started in a temp dir.

Everything the daemons read or write lives in that dir: slurm.conf, gres.conf, cgroup.conf, the
munge key and socket, state, spool, logs. Ports are picked free at start, so the cluster does not
meet a system SLURM or a second test run. The node has a count-only GRES ``npu`` (no device
files), so a job asking for ``--gres=npu:1`` is scheduled and accounted like on an Ascend node.
Client commands find the cluster through ``SLURM_CONF`` (``cluster.env``). No accounting storage:
completed jobs stay visible to ``scontrol``/``squeue`` for ``MinJobAge`` seconds.

``start_cluster`` is a context manager; on exit (also after a failure) it cancels the cluster's
jobs and stops every process it started, by pid: munged, slurmctld, slurmd, and any slurmstepd
that slurmd left behind.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from npuport.engines.serve_check import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "npuport"
DEFAULT_PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """This host cannot start the cluster (binaries missing, not root); the test skips with the reason."""


@dataclass
class SlurmCluster:
    root: Path
    node: str
    partition: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        result = subprocess.run(
            args, env=os.environ | self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of one job as key -> value (visible for MinJobAge after it ends)."""
        return parse_scontrol(self.command("scontrol", "show", "job", "--oneliner", str(job_id)))

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job the controller still knows, by job id."""
        text = self.command("scontrol", "show", "job", "--oneliner")
        records = [parse_scontrol(line) for line in text.splitlines() if line.startswith("JobId=")]
        return {record["JobId"]: record for record in records}

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def parse_scontrol(line: str) -> dict[str, str]:
    """One record of ``scontrol --oneliner`` (``Key=Value Key=Value ...``) -> dict; a value with spaces
    in it runs up to the next ``Key=``."""
    record: dict[str, str] = {}
    key = None
    for token in line.split():
        name, sep, value = token.partition("=")
        if sep and name and name[0].isupper():
            key = name
            record[key] = value
        elif key is not None:
            record[key] += " " + token
    return record


def check_host() -> None:
    """Raise SlurmUnavailable with the reason when this host cannot start the cluster."""
    missing = [tool for tool in (*DAEMONS, *CLIENTS, "unshare") if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(
            f"SLURM/munge not installed (missing {', '.join(missing)}): run .ci/install-slurm.sh as root"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to launch jobs")
    if not Path("/etc/slurm").is_dir():
        raise SlurmUnavailable("/etc/slurm is missing (the test mounts its config there, in slurmd's namespace only)")


def write_config(root: Path, node: str, cpus: int, memory_mb: int, npus: int, min_job_age: int) -> Path:
    etc = root / "etc"
    etc.mkdir()
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = f"""\
ClusterName=npuport-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port("127.0.0.1")}
SlurmdPort={free_port("127.0.0.1")}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "run" / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track job processes by parent pid, no task binding, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Completed jobs stay in the controller (scontrol, squeue) this long: the test reads them after the run.
MinJobAge={min_job_age}
GresTypes=npu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=npu:{npus} State=UNKNOWN
# Two partitions on the one node: jobs land in the non-default one only when asked to (-p).
PartitionName={DEFAULT_PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITION} Nodes={node} Default=NO MaxTime=INFINITE State=UP
"""
    (etc / "slurm.conf").write_text(conf, encoding="utf-8")
    # Count-only GRES: no device files behind it.
    (etc / "gres.conf").write_text(f"NodeName={node} Name=npu Count={npus}\n", encoding="utf-8")
    # Unused with proctrack/linuxproc and task/none; here so that nothing reads the host's.
    (etc / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n", encoding="utf-8")
    return etc / "slurm.conf"


def wait_for(what: str, probe, timeout: float, cluster: SlurmCluster | None = None, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items() if cluster else ():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({process.returncode}) while waiting for {what}\n{cluster.log_tails()}"
                )
        with suppress(Exception):
            if probe():
                return
        time.sleep(interval)
    tails = cluster.log_tails() if cluster else ""
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def spawn(cluster: SlurmCluster, name: str, *args: str) -> None:
    with open(cluster.root / "log" / f"{name}.stdout.log", "wb") as log:  # the child keeps its own copy
        cluster.processes[name] = subprocess.Popen(
            args,
            env=os.environ | cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest reaches the daemons only through stop()
        )


def start_munge(cluster: SlurmCluster) -> None:
    run = cluster.root / "run"
    key = cluster.root / "etc" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    spawn(
        cluster,
        "munged",
        "munged",
        "--foreground",
        "--force",  # running as root
        f"--socket={run / 'munge.socket'}",
        f"--key-file={key}",
        f"--pid-file={run / 'munged.pid'}",
        f"--seed-file={run / 'munged.seed'}",
        f"--log-file={cluster.root / 'log' / 'munged.log'}",
    )
    wait_for("the munge socket", (run / "munge.socket").exists, 20, cluster)


def node_state(cluster: SlurmCluster) -> str:
    return parse_scontrol(cluster.command("scontrol", "show", "node", "--oneliner", cluster.node))["State"]


def start_slurm(cluster: SlurmCluster) -> None:
    conf = str(cluster.conf)
    spawn(cluster, "slurmctld", "slurmctld", "-D", "-i", "-f", conf)
    wait_for("slurmctld", lambda: "is UP" in cluster.command("scontrol", "ping"), 30, cluster)
    # The plugin's job step strips SLURM_* (SLURM_CONF too) from the environment of the `srun` it runs
    # inside each job, so that srun reads the default path. slurmd, and so every job, runs in a
    # private mount namespace where /etc/slurm is this cluster's etc/: the host's stays untouched.
    spawn(
        cluster,
        "slurmd",
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/slurm && exec "$@"',
        str(cluster.conf.parent),
        *("slurmd", "-D", "-f", conf, "-N", cluster.node),
    )
    wait_for(f"node {cluster.node} to be idle", lambda: node_state(cluster) == "IDLE", 60, cluster)


def stepd_pids(cluster: SlurmCluster) -> list[int]:
    """slurmstepd processes of this cluster (they outlive slurmd by design): each listens on a unix
    socket in the cluster's spool dir."""
    spool = f"{cluster.root / 'spool'}/"
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "slurmstepd":
            continue
        with suppress(psutil.Error):
            if any(str(c.laddr).startswith(spool) for c in process.net_connections(kind="unix")):
                found.append(process.pid)
    return found


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie counts: its parent, not this test, reaps it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def terminate(pid: int, timeout: float = 15) -> None:
    """SIGTERM one process, SIGKILL it if it is still there after ``timeout``."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    for grace, then in ((timeout, signal.SIGKILL), (5, None)):
        deadline = time.monotonic() + grace
        while not gone(process) and time.monotonic() < deadline:
            time.sleep(0.1)
        if gone(process) or then is None:
            return
        with suppress(psutil.NoSuchProcess):
            process.send_signal(then)


def stop(cluster: SlurmCluster) -> None:
    """Cancel the cluster's jobs, then stop every process it started, by pid (never by name).

    Raises RuntimeError when one of them is still alive afterwards."""
    if "slurmctld" in cluster.processes and cluster.processes["slurmctld"].poll() is None:
        with suppress(Exception):
            cluster.command("scancel", f"--user={getpass.getuser()}", check=False)
            wait_for(
                "cancelled jobs to end", lambda: not cluster.command("squeue", "--noheader", "--states=PD,R,CG,S"), 30
            )
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.processes.get(name)
        if process is not None and process.poll() is None:
            terminate(process.pid)
            with suppress(subprocess.TimeoutExpired):
                process.wait(5)
    # Left only when the controller could not cancel their jobs: the job's processes go first.
    for pid in stepd_pids(cluster):
        with suppress(psutil.NoSuchProcess):
            for child in reversed(psutil.Process(pid).children(recursive=True)):
                terminate(child.pid, timeout=5)
        terminate(pid, timeout=5)
    alive = [f"{name} ({p.pid})" for name, p in cluster.processes.items() if p.poll() is None]
    alive += [f"slurmstepd ({pid})" for pid in stepd_pids(cluster)]  # a zombie has no socket: not listed
    if alive:
        raise RuntimeError(f"still running after stop: {', '.join(alive)}")


@contextmanager
def start_cluster(
    cpus: int = 2, memory_mb: int = 20000, npus: int = 2, min_job_age: int = 900, keep_dir: Path | None = None
) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on this host; yield the cluster once its node is idle.

    The daemons run from a short temp dir (the munge socket path must stay under 108 bytes); with
    ``keep_dir`` their logs are copied there when the cluster stops, for a failing test to show.
    """
    check_host()
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    node = "npu-node-1"
    cluster = SlurmCluster(
        root=root, node=node, partition=PARTITION, env={"SLURM_CONF": str(root / "etc" / "slurm.conf")}
    )
    try:
        write_config(root, node, cpus, memory_mb, npus, min_job_age)
        start_munge(cluster)
        start_slurm(cluster)
        yield cluster
    finally:
        try:
            stop(cluster)
        finally:
            if keep_dir is not None:
                shutil.copytree(root / "log", keep_dir, dirs_exist_ok=True)
            shutil.rmtree(root, ignore_errors=True)
