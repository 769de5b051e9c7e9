"""Run the simulator (or a fake engine) as a real subprocess, for tests, demos and benchmarks.

``EngineProcess`` captures the output line by line on a thread, so callers wait for a log line
with a deadline instead of sleeping, and always stops the process (SIGTERM, then SIGKILL).

    with EngineProcess(simulator_argv("--port", "8123")) as engine:
        engine.wait_for_line("Application startup complete.", timeout=10)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence


def simulator_argv(*args: str) -> list[str]:
    """argv that runs ``python -m msmall.simulator ARGS`` with this interpreter."""
    return [sys.executable, "-m", "msmall.simulator", *args]


class EngineProcess:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.new_session = new_session
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    # Lifecycle -----------------------------------------------------------------------------

    def start(self) -> EngineProcess:
        """Start the process; a second call on a running one starts nothing (no leaked twin)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read, name="engine-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process (if it still runs) and return its exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return proc.returncode

    def wait_for_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"still running after {timeout} s\n{self.tail()}") from exc
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def __enter__(self) -> EngineProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Output --------------------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])

    def wait_for_line(self, needle: str, timeout: float) -> str:
        """The first output line containing ``needle``; raises if the process exits first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self._lines)
                exited = self.proc is not None and self.proc.poll() is not None
                reader_done = self._reader is not None and not self._reader.is_alive()
                if exited and reader_done:
                    raise RuntimeError(
                        f"exited with {self.proc.returncode} before printing {needle!r}\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no line with {needle!r} within {timeout} s\n{self.tail()}")
                self._changed.wait(min(remaining, 0.1))


_PORT_LINES = {"vllm": "Starting vLLM server on http://", "ollama": "Listening on "}


def start_simulator(
    *args: str,
    flavor: str = "vllm",
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    new_session: bool = False,
) -> tuple[EngineProcess, int]:
    """``python -m msmall.simulator --port 0 ARGS`` as a subprocess, ready; returns it and the
    port the OS picked (read back from the engine's own startup line, so no free-port race).

    ``new_session``: the process gets a session of its own (on Linux with scheduler autogroups,
    its own CPU-scheduling group, see benchmarks/bench_vs_peers.py).

    The caller stops the process (``with engine:`` or ``engine.stop()``)."""
    engine = EngineProcess(
        simulator_argv("--flavor", flavor, "--port", "0", *args),
        {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        new_session=new_session,
    )
    engine.start()
    try:
        line = engine.wait_for_line(_PORT_LINES[flavor], timeout)
        address = line.split(_PORT_LINES[flavor], 1)[1].split()[0]
        port = int(address.rsplit(":", 1)[1].rstrip("/"))
        if flavor == "vllm":
            engine.wait_for_line("Application startup complete.", timeout)
    except BaseException:
        engine.stop()
        raise
    return engine, port
