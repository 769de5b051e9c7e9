"""A fake Docker Engine API that the real docker SDK (docker-py 7.x) talks to.

Containers are real local processes: a `vllm/vllm-openai` container runs
`python -m msmall.simulator --flavor vllm` on 127.0.0.1 at the host port the
create request publishes, so a client reaches it exactly where a real
container would be. Other images run their Entrypoint + Cmd on the host as is.

In a test:

    with running_fake_docker(tmp_path, scenario="no-nvidia") as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        ...
        fake.containers      # every create request as the client sent it

As a program (for manual runs):

    python tests/fakes/docker_engine.py --socket /tmp/fd/docker.sock [--scenario oom]
    DOCKER_HOST=unix:///tmp/fd/docker.sock docker ps

Wire formats follow moby and docker-py 7.2: NDJSON pull progress with errors
AFTER HTTP 200 (docker-py's `pull(stream=True)` does not raise), the 8-byte
multiplexed log frame header `>BxxxL` (docker/utils/socket.py), 404 bodies
`{"message": "No such container: X"}` (docker/errors.py maps "No such image"
to ImageNotFound, which `containers.run` answers by pulling).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

ENGINE_VERSION = "27.5.1"
DEFAULT_API_VERSION = "1.47"  # what Docker 27.5 speaks; docker-py negotiates down to it
MIN_API_VERSION = "1.24"
VLLM_IMAGE = "vllm/vllm-openai"
OLLAMA_IMAGE = "ollama/ollama"
# vLLM with no model at all silently serves this one (FACTS.md, vLLM section).
VLLM_DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
ZERO_TIME = "0001-01-01T00:00:00Z"
# What the real daemon answers when no NVIDIA runtime/driver is registered
# (samples/docker/*could-not-select-device-driver*.txt).
DEVICE_DRIVER_ERROR = 'could not select device driver "{driver}" with capabilities: {caps}'
# docker-py's `containers.run` only inspects HostConfig.LogConfig.Type; moby fills it in.
DEFAULT_LOG_CONFIG = {"Type": "json-file", "Config": {}}
SCENARIOS = ("default", "no-nvidia", "no-cdi", "pull-error", "oom")
# vLLM 0.33 flags that take no value; every other flag is read as taking one.
VLLM_BOOL_FLAGS = frozenset(
    {
        "enable_auto_tool_choice",
        "trust_remote_code",
        "enforce_eager",
        "language_model_only",
        "disable_log_requests",
        "enable_log_requests",
        "disable_log_stats",
        "enable_prefix_caching",
        "no_enable_prefix_caching",
        "enable_chunked_prefill",
        "disable_custom_all_reduce",
        "headless",
        "allow_credentials",
        "enable_prompt_tokens_details",
        "enable_server_load_tracking",
        "disable_fastapi_docs",
    }
)
# The real vLLM 0.10+ argparse error for the pre-0.10 `image=N` spelling
# (samples/vllm/limit-mm-per-prompt-argparse-error.log), exit status 2.
VLLM_LIMIT_MM_USAGE_ERROR = (
    "usage: vllm serve [model_tag] [options]\n"
    "vllm serve: error: argument --limit-mm-per-prompt: Value {value} cannot be converted"
    " to <function loads at 0x7f4b777cfc70>.\n"
)


# --------------------------------------------------------------------------- settings


@dataclass
class EngineSettings:
    """Knobs a test may change at any time; each request reads them afresh."""

    nvidia: bool = True  # NVIDIA runtime + legacy device driver registered
    cdi_spec_dirs: list[str] = field(default_factory=lambda: ["/etc/cdi", "/var/run/cdi"])
    cdi_nvidia: bool = True  # an nvidia.com/gpu CDI spec exists in those dirs
    pull_error: str | None = None  # error line sent mid-stream, after HTTP 200
    # Pulls the registry refuses up front (HTTP 404): "repo" = no such repository,
    # "repo:tag" = no such tag.
    missing_images: list[str] = field(default_factory=list)
    simulator_fail: str | None = None  # passed to the simulator as --fail MODE
    simulator_args: list[str] = field(default_factory=list)  # e.g. ["--startup-delay", "1"]
    simulator_cmd: list[str] = field(
        default_factory=lambda: [sys.executable, "-m", "msmall.simulator"]
    )
    # Log frames are cut every N bytes of the stream, not at line ends, so a
    # client has to reassemble lines (a real daemon gives no line guarantee either).
    log_frame_size: int = 29
    api_version: str = DEFAULT_API_VERSION
    kill_wait_s: float = 10.0  # bound on waiting for a process after SIGKILL
    shutdown_grace_s: float = 3.0  # SIGTERM grace per container when the server stops


def apply_scenario(settings: EngineSettings, scenario: str | Iterable[str] | None) -> None:
    names = [scenario] if isinstance(scenario, str) else list(scenario or [])
    for name in names:
        if name == "default":
            continue
        if name == "no-nvidia":
            settings.nvidia = False
            settings.cdi_nvidia = False
        elif name == "no-cdi":
            settings.cdi_spec_dirs = []
            settings.cdi_nvidia = False
        elif name == "pull-error":
            settings.pull_error = settings.pull_error or "unexpected EOF"
        elif name == "oom":
            settings.simulator_fail = "oom-on-load"
        else:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


# --------------------------------------------------------------------------- helpers


def _rfc3339(ns: int) -> str:
    # Docker prints nanoseconds with a fixed width (jsonmessage.RFC3339NanoFixed).
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _go_json(obj: Any) -> str:
    # Go's encoder escapes <, > and & (the real pull stream shows `\u003e` in bars).
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def normalize_image(ref: str) -> str:
    """`docker.io/library/x` -> `x:latest`: the familiar name the daemon prints."""
    name = ref
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if "@" in name:
        return name
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _image_id(ref: str) -> str:
    return "sha256:" + hashlib.sha256(f"image:{ref}".encode()).hexdigest()


def _image_repo(ref: str) -> str:
    return normalize_image(ref).split("@")[0].rsplit(":", 1)[0]


def _is_vllm_image(ref: str) -> bool:
    return _image_repo(ref) == VLLM_IMAGE


def _human_size(size: float) -> str:
    # go-units HumanSize: decimal units, four significant digits ("30.15 MB").
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g} {units[i]}"


def _progress_bar(current: int, total: int) -> str:
    filled = min(50, int(50 * current / total))
    bar = "=" * filled + (">" + " " * (50 - filled) if filled < 50 else "")
    return f"[{bar}] {_human_size(current)}/{_human_size(total)}"


def _go_caps(caps: list[list[str]]) -> str:
    return "[" + " ".join("[" + " ".join(c) + "]" for c in caps) + "]"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_max_model_len(value: str) -> str | None:
    # vLLM reads 32k as 32000 and 32K as 32768; auto/-1 means "largest that fits".
    text = value.strip()
    if text.lower() in ("auto", "-1"):
        return None
    match = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not match:
        return None
    number, unit = int(match[1]), match[2]
    scale = {"": 1, "k": 1000, "K": 1024, "m": 1_000_000, "M": 1024 * 1024}[unit]
    return str(number * scale)


def parse_vllm_cmd(cmd: list[str]) -> tuple[str | None, dict[str, Any]]:
    """vLLM CLI tokens -> (model positional, {flag_with_underscores: value or True})."""
    positional: str | None = None
    flags: dict[str, Any] = {}
    i = 0
    while i < len(cmd):
        token = cmd[i]
        i += 1
        if not token.startswith("--"):
            if positional is None:
                positional = token
            continue
        key, eq, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            flags[key] = inline
        elif key == "served_model_name":
            # nargs="+" in vLLM: every following token up to the next flag.
            names = []
            while i < len(cmd) and not cmd[i].startswith("--"):
                names.append(cmd[i])
                i += 1
            flags[key] = names
        elif key in VLLM_BOOL_FLAGS or i >= len(cmd) or cmd[i].startswith("--"):
            flags[key] = True
        else:
            flags[key] = cmd[i]
            i += 1
    if isinstance(flags.get("served_model_name"), str):
        flags["served_model_name"] = [flags["served_model_name"]]
    return positional, flags


# --------------------------------------------------------------------------- state


@dataclass
class LogEntry:
    stream: int  # 1 stdout, 2 stderr (the multiplexed frame's first byte)
    ts_ns: int
    data: bytes


class _Framer:
    """Cuts one response's log bytes into frames at fixed offsets of the whole stream."""

    def __init__(self, frame_size: int, tty: bool) -> None:
        self.frame_size = max(1, frame_size)
        self.tty = tty
        self.offset = 0

    def frames(self, stream: int, data: bytes) -> Iterator[bytes]:
        if self.tty:
            # A tty container's log is a raw stream with no headers.
            yield data
            return
        view = memoryview(data)
        while view:
            room = self.frame_size - self.offset % self.frame_size
            piece = bytes(view[:room])
            view = view[room:]
            self.offset += len(piece)
            yield struct.pack(">BxxxL", stream, len(piece)) + piece


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str  # as the client wrote it
    image_id: str
    body: dict[str, Any]
    created_ns: int
    status: str = "created"  # created | running | exited
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_ns: int = 0
    finished_ns: int = 0
    exit_count: int = 0
    removed: bool = False
    host_ports: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    reaped: bool = True
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def host_config(self) -> dict[str, Any]:
        return self.body.get("HostConfig") or {}

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def tty(self) -> bool:
        return bool(self.body.get("Tty"))

    def notify(self) -> None:
        # Waiters hold the old event; swap in a fresh one, then wake them.
        old, self.changed = self.changed, asyncio.Event()
        old.set()


