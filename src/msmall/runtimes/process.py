"""The host-process runtime: start, watch and stop a server process whose output goes to a log
file msmall can tail.

The child runs in its own process group (so a terminal Ctrl-C reaches msmall, not the engine, and
msmall decides how to stop it) and writes straight to the log file (so it keeps logging after a
`--detach`ed msmall has exited).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from msmall.errors import ConfigError, EngineUnavailable, EnvironmentProblem
from msmall.plan import LaunchPlan

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.progress import Reporter

# How long a server gets to exit after SIGTERM before SIGKILL. vLLM tears down its engine
# core process and frees GPU memory on SIGTERM; a few seconds is usually enough.
STOP_GRACE_S = 15.0

INSTALL_HINTS = {
    "vllm": "Install vLLM (`pip install vllm`), or use --backend docker to run the vllm/vllm-openai image.",
    "ollama": "Install Ollama from its website, or use --backend vllm / docker.",
}


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port, or holds it bound.

    vLLM (and the simulator) bind the port before loading and listen only when ready, both with
    SO_REUSEADDR; a probe bind with SO_REUSEADDR succeeds beside such a socket on Linux, so the
    probe binds without it. That bind also fails on a port with connections in TIME_WAIT from an
    earlier server; only then is the SO_REUSEADDR answer used.
    """
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        with socket.create_connection((connect_host, port), timeout=0.3):
            return True
    except OSError:
        pass
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for reuse in (False, True):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return False
            except OSError:
                if reuse or not _only_time_wait(port):
                    return True
    return True


def _only_time_wait(port: int) -> bool:
    """True when every TCP entry on this local port is a closing connection (TIME_WAIT etc.)."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                states.append(fields[3])
    # 0A = LISTEN; 06 TIME_WAIT, 08 CLOSE_WAIT... are leftovers that do not hold a bind.
    return bool(states) and "0A" not in states


def listening_pids(port: int) -> set[int] | None:
    """Pids of processes listening on this TCP port; None when that cannot be read."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    found = {
        c.pid
        for c in conns
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    if not found and any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns
    ):
        return None  # a listener whose pid we may not see (another user's)
    return found


def resolve_executable(argv: list[str]) -> list[str]:
    exe = argv[0]
    if os.path.isabs(exe):
        if not os.access(exe, os.X_OK):
            raise EngineUnavailable(f"{exe} is not an executable file")
        return argv
    found = shutil.which(exe)
    if found is None:
        raise EngineUnavailable(
            f"'{exe}' is not installed (not found on PATH)",
            INSTALL_HINTS.get(exe, "Install it, or pick another --backend."),
        )
    return [found, *argv[1:]]


@dataclass
class ServerProcess:
    """A running server started by msmall (or found again from a state record)."""

    pid: int
    log_path: Path
    create_time: float = 0.0
    cmdline_sha: str | None = None
    _popen: subprocess.Popen | None = field(default=None, repr=False)

    def poll(self) -> int | None:
        """Exit code if the process has ended, else None."""
        if self._popen is not None:
            return self._popen.poll()
        return None if pid_alive(self.pid, self.create_time) else -1

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_process_group(self.pid, self.create_time, grace_s, self._popen)


def fresh_log(log_path: Path, header: str) -> None:
    """One run per log file: the live view and the failure diagnosis read the whole file, and an
    earlier run's OOM must not explain this one. The previous run's log is kept beside it."""
    from msmall import paths

    paths.ensure_private_dir(log_path.parent)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    # 0600: engine output can hold tokens (a failed HF download echoes its URL and headers).
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(header.encode())


# Run in the child before the engine: ask the kernel to SIGTERM it when msmall dies (even by
# SIGKILL), then exec the engine. prctl from a preexec_fn is unsafe once msmall has threads (the
# live view has one); a tiny exec stage is not. The exec pipe closes on exec (CLOEXEC), so
# msmall reads the engine's own identity, not this stage's. Linux only; elsewhere, none.
_PDEATHSIG_STAGE = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(70)  # msmall died before prctl: nothing would stop this engine
fd = int(sys.argv[2])
os.set_inheritable(fd, False)
try:
    os.execv(sys.argv[3], sys.argv[3:])
