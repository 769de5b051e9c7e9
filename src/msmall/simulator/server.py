"""serve(): run one simulated engine as a process would, from load to clean shutdown.

vLLM binds its port before loading but only listens when the engine is ready, so until then
connections are REFUSED (msmall treats "refused" as "still loading"). The simulator does the
same: bind first (the port is taken), load (log lines, startup delay, failures), then listen.
Ollama listens at once and loads a model on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from msmall import eventloop
from msmall.simulator.app import build_app
from msmall.simulator.config import OLLAMA_VERSION, SimulatorConfig
from msmall.simulator.engine import wake_sleepers
from msmall.simulator.state import SimState
from msmall.simulator.vllm_app import ENGINE_DEAD
from msmall.simulator.vllm_startup import vllm_load, vllm_routes


class _Server(uvicorn.Server):
    """uvicorn without its signal capture (serve() owns the signals) and with a ready hook."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would re-raise a captured SIGTERM after shutdown, killing the process with
        # status -15; the simulator must exit 0 instead.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_ready()


class StampedH11(H11Protocol):
    """uvicorn's h11 protocol, stamping each request with the moment its bytes arrived
    (``scope["state"]["msmall_arrived"]``, time.monotonic()).

    The simulated engine's clock (TTFT) starts there, not when the handler finally runs: with
    64 requests arriving at once the last handler starts tens of milliseconds later on a busy
    core, and that is the simulator's overhead, not the engine's latency it injects.
    """

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        before = getattr(self, "scope", None)
        super().data_received(data)
        scope = getattr(self, "scope", None)
        if scope is not None and scope is not before:
            state = scope.get("state")
            if isinstance(state, dict):
                state["msmall_arrived"] = now


def _http_protocol() -> type:
    """httptools when installed (what vLLM runs: its ``fastapi[standard]`` requirement brings
    ``uvicorn[standard]``, and uvicorn's ``http="auto"`` picks httptools), else h11.

    httptools writes a streamed chunk with one ``transport.write`` of the framed bytes; h11
    runs its state machine and writer in Python for every chunk. With uvloop, the simulator's
    CPU per streamed token at 128 streams went from 132 to 89 us (docs/benchmarks.md,
    "Simulator speed").
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return StampedH11

    class StampedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol with StampedH11's arrival stamp."""

        _msmall_now = 0.0

        def data_received(self, data: bytes) -> None:
            self._msmall_now = time.monotonic()
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["state"]["msmall_arrived"] = self._msmall_now

    return StampedHttpTools


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind without listening: the port is taken, connections are refused.

    The protocol must be IPPROTO_TCP, not 0: asyncio (base_events._set_nodelay) sets TCP_NODELAY
    on accepted connections only when ``sock.proto == IPPROTO_TCP``, and an accepted socket
    inherits the listening socket's proto. Without no-delay every response on a kept-alive
    connection waits ~40 ms for the client's delayed ACK (Nagle). Real vLLM (uvloop) and Ollama
    (Go's net package) set no-delay on every connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(config: SimulatorConfig) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or an injected failure (exit 1). Returns the exit code."""
    return eventloop.run(_Runner(config).run())


class _Runner:
    """One run of the simulator: bind, load, listen, serve, stop."""

    def __init__(
        self,
        config: SimulatorConfig,
        sock: socket.socket | None = None,
        ready: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.state = SimState(config)
        self.sock = sock
        self.ready = ready
        self.server: _Server | None = None
        self.stop: asyncio.Event | None = None

    def request_stop(self) -> None:
        """Signal handler and thread-safe stop target: shut down cleanly, exit code unchanged."""
        if self.stop is not None:
            self.stop.set()
        wake_sleepers()
        if self.server is not None:
            self.server.should_exit = True

    async def run(self) -> int:
        config, state = self.config, self.state
        self.stop = state.stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            sock = self.sock or bind_socket(config.host, config.bind_port)
        except OSError as exc:
            _log_bind_error(state, exc)
            return 1
        port = sock.getsockname()[1]
        # Starlette's StreamingResponse runs on anyio, whose asyncio backend is imported on
        # first use: ~60 ms inside the first streamed request's TTFT. Load it now.
        import anyio

        await anyio.sleep(0)
        try:
            if config.flavor == "vllm":
                failed = await vllm_load(state, port)
                if failed is not None or self.stop.is_set():
                    return failed or 0
                vllm_routes(state, port)
            else:
                # `ollama serve` listens at once: "Listening on" means connections are accepted
                # (queued until the event loop serves them).
                sock.listen(2048)
                _ollama_banner(state, port)
            uv_config = uvicorn.Config(
                build_app(config, state),
                log_config=None,
                access_log=False,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=1,
                http=_http_protocol(),
                # No route of the simulator is a WebSocket; "auto" imports the websockets
                # package, about 20 ms of every start.
                ws="none",
            )
            self.server = _Server(uv_config, self._on_ready)
            if self.stop.is_set():
                return 0
            await self.server.serve(sockets=[sock])
            if config.flavor == "vllm":
                log = state.vllm_log
                for line in ("Shutting down", "Waiting for application shutdown."):
                    log.uvicorn(line)
                log.uvicorn("Application shutdown complete.")
                log.uvicorn(f"Finished server process [{log.pid}]")
            return state.exit_code
        finally:
            sock.close()

    def _on_ready(self) -> None:
        config, state = self.config, self.state
        if config.flavor == "vllm":
            log = state.vllm_log
            log.uvicorn(f"Started server process [{log.pid}]")
            log.uvicorn("Waiting for application startup.")
            log.uvicorn("Application startup complete.")
            if config.failing("http-503"):
                log.api("AsyncLLM output_handler failed.", "async_llm.py:480", "ERROR")
                log.api(
                    f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD}",
                    "async_llm.py:480",
                    "ERROR",
                )
        if config.failing("exit-after-ready"):
            asyncio.get_running_loop().create_task(_die_after_ready(state, self.request_stop))
        if self.ready is not None:
            self.ready.set()


async def _die_after_ready(state: SimState, request_stop: Callable[[], None]) -> None:
    await state.sleep(state.config.exit_after_ready_s)
    if state.stop is not None and state.stop.is_set():
        return
    state.healthy = False
    state.exit_code = 1
    if state.config.flavor == "vllm":
        log = state.vllm_log
        log.engine("EngineCore encountered a fatal error.", "core.py:760", "ERROR")
        log.api("AsyncLLM output_handler failed.", "async_llm.py:480", "ERROR")
        log.api(
            f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD}", "async_llm.py:480", "ERROR"
        )
    else:
        state.ollama_log.line(
            "server.go:480", "llama runner terminated", "ERROR", error="exit status 2"
        )
        state.ollama_log.raw(
            "panic: runtime error: invalid memory address or nil pointer dereference"
        )
    request_stop()


