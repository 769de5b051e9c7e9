"""A process's identity is read after its exec has finished, not in the window where Popen has
returned but /proc/PID/cmdline still reads empty (the kernel closes close-on-exec fds before it
sets the new argv). A digest taken there made `msmall stop` refuse msmall's own engine as "another
command", and the log view miss the API key in the engine's argv."""

from __future__ import annotations

import hashlib
import subprocess
import time

import psutil

from msmall.runtimes.process import foreign_reason, process_identity, settled_cmdline

ARGV = ["sleep", "30"]
LAUNCHES = 150


def _sha(argv: list[str]) -> str:
    return hashlib.sha256("\0".join(argv).encode()).hexdigest()


class _MidExec:
    """A psutil.Process as the kernel shows one: an empty command line for `empty_reads` reads
    (mid-exec), then the new program's; or a zombie's, empty for good."""

    def __init__(self, empty_reads: int, zombie: bool = False) -> None:
        self.empty_reads = empty_reads
        self.zombie = zombie
        self.reads = 0

    def cmdline(self) -> list[str]:
        self.reads += 1
        return [] if self.zombie or self.reads <= self.empty_reads else list(ARGV)

    def status(self) -> str:
        return psutil.STATUS_ZOMBIE if self.zombie else psutil.STATUS_RUNNING


def test_an_empty_read_mid_exec_is_waited_out() -> None:
    proc = _MidExec(empty_reads=3)
    assert settled_cmdline(proc) == ARGV
    assert proc.reads == 4


def test_a_zombie_is_not_waited_for() -> None:
    proc = _MidExec(empty_reads=0, zombie=True)
    assert settled_cmdline(proc, settle_s=60.0) == []
    assert proc.reads == 1


def test_a_line_that_stays_empty_ends_at_the_bound() -> None:
    proc = _MidExec(empty_reads=10**9)
    started = time.monotonic()
    assert settled_cmdline(proc, settle_s=0.05) == []
    assert 0.05 <= time.monotonic() - started < 10.0
    assert proc.reads > 1


def test_identity_straight_after_popen_is_the_new_programs() -> None:
    """The real path, on real processes. A raw read of /proc/PID/cmdline straight after Popen
    mostly lands in the window (145 of 150 in one run here), but psutil.Process's constructor
    reads /proc first, and by then the exec has nearly always finished: about 1 read in 300 is
    early, which is how three suite tests failed once under load. So this passes without the wait
    too, most runs; the stand-ins above are what pin the wait. The raw reads are printed for the
    record."""
    raw_empty = 0
    for _ in range(LAUNCHES):
        child = subprocess.Popen(ARGV, start_new_session=True)
        try:
            with open(f"/proc/{child.pid}/cmdline", "rb") as f:
                raw_empty += not f.read()
            created, sha = process_identity(child.pid)
            assert sha == _sha(ARGV)
            assert foreign_reason(child.pid, created, sha) is None
        finally:
            child.kill()
            child.wait(timeout=10)
    print(f"raw reads in the exec window: {raw_empty}/{LAUNCHES}")
