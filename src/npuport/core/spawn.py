"""Child processes that start with the default dispositions of the stop signals, whatever this process inherited.

A process started in the background by a non-interactive shell (``cmd &``, nohup, many CI runners and batch systems)
inherits SIGINT as *ignored*; an ignored signal stays ignored across fork and exec, so every process it starts
ignores SIGINT too, and Python then installs no KeyboardInterrupt handler. A server stopped with SIGINT would not
stop. ``default_signals(argv)`` puts a small launcher in front of ``argv``: a Python (``-I -S``: no site, no
environment variables read for itself) that sets SIGINT, SIGTERM, SIGPIPE and SIGXFSZ to their default dispositions,
unblocks them, and execs ``argv``. exec keeps the pid, so the process group, the pid the caller records and the
environment are those of ``argv`` itself.

Why a launcher and not ``Popen(preexec_fn=...)``: preexec_fn runs Python code between fork and exec, which Python's
documentation calls unsafe in a process with threads (the stage process that starts the server has them), and
Popen's own ``restore_signals`` resets SIGPIPE and SIGXFSZ only. SIGHUP is left as inherited: a nohup'ed run asked
for it to be ignored.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Sequence

# The signals a stop sequence sends (SIGINT, SIGTERM), and those Python's own start-up sets to ignored (SIGPIPE,
# SIGXFSZ: Popen's restore_signals resets them for a direct child; the launcher is a Python, so it does it again).
RESET = ("SIGINT", "SIGTERM", "SIGPIPE", "SIGXFSZ")
LAUNCHER = (
    "import os, signal, sys\n"
    "signals = [getattr(signal, name) for name in sys.argv[1].split(',') if hasattr(signal, name)]\n"
    "for number in signals:\n"
    "    signal.signal(number, signal.SIG_DFL)\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)\n"
    "os.execv(sys.argv[2], sys.argv[3:])\n"
)


def default_signals(argv: Sequence[str]) -> list[str]:
    """``argv`` behind the launcher: the program starts with SIGINT, SIGTERM, SIGPIPE and SIGXFSZ at their default
    dispositions and unblocked, whatever this process's are. ``argv[0]`` is resolved on PATH here, so that a missing
    program raises FileNotFoundError in the caller as Popen would."""
    if not argv:
        raise ValueError("default_signals: empty argv")
    program = shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, ",".join(RESET), program, *argv]


def ignored_signals(pid: int) -> set[str] | None:
    """Names of the signals process ``pid`` ignores (the ``SigIgn`` mask of /proc/<pid>/status); None where /proc does
    not tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            line = next((line for line in status if line.startswith("SigIgn:")), None)
    except OSError:
        return None
    if line is None:
        return None
    mask = int(line.split()[1], 16)
    names = set()
    for number in signal.valid_signals():
        if 0 < number <= 64 and mask >> (number - 1) & 1:
            try:
                names.add(signal.Signals(number).name)
            except ValueError:  # a real-time signal without a name
                names.add(f"SIG{number}")
    return names
