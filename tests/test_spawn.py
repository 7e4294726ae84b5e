"""npuport.core.spawn: a child started through ``default_signals`` gets the default dispositions of the stop signals
whatever its parent ignores or blocks; a plain child inherits them (the reason the launcher exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from npuport.core.spawn import default_signals, ignored_signals

# A parent as a background job leaves it (SIGINT ignored), with SIGTERM ignored and SIGINT blocked on top; it starts
# the child both ways and reports what each child's /proc/self/status says.
PARENT = textwrap.dedent("""
    import json, signal, subprocess, sys
    from npuport.core.spawn import default_signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    child = ["grep", "-E", "^(SigIgn|SigBlk):", "/proc/self/status"]

    def masks(argv):
        lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\\n")
        return {line.split(":")[0]: int(line.split()[1], 16) for line in lines if line}

    print(json.dumps({"plain": masks(child), "launched": masks(default_signals(child))}))
""")


def _bit(signum: signal.Signals) -> int:
    return 1 << (signum - 1)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_launched_child_has_default_stop_signals_whatever_the_parent_ignores():
    out = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert found["plain"]["SigIgn"] & _bit(sig), f"a plain child should inherit {sig.name} ignored"
        assert not found["launched"]["SigIgn"] & _bit(sig), sig.name
    assert found["plain"]["SigBlk"] & _bit(signal.SIGINT)
    assert not found["launched"]["SigBlk"] & _bit(signal.SIGINT)
    # and Python's own start-up ignores (the launcher is a Python) do not leak into the program either
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not found["launched"]["SigIgn"] & _bit(sig), sig.name


def test_launched_program_keeps_its_pid_arguments_and_environment(tmp_path):
    """exec, not a child of the launcher: the pid the caller holds (the process group leader) is the program's."""
    script = "import json, os, sys; print(json.dumps([os.getpid(), sys.argv[1:], os.environ.get('NPUPORT_X')]))"
    proc = subprocess.Popen(default_signals([sys.executable, "-c", script, "a b", ""]), stdout=subprocess.PIPE,
                            env=os.environ | {"NPUPORT_X": "kept"}, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert json.loads(out) == [proc.pid, ["a b", ""], "kept"]


def test_a_missing_program_fails_in_the_caller():
    with pytest.raises(FileNotFoundError, match="no-such-program-npuport"):
        default_signals(["no-such-program-npuport", "--flag"])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_ignored_signals_reads_a_process_dispositions():
    # both dispositions set by the child itself: what it inherited (SIGINT ignored under a background job) is not
    # what this test is about
    child = ("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "signal.signal(signal.SIGINT, signal.SIG_DFL); print(flush=True); sys.stdin.read()")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # the child has set its dispositions
        ignored = ignored_signals(proc.pid)
    finally:
        proc.communicate(timeout=300)
    assert "SIGTERM" in ignored and "SIGINT" not in ignored
    assert ignored_signals(2**22 + 7) is None  # no such process (above the kernel's largest pid)