def _log_bind_error(state: SimState, exc: OSError) -> None:
    if state.config.flavor == "vllm":
        state.vllm_log.api(
            f"OSError: [Errno {exc.errno}] {exc.strerror}", "api_server.py:1880", "ERROR"
        )
    else:
        host, port = state.config.host, state.config.bind_port
        state.ollama_log.raw(
            f"Error: listen tcp {host}:{port}: bind: {(exc.strerror or str(exc)).lower()}"
        )


# Ollama --------------------------------------------------------------------------------------


def _ollama_banner(state: SimState, port: int) -> None:
    log = state.ollama_log
    log.line("images.go:479", f"total blobs: {len(state.pulled)}")
    log.line("images.go:486", "total unused blobs removed: 0")
    log.line(
        "routes.go:1350", f"Listening on {state.config.host}:{port} (version {OLLAMA_VERSION})"
    )
    log.line("gpu.go:217", "looking for compatible GPUs")
    log.line(
        "types.go:130",
        "inference compute",
        id="GPU-a91a72c4-6733-ae33-c532-f159bfc07477",
        library="cuda",
        variant="v12",
        compute="8.9",
        driver="12.8",
        name="NVIDIA GeForce RTX 4090",
        total="23.6 GiB",
        available="21.8 GiB",
    )


# In-process ----------------------------------------------------------------------------------


class SimulatorThread:
    """The simulator on a background thread of this process, for tests and benchmarks.

    ``with SimulatorThread(config) as sim: httpx.get(sim.base_url + "/health")``. Port 0 picks a
    free port. Entering waits until the server listens (after any startup delay). Signals stay
    with the main thread; a failure mode that exits sets ``exit_code``.
    """

    def __init__(self, config: SimulatorConfig, ready_timeout: float = 30.0) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.exit_code: int | None = None
        sock = bind_socket(config.host, config.bind_port)
        self.port: int = sock.getsockname()[1]
        self._ready = threading.Event()
        self._runner = _Runner(config, sock, self._ready)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="msmall-simulator", daemon=True)

    @property
    def state(self) -> SimState:
        return self._runner.state

    @property
    def base_url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def _run(self) -> None:
        loop = eventloop.new_event_loop()
        self._loop = loop
        try:
            self.exit_code = loop.run_until_complete(self._runner.run())
        finally:
            loop.close()
            self._ready.set()

    def start(self) -> SimulatorThread:
        self._thread.start()
        if not self._ready.wait(self.ready_timeout) or self.exit_code is not None:
            self.stop()
            raise RuntimeError(f"the simulator did not become ready (exit code {self.exit_code})")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._runner.request_stop)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
