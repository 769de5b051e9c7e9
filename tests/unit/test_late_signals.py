"""A signal that reaches msmall after its work is done (the server stopped, the error printed)
keeps the exit code: without cli.app._exit_on_late_signals a KeyboardInterrupt raised while
Python shuts down escapes the program, and CPython then kills itself with SIGINT (-2)."""

from __future__ import annotations

import os
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


# The window after the atexit functions: CPython resets every Python-level signal handler to
# SIG_DFL (_PySignal_Fini) and then frees the modules. The "killer" child waits for EOF on a
# pipe whose write end this program holds in a module global, so the signal comes exactly while
# the modules are being freed.
SHUTDOWN = (
    "import os, signal, subprocess, sys\n"
    "from msmall.cli.app import _exit_on_late_signals\n"
    "r, w = os.pipe()\n"
    "ready_r, ready_w = os.pipe()\n"
    "killer = ('import os, signal, sys; os.write(int(sys.argv[2]), b\"k\"); os.read(int(sys.argv[1]), 1);'\n"
    "          ' os.kill(int(sys.argv[3]), signal.SIGINT)')\n"
    "subprocess.Popen([sys.executable, '-c', killer, str(r), str(ready_w), str(os.getpid())],\n"
    "                 pass_fds=(r, ready_w))\n"
    "os.close(r)\n"
    "os.close(ready_w)\n"
    "held = os.fdopen(w, 'wb')\n"
    "assert os.read(ready_r, 1) == b'k'  # the killer is blocked on the pipe now\n"
    "if sys.argv[1] == 'guarded':\n"
    "    _exit_on_late_signals(130)\n"
    "else:\n"
    "    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))\n"
    "sys.exit(130)\n"
)


def test_a_signal_while_python_frees_its_modules_keeps_the_exit_code() -> None:
    done = subprocess.run([sys.executable, "-c", SHUTDOWN, "guarded"], timeout=30)
    assert done.returncode == 130


def test_a_python_handler_alone_does_not_cover_the_modules_being_freed() -> None:
    # The control: the signal does land in that window (with only a Python-level handler the
    # process dies of it), so the test above cannot pass by the signal coming too late.
    done = subprocess.run([sys.executable, "-c", SHUTDOWN, "bare"], timeout=30)
    assert done.returncode == -signal.SIGINT


# `python -m` only: CPython notes a plain KeyboardInterrupt that leaves an exec/eval of a string
# (even one caught later) and, after the SystemExit, kills itself with SIGINT. The signal lands
# inside exec'd code here, as it did inside a lazy import's dataclass under load.
IN_EXEC = (
    "import os, signal, sys\n"
    "from msmall.errors import interrupt\n"
    "def plain(signum, frame):\n"
    "    raise KeyboardInterrupt\n"
    "signal.signal(signal.SIGINT, interrupt if sys.argv[1] == 'msmall' else plain)\n"
    "try:\n"
    "    exec('os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(1000): pass')\n"
    "except KeyboardInterrupt:\n"
    "    pass\n"
    "sys.exit(130)\n"
)


@pytest.mark.parametrize(("handler", "code"), [("msmall", 130), ("plain", -signal.SIGINT)])
def test_an_interrupt_inside_exec_keeps_the_exit_code_under_python_m(
    tmp_path, handler: str, code: int
) -> None:
    (tmp_path / "interrupted_in_exec.py").write_text(IN_EXEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "interrupted_in_exec", handler], env=env, timeout=30
    )
    # "plain" is the control: what `python -m msmall` did with a bare KeyboardInterrupt.
    assert done.returncode == code
