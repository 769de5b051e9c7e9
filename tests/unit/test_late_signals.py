"""A signal that reaches msmall after its work is done (the server stopped, the error printed)
keeps the exit code: without cli.app._exit_on_late_signals a KeyboardInterrupt raised while
Python shuts down escapes the program, and CPython then kills itself with SIGINT (-2)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

LATE = (
    "import os, signal, sys, time\n"
    "from msmall.cli.app import _exit_on_late_signals\n"
    "guard = sys.argv[1] == 'guarded'\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "if guard:\n"
    "    _exit_on_late_signals(130)\n"
    "os.kill(os.getpid(), int(sys.argv[2]))\n"
    "time.sleep(10)\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_late_signal_keeps_the_exit_code(sig: int) -> None:
    done = subprocess.run([sys.executable, "-c", LATE, "guarded", str(int(sig))], timeout=30)
    assert done.returncode == 130


def test_without_the_guard_python_dies_of_the_signal() -> None:
    # The control: what the interrupt tests saw twice (exit -2 instead of 130).
    done = subprocess.run(
        [sys.executable, "-c", LATE, "bare", str(int(signal.SIGINT))],
        timeout=30,
        capture_output=True,
    )
    assert done.returncode == -signal.SIGINT
