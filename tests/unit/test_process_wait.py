"""`wait_exited`: a process that has exited counts as gone even while its parent has not reaped
it (msmall is often not the parent: `msmall stop` of a foreground serve, of a test's child)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from msmall.runtimes.process import wait_exited


def test_an_unreaped_exited_child_is_gone_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = psutil.Process(child.pid)
    # Blocks until it has exited but leaves it unreaped (WNOWAIT): a zombie, which
    # psutil.wait_procs would wait out to its timeout.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert proc.status() == psutil.STATUS_ZOMBIE
    started = time.monotonic()
    assert wait_exited([proc], timeout=5.0) == []
    assert time.monotonic() - started < 2.0
    child.wait(timeout=5)


def test_a_running_process_is_returned_after_the_timeout() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        started = time.monotonic()
        assert wait_exited([proc], timeout=0.3) == [proc]
        assert 0.3 <= time.monotonic() - started < 5.0
    finally:
        child.kill()
        child.wait(timeout=5)