except OSError as exc:
    os.write(fd, str(exc).encode())
    os._exit(127)
"""


def _with_parent_death_signal(argv: list[str]) -> tuple[list[str], tuple[int, int] | None]:
    import sys

    if not sys.platform.startswith("linux"):
        return argv, None
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    return [sys.executable, "-c", _PDEATHSIG_STAGE, str(os.getpid()), str(write_fd), *argv], (
        read_fd,
        write_fd,
    )


def _wait_exec(pipe: tuple[int, int] | None, timeout_s: float = 30.0) -> str:
    """Block until the exec stage has exec'd the engine (EOF) or failed (its message)."""
    import select

    if pipe is None:
        return ""
    read_fd, write_fd = pipe
    os.close(write_fd)
    chunks = []
    try:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                break
            data = os.read(read_fd, 4096)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(read_fd)
    return b"".join(chunks).decode("utf-8", "replace")


# Set in the engine's environment: finds an engine whose pid never reached the record (msmall
# SIGKILLed between starting it and writing the pid).
LAUNCH_ID_ENV = "MSMALL_LAUNCH_ID"


def process_env(plan: LaunchPlan) -> dict[str, str]:
    """The environment the engine process gets: msmall's own (the user's shell), the plan's on top.

    The preflight sizes the memory fit with it too (an OLLAMA_GPU_OVERHEAD exported in the shell
    reaches `ollama serve`, so the fit must count it)."""
    return {**os.environ, **plan.env}