# --------------------------------------------------------------------------- engine


class FakeEngine:
    """Daemon state. Runs entirely on the server's event loop."""

    def __init__(self, workdir: Path, settings: EngineSettings) -> None:
        self.workdir = Path(workdir)
        self.settings = settings
        self.images: dict[str, str] = {}  # familiar ref -> image id
        self.containers: dict[str, FakeContainer] = {}
        self.specs: list[dict[str, Any]] = []  # every create request, in order
        self.started_pids: dict[int, FakeContainer] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = False
        self.daemon_id = secrets.token_hex(16)
        self._tasks: set[asyncio.Task] = set()

    # ----- lookups

    def find(self, ref: str) -> FakeContainer | None:
        ref = ref.lstrip("/")
        if ref in self.containers:
            return self.containers[ref]
        for c in self.containers.values():
            if c.name == ref:
                return c
        matches = [c for c in self.containers.values() if c.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def find_image(self, ref: str) -> tuple[str, str] | None:
        familiar = normalize_image(ref)
        if familiar in self.images:
            return familiar, self.images[familiar]
        bare = ref.removeprefix("sha256:")
        if len(bare) >= 4 and re.fullmatch(r"[0-9a-f]+", bare):
            for name, image_id in self.images.items():
                if image_id.removeprefix("sha256:").startswith(bare):
                    return name, image_id
        return None

    def add_image(self, ref: str) -> str:
        familiar = normalize_image(ref)
        self.images.setdefault(familiar, _image_id(familiar))
        return familiar

    # ----- logs

    def _append_log(self, c: FakeContainer, stream: int, data: bytes) -> None:
        c.log.append(LogEntry(stream, time.time_ns(), data))

    async def _pump(self, c: FakeContainer, reader: asyncio.StreamReader, stream: int) -> None:
        # Stored per line with its own timestamp, as the json-file driver does;
        # the framing on the way out is what splits lines.
        pending = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    self._append_log(c, stream, line + b"\n")
                c.notify()
        finally:
            if pending:
                self._append_log(c, stream, pending)
                c.notify()

    # ----- process lifecycle

    def _process_env(self, c: FakeContainer) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
        # The interpreter that runs the simulator must still find msmall.
        for key in ("PYTHONPATH", "VIRTUAL_ENV"):
            if key in os.environ:
                env[key] = os.environ[key]
        env["HOME"] = str(self.workdir / c.id[:12] / "root")
        env["HOSTNAME"] = c.id[:12]
        # Without it Python block-buffers a pipe and the log arrives only at exit.
        env["PYTHONUNBUFFERED"] = "1"
        for item in c.body.get("Env") or []:
            key, eq, value = item.partition("=")
            if eq:
                env[key] = value
        return env

    def _resolve_ports(self, c: FakeContainer) -> dict[str, list[dict[str, str]]]:
        """PortBindings with every HostPort the daemon would pick itself filled in."""
        resolved: dict[str, list[dict[str, str]]] = {}
        for key, bindings in (c.host_config.get("PortBindings") or {}).items():
            resolved[key] = []
            for binding in bindings or []:
                port = str(binding.get("HostPort") or "")
                resolved[key].append(
                    {
                        "HostIp": binding.get("HostIp") or "0.0.0.0",
                        "HostPort": port if port not in ("", "0") else str(_free_port()),
                    }
                )
        return resolved

    def _argv_for(self, c: FakeContainer, ports: dict[str, list[dict[str, str]]]) -> list[str]:
        """The local command that stands in for the container's process."""
        entrypoint = c.body.get("Entrypoint")
        cmd = list(c.body.get("Cmd") or [])
        if isinstance(entrypoint, str):
            entrypoint = shlex.split(entrypoint)
        if _is_vllm_image(c.image) and (not entrypoint or "vllm" in " ".join(entrypoint)):
            return self._vllm_argv(c, cmd, ports)
        if _image_repo(c.image) == OLLAMA_IMAGE and (not cmd or cmd == ["serve"]):
            return self._ollama_argv(c, ports)
        return [*(entrypoint or []), *cmd]

    def _vllm_argv(
        self, c: FakeContainer, cmd: list[str], ports: dict[str, list[dict[str, str]]]
    ) -> list[str]:
        positional, flags = parse_vllm_cmd(cmd)
        # vllm/vllm-openai's entrypoint is `vllm serve`; a positional model wins
        # over --model in vLLM, so an extra "serve" in Cmd becomes the model name.
        model = positional or flags.get("model") or VLLM_DEFAULT_MODEL
        host_port = self._host_port(c, int(flags.get("port") or 8000), ports)
        limit = flags.get("limit_mm_per_prompt")
        image_limit = flags.get("limit_mm_per_prompt.image")
        if isinstance(limit, str):
            try:
                parsed = json.loads(limit)
            except ValueError:
                message = VLLM_LIMIT_MM_USAGE_ERROR.format(value=limit)
                script = "import sys; sys.stderr.write(sys.argv[1]); sys.exit(2)"
                return [sys.executable, "-c", script, message]
            if isinstance(parsed, dict):
                image_limit = parsed.get("image", image_limit)
        no_vision = flags.get("language_model_only") is True or str(image_limit) == "0"
        served = flags.get("served_model_name") or [model]
        argv = [
            *self.settings.simulator_cmd,
            "--flavor",
            "vllm",
            "--host",
            "127.0.0.1",
            "--port",
            str(host_port),
            "--served-model-name",
            *served,
            "--model",
            model,
        ]
        if no_vision:
            argv.append("--no-vision")
        elif str(image_limit or "").isdigit():
            argv += ["--max-images-per-prompt", str(image_limit)]
        if isinstance(flags.get("max_model_len"), str):
            max_len = _parse_max_model_len(flags["max_model_len"])
            if max_len:
                argv += ["--max-model-len", max_len]
        # VLLM_API_KEY from the container's Env reaches the process; the simulator reads it
        # as vLLM does, so only the flag needs forwarding.
        if isinstance(flags.get("api_key"), str):
            argv += ["--api-key", flags["api_key"]]
        return argv + self._simulator_extras()

    def _ollama_argv(self, c: FakeContainer, ports: dict[str, list[dict[str, str]]]) -> list[str]:
        # The ollama/ollama image runs `ollama serve` on OLLAMA_HOST (0.0.0.0:11434).
        container_port = 11434
        for item in c.body.get("Env") or []:
            if item.startswith("OLLAMA_HOST="):
                tail = item.partition("=")[2].rstrip("/").rsplit(":", 1)
                if len(tail) == 2 and tail[1].isdigit():
                    container_port = int(tail[1])
        host_port = self._host_port(c, container_port, ports)
        argv = [*self.settings.simulator_cmd, "--flavor", "ollama"]
        argv += ["--host", "127.0.0.1", "--port", str(host_port)]
        return argv + self._simulator_extras()

    def _simulator_extras(self) -> list[str]:
        extras = list(self.settings.simulator_args)
        if self.settings.simulator_fail:
            extras += ["--fail", self.settings.simulator_fail]
        return extras

    def _host_port(
        self, c: FakeContainer, container_port: int, ports: dict[str, list[dict[str, str]]]
    ) -> int:
        if c.host_config.get("NetworkMode") == "host":
            return container_port
        if ports.get(f"{container_port}/tcp"):
            return int(ports[f"{container_port}/tcp"][0]["HostPort"])
        # Unpublished: a private port nobody is told about, like a real container's.
        return _free_port()

    def _device_error(self, c: FakeContainer) -> str | None:
        for request in c.host_config.get("DeviceRequests") or []:
            driver = request.get("Driver") or ""
            caps = request.get("Capabilities") or []
            if driver == "cdi":
                if not self.settings.cdi_spec_dirs:
                    return DEVICE_DRIVER_ERROR.format(driver=driver, caps=_go_caps(caps))
                ids = request.get("DeviceIDs") or []
                missing = [d for d in ids if d.startswith("nvidia.com/")]
                if missing and not self.settings.cdi_nvidia:
                    return "CDI device injection failed: unresolvable CDI devices " + ", ".join(
                        missing
                    )
            elif not self.settings.nvidia:
                return DEVICE_DRIVER_ERROR.format(driver=driver, caps=_go_caps(caps))
        return None

    def _port_error(self, c: FakeContainer) -> str | None:
        in_use = {
            int(b["HostPort"])
            for other in self.containers.values()
            if other.running and other is not c
            for bindings in other.host_ports.values()
            for b in bindings
        }
        for bindings in (c.host_config.get("PortBindings") or {}).values():
            for binding in bindings or []:
                port = str(binding.get("HostPort") or "")
                if port in ("", "0"):
                    continue
                if int(port) in in_use or not _port_is_free(int(port)):
                    ip = binding.get("HostIp") or "0.0.0.0"
                    return (
                        f"driver failed programming external connectivity on endpoint {c.name}"
                        f" ({c.id}): Bind for {ip}:{port} failed: port is already allocated"
                    )
        return None

    async def start(self, c: FakeContainer) -> tuple[int, str]:
        if c.running:
            return 304, ""
        if self.shutting_down:
            return 500, "daemon is shutting down"
        failure = self._device_error(c) or self._port_error(c)
        if failure:
            # What inspect shows after a failed start: still "created", the error
            # recorded, exit code 128.
            c.error, c.exit_code = failure, 128
            return 500, failure
        ports = self._resolve_ports(c)
        argv = self._argv_for(c, ports)
        if not argv:
            return 400, "no command specified"
        workdir = self.workdir / c.id[:12]
        (workdir / "root").mkdir(parents=True, exist_ok=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._process_env(c),
                cwd=workdir,
                # Its own process group: stop/kill reach whatever it spawns.
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            c.error, c.exit_code = (
                (
                    "failed to create task for container: failed to create shim task: OCI runtime"
                    " create failed: runc create failed: unable to start container process: exec:"
                    f' "{argv[0]}": executable file not found in $PATH: unknown'
                ),
                code,
            )
            return 400, c.error
        c.process, c.pid, c.reaped = proc, proc.pid, False
        self.started_pids[proc.pid] = c
        c.status, c.exit_code, c.error = "running", 0, ""
        c.started_ns, c.finished_ns = time.time_ns(), 0
        c.host_ports = ports
        for spec in self.specs:
            if spec["Id"] == c.id:
                spec["Process"] = list(argv)
        readers = [
            asyncio.create_task(self._pump(c, proc.stdout, 1)),  # type: ignore[arg-type]
            asyncio.create_task(self._pump(c, proc.stderr, 2)),  # type: ignore[arg-type]
        ]
        reaper = asyncio.create_task(self._reap(c, proc, readers))
        # The loop keeps only weak references to tasks.
        self._tasks.add(reaper)
        reaper.add_done_callback(self._tasks.discard)
        c.notify()
        return 204, ""

    async def _reap(
        self, c: FakeContainer, proc: asyncio.subprocess.Process, readers: list[asyncio.Task]
    ) -> None:
        returncode = await proc.wait()
        # When a container's init exits, the kernel kills the rest of its PID namespace;
        # the group is the fake's namespace. This also frees pipes a grandchild held.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, pending = await asyncio.wait(readers, timeout=2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        c.reaped = True
        c.status = "exited"
        # A process killed by signal N exits 128+N in docker's eyes (137, 143).
        c.exit_code = returncode if returncode >= 0 else 128 - returncode
        c.finished_ns = time.time_ns()
        c.exit_count += 1
        c.host_ports = {}
        c.notify()
        if c.host_config.get("AutoRemove") and not c.removed:
            self._forget(c)

    def _signal(self, c: FakeContainer, signum: int) -> None:
        if c.process is None or c.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.process.pid, signum)

    async def _wait_exit(self, c: FakeContainer, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while c.running:
            event = c.changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    async def stop(self, c: FakeContainer, grace_s: float) -> bool:
        if not c.running:
            return False
        self._signal(c, signal.SIGTERM)
        if not await self._wait_exit(c, grace_s):
            self._signal(c, signal.SIGKILL)
            await self._wait_exit(c, self.settings.kill_wait_s)
        return True

    async def kill(self, c: FakeContainer, signum: int) -> None:
        self._signal(c, signum)
        if signum == signal.SIGKILL:
            await self._wait_exit(c, self.settings.kill_wait_s)

    def _forget(self, c: FakeContainer) -> None:
        c.removed = True
        self.containers.pop(c.id, None)
        c.notify()

    async def remove(self, c: FakeContainer, force: bool) -> tuple[int, str]:
        if c.running:
            if not force:
                return 409, (
                    f'cannot remove container "/{c.name}": container is running:'
                    " stop the container before removing or force remove"
                )
            await self.kill(c, signal.SIGKILL)
        self._forget(c)
        return 204, ""

    async def shutdown(self) -> None:
        """Stop every container process this daemon started (SIGTERM, then SIGKILL)."""
        self.shutting_down = True
        running = [c for c in self.containers.values() if c.running]
        await asyncio.gather(*(self.stop(c, self.settings.shutdown_grace_s) for c in running))
        # Containers removed by force while a reaper was still pending are covered too.
        for c in self.started_pids.values():
            if not c.reaped:
                self._signal(c, signal.SIGKILL)

    def kill_leftovers(self) -> list[int]:
        """Last resort from any thread: SIGKILL process groups never seen exiting."""
        killed = []
        for pid, c in list(self.started_pids.items()):
            if c.reaped:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    # ----- views

    def inspect(self, c: FakeContainer) -> dict[str, Any]:
        body = c.body
        entrypoint = body.get("Entrypoint")
        if entrypoint is None and _is_vllm_image(c.image):
            entrypoint = ["vllm", "serve"]
        if isinstance(entrypoint, str):
            entrypoint = shlex.split(entrypoint)
        argv = [*(entrypoint or []), *(body.get("Cmd") or [])]
        host_config = copy.deepcopy(c.host_config)
        host_config.setdefault("LogConfig", DEFAULT_LOG_CONFIG)
        # docker-py sends "default"; the daemon shows what that means on Linux.
        if host_config.get("NetworkMode", "default") == "default":
            host_config["NetworkMode"] = "bridge"
        config = {
            key: copy.deepcopy(value)
            for key, value in body.items()
            if key not in ("HostConfig", "NetworkingConfig")
        }
        config.setdefault("Hostname", c.id[:12])
        config.setdefault("Tty", False)
        config["Entrypoint"] = entrypoint
        config["Labels"] = body.get("Labels") or {}
        config["Env"] = list(body.get("Env") or [])
        return {
            "Id": c.id,
            "Created": _rfc3339(c.created_ns),
            "Path": argv[0] if argv else "",
            "Args": argv[1:],
            "State": {
                "Status": c.status,
                "Running": c.running,
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": c.pid if c.running else 0,
                "ExitCode": c.exit_code,
                "Error": c.error,
                "StartedAt": _rfc3339(c.started_ns) if c.started_ns else ZERO_TIME,
                "FinishedAt": _rfc3339(c.finished_ns) if c.finished_ns else ZERO_TIME,
            },
            "Image": c.image_id,
            "Name": "/" + c.name,
            "RestartCount": 0,
            "Driver": "overlay2",
            "Platform": "linux",
            "HostConfig": host_config,
            "Mounts": self._mounts(c),
            "Config": config,
            "NetworkSettings": {
                "Ports": copy.deepcopy(c.host_ports),
                "IPAddress": "172.17.0.2" if c.running else "",
                "Networks": {},
            },
        }

    def _mounts(self, c: FakeContainer) -> list[dict[str, Any]]:
        mounts = []
        for bind in c.host_config.get("Binds") or []:
            source, _, rest = bind.partition(":")
            destination, _, mode = rest.partition(":")
            if source.startswith("/"):
                mount = {"Type": "bind", "Source": source, "Propagation": "rprivate"}
            else:
                mount = {
                    "Type": "volume",
                    "Name": source,
                    "Source": f"/var/lib/docker/volumes/{source}/_data",
                    "Driver": "local",
                }
            mount.update(
                {"Destination": destination, "Mode": mode or "", "RW": "ro" not in mode.split(",")}
            )
            mounts.append(mount)
        for m in c.host_config.get("Mounts") or []:
            mounts.append(
                {
                    "Type": m.get("Type", "volume"),
                    "Source": m.get("Source", ""),
                    "Destination": m.get("Target", ""),
                    "Mode": "",
                    "RW": not m.get("ReadOnly", False),
                }
            )
        return mounts

    def summary(self, c: FakeContainer) -> dict[str, Any]:
        now = time.time_ns()
        if c.running:
            status = f"Up {max(1, (now - c.started_ns) // 1_000_000_000)} seconds"
        elif c.status == "exited":
            ago = max(1, (now - c.finished_ns) // 1_000_000_000)
            status = f"Exited ({c.exit_code}) {ago} seconds ago"
        else:
            status = "Created"
        ports = []
        for key, bindings in c.host_ports.items():
            private, _, proto = key.partition("/")
            for b in bindings:
                ports.append(
                    {
                        "IP": b["HostIp"],
                        "PrivatePort": int(private),
                        "PublicPort": int(b["HostPort"]),
                        "Type": proto or "tcp",
                    }
                )
        argv = self.inspect(c)
        return {
            "Id": c.id,
            "Names": ["/" + c.name],
            "Image": c.image,
            "ImageID": c.image_id,
            "Command": " ".join([argv["Path"], *argv["Args"]]).strip(),
            "Created": c.created_ns // 1_000_000_000,
            "Ports": ports,
            "Labels": c.body.get("Labels") or {},
            "State": c.status,
            "Status": status,
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "bridge")},
            "Mounts": self._mounts(c),
        }


# --------------------------------------------------------------------------- HTTP layer


def _matches_filters(engine: FakeEngine, c: FakeContainer, filters: dict[str, Any]) -> bool:
    def values(key: str) -> list[str]:
        raw = filters.get(key)
        if raw is None:
            return []
        # Both the list form and the legacy {"value": true} map form exist on the wire.
        return list(raw) if isinstance(raw, list) else [k for k, v in raw.items() if v]

    labels = c.body.get("Labels") or {}
    for wanted in values("label"):
        key, eq, value = wanted.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    if (names := values("name")) and not any(re.search(n, "/" + c.name) for n in names):
        return False
    if (ids := values("id")) and not any(c.id.startswith(i) for i in ids):
        return False
    if (states := values("status")) and c.status not in states:
        return False
    if (exited := values("exited")) and (c.status != "exited" or str(c.exit_code) not in exited):
        return False
    ancestors = values("ancestor")
    return not ancestors or any(
        normalize_image(a) == normalize_image(c.image) or a == c.image_id for a in ancestors
    )


def build_app(engine: FakeEngine) -> Any:
    """The ASGI app: Starlette routes behind a /vX.Y prefix-stripping wrapper."""

    def lookup(request: Request) -> FakeContainer | JSONResponse:
        ref = request.path_params["id"]
        c = engine.find(ref)
        if c is None:
            return _error(404, f"No such container: {ref}")
        return c

    async def ping(request: Request) -> Response:
        return PlainTextResponse(
            "OK",
            headers={"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"},
        )

    async def version(request: Request) -> Response:
        kernel = platform.release()
        return JSONResponse(
            {
                "Platform": {"Name": "Docker Engine - Community"},
                "Components": [
                    {
                        "Name": "Engine",
                        "Version": ENGINE_VERSION,
                        "Details": {
                            "ApiVersion": engine.settings.api_version,
                            "MinAPIVersion": MIN_API_VERSION,
                            "Os": "linux",
                            "Arch": "amd64",
                            "KernelVersion": kernel,
                        },
                    }
                ],
                "Version": ENGINE_VERSION,
                "ApiVersion": engine.settings.api_version,
                "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": "0000000",
                "GoVersion": "go1.22.11",
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": kernel,
                "BuildTime": "2025-01-21T00:00:00.000000000+00:00",
            }
        )

    async def info(request: Request) -> Response:
        settings = engine.settings
        runtimes: dict[str, Any] = {
            "io.containerd.runc.v2": {"path": "runc"},
            "runc": {"path": "runc"},
        }
        if settings.nvidia:
            runtimes["nvidia"] = {"path": "nvidia-container-runtime"}
        states = [c.status for c in engine.containers.values()]
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return JSONResponse(
            {
                "ID": engine.daemon_id,
                "Containers": len(states),
                "ContainersRunning": states.count("running"),
                "ContainersPaused": 0,
                "ContainersStopped": len(states) - states.count("running"),
                "Images": len(engine.images),
                "Driver": "overlay2",
                "DockerRootDir": "/var/lib/docker",
                "LoggingDriver": "json-file",
                "CgroupDriver": "systemd",
                "CgroupVersion": "2",
                "KernelVersion": platform.release(),
                "OperatingSystem": "Ubuntu 24.04.1 LTS",
                "OSType": "linux",
                "Architecture": "x86_64",
                "NCPU": os.cpu_count() or 1,
                "MemTotal": page * pages,
                "Name": "fake-docker",
                "ServerVersion": ENGINE_VERSION,
                "Runtimes": runtimes,
                "DefaultRuntime": "runc",
                "CDISpecDirs": list(settings.cdi_spec_dirs),
                "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
                "Warnings": None,
            }
        )

    async def images_create(request: Request) -> Response:
        from_image = request.query_params.get("fromImage") or ""
        tag = request.query_params.get("tag") or ""
        if not from_image:
            return _error(400, "fromImage is required")  # import from source: not emulated
        ref = from_image
        if tag:
            ref = f"{from_image}@{tag}" if tag.startswith("sha256:") else f"{from_image}:{tag}"
        familiar = normalize_image(ref)
        repo_name, _, tag_name = familiar.rpartition("@" if "@" in familiar else ":")
        # Official images are announced under their full path ("library/alpine").
        shown_repo = repo_name if "/" in repo_name else f"library/{repo_name}"
        missing = {normalize_image(m) if ":" in m else m for m in engine.settings.missing_images}
        if repo_name in missing:
            return _error(
                404,
                f"pull access denied for {repo_name}, repository does not exist or may require"
                " 'docker login': denied: requested access to the resource is denied",
            )
        if familiar in missing:
            return _error(
                404, f"manifest for {familiar} not found: manifest unknown: manifest unknown"
            )
        pull_error = engine.settings.pull_error
        seed = hashlib.sha256(familiar.encode()).hexdigest()
        layers = [seed[i * 12 : (i + 1) * 12] for i in range(3)]
        sizes = [int(seed[40 + i * 6 : 46 + i * 6], 16) * 4 + 1_000_000 for i in range(3)]
        digest = "sha256:" + hashlib.sha256(f"digest:{familiar}".encode()).hexdigest()
        already = familiar in engine.images

        def lines() -> Iterator[dict[str, Any]]:
            yield {"status": f"Pulling from {shown_repo}", "id": tag_name}
            if already:
                yield {"status": f"Digest: {digest}"}
                yield {"status": f"Status: Image is up to date for {familiar}"}
                return
            for layer in layers:
                yield {"status": "Pulling fs layer", "progressDetail": {}, "id": layer}
            for layer in layers[1:]:
                yield {"status": "Waiting", "progressDetail": {}, "id": layer}
            for n, (layer, total) in enumerate(zip(layers, sizes, strict=True)):
                for step in (1, 2, 3):
                    current = total * step // 4
                    yield {
                        "status": "Downloading",
                        "progressDetail": {"current": current, "total": total},
                        "progress": _progress_bar(current, total),
                        "id": layer,
                    }
                if pull_error and n == 1:
                    # moby reports a failed pull in-band, after the 200 has gone out.
                    yield {"errorDetail": {"message": pull_error}, "error": pull_error}
                    return
                yield {"status": "Verifying Checksum", "progressDetail": {}, "id": layer}
                yield {"status": "Download complete", "progressDetail": {}, "id": layer}
            for layer, total in zip(layers, sizes, strict=True):
                for step in (1, 2):
                    current = total * step // 2
                    yield {
                        "status": "Extracting",
                        "progressDetail": {"current": current, "total": total},
                        "progress": _progress_bar(current, total),
                        "id": layer,
                    }
                yield {"status": "Pull complete", "progressDetail": {}, "id": layer}
            yield {"status": f"Digest: {digest}"}
            engine.add_image(familiar)
            yield {"status": f"Status: Downloaded newer image for {familiar}"}

        async def stream() -> AsyncIterator[bytes]:
            for line in lines():
                # moby's stream formatter ends every message with CRLF, one write each.
                yield (_go_json(line) + "\r\n").encode()
                await asyncio.sleep(0)

        return StreamingResponse(stream(), media_type="application/json")

    async def images_list(request: Request) -> Response:
        return JSONResponse(
            [
                {"Id": image_id, "RepoTags": [ref], "RepoDigests": [], "Size": 0, "Labels": {}}
                for ref, image_id in engine.images.items()
            ]
        )

    async def image_inspect(request: Request) -> Response:
        name = request.path_params["name"]
        found = engine.find_image(name)
        if found is None:
            return _error(404, f"No such image: {name}")
        ref, image_id = found
        vllm = _is_vllm_image(ref)
        return JSONResponse(
            {
                "Id": image_id,
                "RepoTags": [ref],
                "RepoDigests": [],
                "Created": "2025-01-01T00:00:00.000000000Z",
                "Architecture": "amd64",
                "Os": "linux",
                "Size": 0,
                "Config": {
                    "Entrypoint": ["vllm", "serve"] if vllm else None,
                    "Cmd": None if vllm else ["/bin/sh"],
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "ExposedPorts": {"8000/tcp": {}} if vllm else None,
                    "Labels": None,
                },
            }
        )

    async def containers_create(request: Request) -> Response:
        body = await request.json()
        name = request.query_params.get("name") or ""
        image = body.get("Image") or ""
        if not image:
            return _error(400, "no image specified")  # moby: "No command specified" etc.
        found = engine.find_image(image)
        if found is None:
            return _error(404, f"No such image: {normalize_image(image)}")
        runtime = (body.get("HostConfig") or {}).get("Runtime")
        if (
            runtime
            and runtime not in ("runc", "io.containerd.runc.v2")
            and not (runtime == "nvidia" and engine.settings.nvidia)
        ):
            return _error(400, f"unknown or invalid runtime name: {runtime}")
        if name:
            if not re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
                return _error(
                    400,
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                )
            name = name.lstrip("/")
            for other in engine.containers.values():
                if other.name == name:
                    return _error(
                        409,
                        f'Conflict. The container name "/{name}" is already in use by container'
                        f' "{other.id}". You have to remove (or rename) that container to be'
                        " able to reuse that name.",
                    )
        else:
            name = f"fake_{secrets.token_hex(4)}"
        container_id = secrets.token_hex(32)
        c = FakeContainer(
            id=container_id,
            name=name,
            image=image,
            image_id=found[1],
            body=body,
            created_ns=time.time_ns(),
        )
        engine.containers[container_id] = c
        engine.specs.append(
            {
                "Id": container_id,
                "Name": name,
                "Image": image,
                "Cmd": copy.deepcopy(body.get("Cmd")),
                "Entrypoint": copy.deepcopy(body.get("Entrypoint")),
                "Env": list(body.get("Env") or []),
                "Labels": dict(body.get("Labels") or {}),
                "HostConfig": copy.deepcopy(body.get("HostConfig") or {}),
                "Body": copy.deepcopy(body),
                "Params": dict(request.query_params),
                "Process": None,
            }
        )
        return JSONResponse({"Id": container_id, "Warnings": []}, status_code=201)

    async def container_start(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        status, message = await engine.start(c)
        if status >= 400:
            return _error(status, message)
        return Response(status_code=status)

    async def container_inspect(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        return JSONResponse(engine.inspect(c))

    async def container_logs(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        q = request.query_params
        want = {s for s, key in ((1, "stdout"), (2, "stderr")) if _flag(q.get(key))}
        if not want:
            return _error(400, "Bad parameters: you must choose at least one stream")
        follow, timestamps = _flag(q.get("follow")), _flag(q.get("timestamps"))
        since = float(q.get("since") or 0)
        until = float(q.get("until") or 0)
        tail = q.get("tail") or "all"
        framer = _Framer(engine.settings.log_frame_size, c.tty)

        def selected(entries: list[LogEntry]) -> list[LogEntry]:
            return [
                e
                for e in entries
                if e.stream in want
                and e.ts_ns >= since * 1e9
                and (not until or e.ts_ns < until * 1e9)
            ]

        async def stream() -> AsyncIterator[bytes]:
            first = selected(c.log)
            if tail != "all" and tail.isdigit():
                first = first[max(0, len(first) - int(tail)) :] if int(tail) else []
            seen = len(c.log)
            batch = first
            while True:
                for entry in batch:
                    data = entry.data
                    if timestamps:
                        data = _rfc3339(entry.ts_ns).encode() + b" " + data
                    for frame in framer.frames(entry.stream, data):
                        yield frame
                if not follow or c.removed:
                    return
                # Lines appended while the last batch went out still belong to the stream,
                # even when the container has exited meanwhile.
                finished = not c.running
                if not finished and len(c.log) == seen:
                    await c.changed.wait()
                batch = selected(c.log[seen:])
                seen = len(c.log)
                if finished and not batch:
                    return

        # API 1.42+ names the framing; older clients were told raw-stream either way.
        multiplexed = _version_tuple(engine.settings.api_version) >= (1, 42) and not c.tty
        media = "application/vnd.docker.multiplexed-stream" if multiplexed else None
        return StreamingResponse(stream(), media_type=media or "application/vnd.docker.raw-stream")

    async def container_wait(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        condition = request.query_params.get("condition") or "not-running"
        target = c.exit_count + 1
        while True:
            if condition == "removed" and c.removed:
                break
            if condition == "next-exit" and c.exit_count >= target:
                break
            if condition == "not-running" and not c.running:
                break
            await c.changed.wait()
        result: dict[str, Any] = {"StatusCode": c.exit_code}
        if c.error:
            result["Error"] = {"Message": c.error}
        return JSONResponse(result)

    async def container_stop(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        grace = float(request.query_params.get("t") or 10)
        if not await engine.stop(c, grace):
            return Response(status_code=304)
        return Response(status_code=204)

    async def container_kill(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        if not c.running:
            return _error(409, f"Cannot kill container: {c.id}: Container {c.id} is not running")
        name = (request.query_params.get("signal") or "SIGKILL").upper()
        try:
            signum = (
                int(name)
                if name.isdigit()
                else signal.Signals[name if name.startswith("SIG") else "SIG" + name].value
            )
        except KeyError:
            return _error(400, f"Invalid signal: {name}")
        await engine.kill(c, signum)
        return Response(status_code=204)

    async def container_delete(request: Request) -> Response:
        c = lookup(request)
        if isinstance(c, Response):
            return c
        status, message = await engine.remove(c, _flag(request.query_params.get("force")))
        if status >= 400:
            return _error(status, message)
        return Response(status_code=status)

    async def containers_list(request: Request) -> Response:
        q = request.query_params
        try:
            filters = json.loads(q.get("filters") or "{}")
        except ValueError:
            return _error(400, "invalid filter")
        show_all = _flag(q.get("all"))
        listed = [
            engine.summary(c)
            for c in sorted(engine.containers.values(), key=lambda c: -c.created_ns)
            if (show_all or c.running) and _matches_filters(engine, c, filters)
        ]
        limit = int(q.get("limit") or -1)
        return JSONResponse(listed[:limit] if limit > 0 else listed)

    async def fake_containers(request: Request) -> Response:
        return JSONResponse(engine.specs)

    async def fake_settings(request: Request) -> Response:
        if request.method == "PUT":
            for key, value in (await request.json()).items():
                if not hasattr(engine.settings, key):
                    return _error(400, f"unknown setting {key}")
                setattr(engine.settings, key, value)
        return JSONResponse(asdict(engine.settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            await engine.shutdown()

    routes = [
        Route("/_ping", ping, methods=["GET", "HEAD"]),
        Route("/version", version),
        Route("/info", info),
        Route("/images/create", images_create, methods=["POST"]),
        Route("/images/json", images_list),
        Route("/images/{name:path}/json", image_inspect),
        Route("/containers/create", containers_create, methods=["POST"]),
        Route("/containers/json", containers_list),
        Route("/containers/{id}/start", container_start, methods=["POST"]),
        Route("/containers/{id}/json", container_inspect),
        Route("/containers/{id}/logs", container_logs),
        Route("/containers/{id}/wait", container_wait, methods=["POST"]),
        Route("/containers/{id}/stop", container_stop, methods=["POST"]),
        Route("/containers/{id}/kill", container_kill, methods=["POST"]),
        Route("/containers/{id}", container_delete, methods=["DELETE"]),
        Route("/_fake/containers", fake_containers),
        Route("/_fake/settings", fake_settings, methods=["GET", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return _DaemonHeaders(app, engine)


class _DaemonHeaders:
    """Strips the /vX.Y prefix docker-py puts on every path, and stamps daemon headers."""

    prefix = re.compile(r"^/v(\d+\.\d+)(/.*)$")

    def __init__(self, app: Any, engine: FakeEngine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api_version = self.engine.settings.api_version
        headers = [
            (b"api-version", api_version.encode()),
            (b"docker-experimental", b"false"),
            (b"ostype", b"linux"),
            (b"server", f"Docker/{ENGINE_VERSION} (linux)".encode()),
        ]

        async def stamped(message: dict) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                message = {**message, "headers": kept + headers}
            await send(message)

        match = self.prefix.match(scope["path"])
        if match:
            if _version_tuple(match[1]) > _version_tuple(api_version):
                response = _error(
                    400,
                    f"client version {match[1]} is too new. Maximum supported API version is"
                    f" {api_version}",
                )
                await response(scope, receive, stamped)
                return
            scope = {**scope, "path": match[2]}
        await self.app(scope, receive, stamped)


# --------------------------------------------------------------------------- runner


class FakeDocker:
    """A fake daemon served by uvicorn in a background thread."""

    def __init__(
        self,
        workdir: Path,
        scenario: str | Iterable[str] | None = "default",
        *,
        socket_path: Path | None = None,
        tcp: bool = False,
        images: Iterable[str] = (),
        settings: EngineSettings | None = None,
        **knobs: Any,
    ) -> None:
        self.settings = settings or EngineSettings()
        for key, value in knobs.items():
            if not hasattr(self.settings, key):
                raise TypeError(f"unknown knob {key!r}")
            setattr(self.settings, key, value)
        apply_scenario(self.settings, scenario)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.engine = FakeEngine(self.workdir / "containers", self.settings)
        for image in images:
            self.engine.add_image(image)
        self._short_dir: str | None = None
        self.port: int | None = None
        self.socket_path: Path | None = None
        if tcp:
            self.port = _free_port()
        else:
            path = socket_path or self.workdir / "docker.sock"
            # AF_UNIX paths are limited to ~107 bytes; pytest's tmp paths can be longer.
            if len(str(path)) > 100:
                self._short_dir = tempfile.mkdtemp(prefix="fdk-")
                path = Path(self._short_dir) / "docker.sock"
            self.socket_path = path
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def docker_host(self) -> str:
        if self.port is not None:
            return f"tcp://127.0.0.1:{self.port}"
        return f"unix://{self.socket_path}"

    @property
    def containers(self) -> list[dict[str, Any]]:
        """Every create request (Cmd, Env, Labels, HostConfig, Body, Params, Process)."""
        return copy.deepcopy(list(self.engine.specs))

    def container(self, name_or_id: str) -> dict[str, Any]:
        for spec in reversed(self.containers):
            if spec["Name"] == name_or_id.lstrip("/") or spec["Id"].startswith(name_or_id):
                return spec
        raise KeyError(name_or_id)

    @property
    def images(self) -> list[str]:
        return sorted(self.engine.images)

    def add_image(self, ref: str) -> None:
        """Make an image present, as if pulled earlier."""
        if self._running():
            self.call(self._add_image(ref))
        else:
            self.engine.add_image(ref)

    async def _add_image(self, ref: str) -> None:
        self.engine.add_image(ref)

    def live_pids(self) -> list[int]:
        """Pids of container processes that have not been seen exiting."""
        return [pid for pid, c in self.engine.started_pids.items() if not c.reaped]

    def all_pids(self) -> list[int]:
        return list(self.engine.started_pids)

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.docker_host}

    def client(self, **kwargs: Any) -> Any:
        import docker

        return docker.DockerClient(base_url=self.docker_host, **kwargs)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (engine state lives there)."""
        assert self.engine.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.engine.loop).result(timeout)

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.engine.loop is not None

    def start(self, ready_within_s: float = 15.0) -> FakeDocker:
        import httpx
        import uvicorn

        config = uvicorn.Config(
            build_app(self.engine),
            uds=str(self.socket_path) if self.socket_path else None,
            host="127.0.0.1",
            port=self.port or 0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-docker", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ready_within_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("fake docker daemon failed to start (see stderr)")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"fake docker daemon not up within {ready_within_s}s")
            time.sleep(0.01)
        transport = httpx.HTTPTransport(uds=str(self.socket_path)) if self.socket_path else None
        base = "http://docker" if self.socket_path else f"http://127.0.0.1:{self.port}"
        with httpx.Client(transport=transport, base_url=base, timeout=5) as http:
            if http.get("/_ping").text != "OK":
                self.close()
                raise RuntimeError("fake docker daemon does not answer /_ping")
        return self

    def close(self) -> None:
        if self._running():
            with contextlib.suppress(Exception):
                self.call(self.engine.shutdown(), timeout=30)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.engine.kill_leftovers()
        if self.socket_path is not None:
            # A daemon that is down is a socket path that does not exist.
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._short_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._short_dir)

    def __enter__(self) -> FakeDocker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_fake_docker(
    tmp_path: Path, scenario: str | Iterable[str] | None = "default", **kwargs: Any
) -> Iterator[FakeDocker]:
    """Start a fake daemon on a unix socket under tmp_path; stop it and its containers after."""
    fake = FakeDocker(Path(tmp_path) / "fake-docker", scenario, **kwargs)
    fake.start()
    try:
        yield fake
    finally:
        fake.close()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path, help="unix socket path to listen on")
    where.add_argument("--port", type=int, help="TCP port on 127.0.0.1 to listen on")
    parser.add_argument(
        "--scenario", action="append", default=[], choices=SCENARIOS, help="repeatable"
    )
    parser.add_argument("--image", action="append", default=[], help="pre-pulled image")
    parser.add_argument(
        "--simulator-cmd", help="command line that replaces `python -m msmall.simulator`"
    )
    parser.add_argument("--workdir", type=Path, help="where container processes run")
    args = parser.parse_args(argv)

    import uvicorn

    settings = EngineSettings()
    if args.simulator_cmd:
        settings.simulator_cmd = shlex.split(args.simulator_cmd)
    apply_scenario(settings, args.scenario)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fake-docker-"))
    engine = FakeEngine(workdir / "containers", settings)
    for image in args.image:
        engine.add_image(image)
    where_text = f"unix://{args.socket}" if args.socket else f"tcp://127.0.0.1:{args.port}"
    print(f"fake docker daemon: DOCKER_HOST={where_text}", file=sys.stderr, flush=True)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a captured SIGTERM after shutting down, which would end the
            # program before it removes its socket; a stopped daemon must leave none behind.
            originals = {
                s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for signum, handler in originals.items():
                    signal.signal(signum, handler)

    config = uvicorn.Config(
        build_app(engine),
        uds=str(args.socket) if args.socket else None,
        host="127.0.0.1",
        port=args.port or 0,
        log_level="warning",
        access_log=False,
        http="h11",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    try:
        _Server(config).run()
    finally:
        engine.kill_leftovers()
        if args.socket:
            with contextlib.suppress(FileNotFoundError):
                args.socket.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