def start_process(
    plan: LaunchPlan, log_path: Path, die_with_parent: bool = False, launch_id: str | None = None
) -> ServerProcess:
    argv = resolve_executable(plan.argv)
    pipe = None
    if die_with_parent:
        argv, pipe = _with_parent_death_signal(argv)
    env = {**process_env(plan), "PYTHONUNBUFFERED": "1"}
    if launch_id:
        env[LAUNCH_ID_ENV] = launch_id
    try:
        fresh_log(log_path, f"--- msmall: starting {plan.engine} for {plan.deployment}\n")
        log = open(log_path, "ab", buffering=0)  # noqa: SIM115 (closed below, after Popen)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot write the log {log_path}: {exc.strerror or exc}",
            "Free some disk space, or point MSMALL_STATE_DIR at a writable directory.",
        ) from None
    with log:
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=pipe[1:] if pipe else (),
            )
        except OSError as exc:
            if pipe:
                os.close(pipe[0])
                os.close(pipe[1])
            raise EngineUnavailable(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    failed = _wait_exec(pipe)
    if failed:
        raise EngineUnavailable(f"cannot start {plan.argv[0]}: {failed}")
    # Popen returns once the exec has closed its pipe; process_identity waits out the rest of
    # the exec (see settled_cmdline), so this is the engine's own identity.
    create_time, cmdline_sha = process_identity(popen.pid)
    return ServerProcess(
        pid=popen.pid,
        log_path=log_path,
        create_time=create_time,
        cmdline_sha=cmdline_sha,
        _popen=popen,
    )


def _cmdline_sha(cmdline: list[str]) -> str:
    """A digest, not the command line: the argv can hold an API key and records hold no secret."""
    import hashlib

    return hashlib.sha256("\0".join(cmdline).encode("utf-8", "replace")).hexdigest()


# How long a process may read as mid-exec (an empty command line) before it counts as one with
# no command line: far longer than an exec takes, even descheduled on a loaded machine.
EXEC_SETTLE_S = 2.0


def settled_cmdline(proc: Any, settle_s: float = EXEC_SETTLE_S) -> list[str]:
    """proc.cmdline() (a psutil.Process) once its exec has finished.

    The kernel closes the exec'ing process's close-on-exec fds, which is when Popen (and
    _wait_exec) return, before it sets the new program's argv: in between, /proc/PID/cmdline
    reads empty. Measured here, raw reads straight after Popen: 4-7 % in that window on an idle
    machine, 96-99 % beside a CPU hog; through psutil.Process, which reads /proc first, about 1
    in 300. A digest of that empty line made `stop` refuse msmall's own engine later, and the
    log view miss the secrets in its argv. A live user process reads empty only mid-exec; a
    zombie always does and is not waited for (a kernel thread, which msmall never records,
    waits out the bound).
    """
    import psutil

    deadline = time.monotonic() + settle_s
    while not (cmdline := proc.cmdline()):
        if proc.status() == psutil.STATUS_ZOMBIE or time.monotonic() >= deadline:
            break
        time.sleep(0.001)
    return cmdline


def process_identity(pid: int) -> tuple[float, str | None]:
    """(create time, command-line digest) of a live process; (0.0, None) if it cannot be read."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.create_time(), _cmdline_sha(settled_cmdline(proc))
    except psutil.Error:
        return 0.0, None


def _create_time(pid: int) -> float:
    return process_identity(pid)[0]


# Two readings of one process's create time agree to the clock tick (10 ms); a recycled pid
# started later. Half a second leaves room for a suspended laptop's clock adjustments.
CREATE_TIME_SLACK_S = 0.5


def pid_alive(pid: int, create_time: float = 0.0) -> bool:
    """Alive and the same process (a recycled pid has another create time)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not create_time or abs(proc.create_time() - create_time) < CREATE_TIME_SLACK_S
    except psutil.Error:
        return False


def foreign_reason(pid: int | None, create_time: float, cmdline_sha: str | None) -> str | None:
    """Why the process a record names must not be signalled, or None when it is msmall's engine.

    `stop` sends its signals to the whole process group (killpg), so a wrong pid is dangerous:
    pid 1 makes killpg(1) mean kill(-1), every process the user may signal. Only a live group
    leader whose create time and command line both match the record is trusted; a record without
    them (written by an msmall before 0.4) is not.
    """
    import psutil

    if pid is None or pid <= 1:
        return f"pid {pid} cannot be a server msmall started"
    if not create_time or not cmdline_sha:
        return "the record does not identify its process (written by an older msmall)"
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"pid {pid} has exited"
        if abs(proc.create_time() - create_time) >= CREATE_TIME_SLACK_S:
            return f"pid {pid} is now another process (started at another time)"
        if os.getpgid(pid) != pid:
            return f"pid {pid} is not the process group msmall started"
        if _cmdline_sha(settled_cmdline(proc)) != cmdline_sha:
            return f"pid {pid} runs another command than the one msmall started"
    except (psutil.Error, ProcessLookupError, PermissionError):
        return f"pid {pid} has exited"
    return None


def find_by_launch_id(launch_id: str, not_before: float) -> list[int]:
    """Group leaders carrying MSMALL_LAUNCH_ID=launch_id, started after the record was."""
    import psutil

    found = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if proc.pid <= 1 or (proc.info["create_time"] or 0) < not_before - 1:
                continue
            if proc.environ().get(LAUNCH_ID_ENV) == launch_id and os.getpgid(proc.pid) == proc.pid:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def stop_recorded(pid: int, create_time: float, cmdline_sha: str | None, grace_s: float) -> bool:
    """Stop a server found from a record, only when it is provably the one msmall started."""
    if foreign_reason(pid, create_time, cmdline_sha) is not None:
        return False
    stop_process_group(pid, create_time, grace_s)
    return True


def wait_exited(procs: list, timeout: float) -> list:
    """psutil.wait_procs, except that an exited process its parent has not reaped yet (a
    zombie) counts as gone: msmall is often not the parent (the engine of a foreground serve
    that `msmall stop` stops, a test's child), and psutil would wait the whole timeout for it.
    Returns the ones still running."""
    import psutil

    def running(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=min(0.05, max(0.0, deadline - time.monotonic())))
        alive = [p for p in alive if running(p)]
    return alive


def stop_process_group(
    pid: int, create_time: float, grace_s: float, popen: subprocess.Popen | None = None
) -> None:
    """SIGTERM the server's whole group, wait (bounded), then SIGKILL whatever is left."""
    import psutil

    if pid <= 1:
        return  # killpg(1) would be kill(-1); killpg(0) our own group
    if popen is None and not pid_alive(pid, create_time):
        return
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        members = []
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    if popen is not None:
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    alive = wait_exited(members, max(0.0, deadline - time.monotonic()))
    if alive or (popen is not None and popen.poll() is None):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        wait_exited(alive, 5.0)
        if popen is not None:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class LogTail:
    """Reads new complete lines from a log file as it grows."""

    def __init__(self, path: Path, start_at_end: bool = False) -> None:
        self.path = path
        self._pos = path.stat().st_size if start_at_end and path.exists() else 0
        self._partial = b""

    def read_new(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
                self._pos = fh.tell()
        except FileNotFoundError:
            return []
        if not data:
            return []
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]


def last_lines(path: Path, n: int = 20) -> list[str]:
    if n <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return []
    return [ln.decode("utf-8", "replace").rstrip("\r") for ln in data.splitlines()[-n:]]


def ensure_port_free(host: str, port: int) -> None:
    if port_in_use(host, port):
        raise EnvironmentProblem(
            f"port {port} on {host} is already in use",
            f"Stop what runs there (`msmall ps`), or pick another port with --port {port + 1}.",
        )


def check_port_value(port: int) -> None:
    if not (1 <= port <= 65535):
        raise ConfigError(f"--port {port} is not a TCP port (1-65535)")


def host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


# ---------------------------------------------------------------------------------------------
# The runner the serve pipeline uses


class ProcessHandle:
    """A server process msmall started for this serve."""

    poll_s = 0.2

    def __init__(self, proc: ServerProcess, label: str) -> None:
        self.proc = proc
        self.label = label
        self.log_path = proc.log_path
        self.stopped_message = "interrupted: the server was stopped"

    @property
    def ids(self) -> dict[str, Any]:
        if self.alive():
            # Read again: an engine may retitle itself while loading (setproctitle), and the
            # record must match what `stop` will see later. It is our child, so it is ours.
            _, sha = process_identity(self.proc.pid)
            self.proc.cmdline_sha = sha or self.proc.cmdline_sha
        return {
            "pid": self.proc.pid,
            "pid_create_time": self.proc.create_time,
            "pid_cmdline_sha": self.proc.cmdline_sha,
        }

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def settle_logs(self) -> None:
        """The child writes the log file itself: nothing to wait for."""

    def stop(self) -> None:
        self.proc.stop()

    def owns(self, record: Any) -> bool:
        return record.pid == self.proc.pid

    def answering_is_ours(self, port: int) -> str | None:
        """None when the server listening on `port` is this engine (or its children); else the
        foreign pid, so that a serve that lost a port race never reports the winner as ready."""
        import psutil

        pids = listening_pids(port)
        if not pids:
            return None  # cannot tell (no permission, or a container proxy): keep the old trust
        try:
            root = psutil.Process(self.proc.pid)
            ours = {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.Error:
            ours = {self.proc.pid}
        foreign = pids - ours
        return None if pids & ours or not foreign else str(min(foreign))


class ExternalHandle:
    """A server msmall found running and reuses (an Ollama daemon): never ours to stop."""

    poll_s = 0.5
    log_path = None

    def __init__(self, label: str) -> None:
        self.label = label
        self.stopped_message = "interrupted"

    ids: dict[str, Any] = {"pid": None, "external": True}  # noqa: RUF012 (read-only)

    def alive(self) -> bool:
        return True

    def exit_code(self) -> int | None:
        return None

    def settle_logs(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def owns(self, record: Any) -> bool:
        return record.external


class ProcessRunner:
    """Runs a plan's argv on this machine."""

    def start(
        self,
        plan: LaunchPlan,
        engine: Engine,
        log_path: Path,
        reporter: Reporter,
        die_with_parent: bool = False,
        launch_id: str | None = None,
        **_: Any,
    ) -> ProcessHandle | ExternalHandle:
        host, port = host_port(plan.base_url)
        if engine.reusable_server is not None and port_in_use(host, port):
            if not engine.reusable_server(plan.base_url):
                ensure_port_free(host, port)
            reporter.warn(
                f"reusing the {engine.label} daemon already running on {host}:{port}: "
                + (engine.reuse_note or "its own settings apply, not the profile's.")
            )
            return ExternalHandle(engine.label)
        ensure_port_free(host, port)
        reporter.stage(f"starting {engine.label}")
        return ProcessHandle(
            start_process(plan, log_path, die_with_parent, launch_id), engine.label
        )
