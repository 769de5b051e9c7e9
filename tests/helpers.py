"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import http.server
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from conftest import msmall_cmd, with_sigint
from msmall.httpclient import new_client

WAIT_S = 30.0


def path_without_nvidia_hook(path: str | None = None) -> str:
    """PATH minus the directories holding nvidia-container-runtime-hook: msmall takes a local
    hook as proof that Docker can serve --gpus, which a "no toolkit" test must not find on a
    machine where the NVIDIA Container Toolkit is installed."""
    dirs = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    keep = [
        d
        for d in dirs
        if d and not os.path.exists(os.path.join(d, "nvidia-container-runtime-hook"))
    ]
    return os.pathsep.join(keep)


def http_get(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.get for a server on this machine: no proxy from the environment, and (msmall's
    new_client) no CA bundle parsed for a plain http:// URL, which httpx.get does for every
    call, 40 ms of CPU each in the suite's polling loops."""
    with new_client(url) as client:
        return client.get(url, **kwargs)


class LiveServe:
    """A running `msmall serve` subprocess whose stderr lines we can wait for."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, sigint: str = "default"
    ) -> None:
        # The SIGINT disposition is set explicitly, so results never depend on how pytest was
        # started (with SIGINT ignored as a background job, msmall would inherit that).
        self.proc = subprocess.Popen(
            with_sigint(msmall_cmd(*args), sigint),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                # Done only when the reader has hit EOF too: the process can exit while lines
                # are still in the pipe.
                if not self._reader.is_alive() and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"never saw {text!r}; stderr so far:\n{''.join(self.seen)}")

    def finish(self, timeout: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=timeout)
        # EOF follows the exit (unless a grandchild still holds the pipe): wait for the reader,
        # bounded, then take everything it read.
        self._reader.join(timeout=10)
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def server_children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


# ---------------------------------------------------------------------------------------------
# A scripted HTTP server for readiness and smoke tests: real HTTP on 127.0.0.1, port 0.

Reply = tuple[int, str | bytes | list[bytes]]  # status, body (a list of chunks is streamed)
Route = Callable[[dict[str, Any]], Reply]


class ScriptedServer:
    """Answers each (method, path) with whatever the test put in `routes` at that moment.

    The socket is bound at once (so the port is ours, with no race) but only listens after
    `listen()`: until then connections are refused, as vLLM's port is while its engine loads.
    A body given as a list of byte chunks is written chunk by chunk and the connection closed,
    which is how an SSE stream that stops early looks to the client.
    """

    def __init__(self, listening: bool = True) -> None:
        self.routes: dict[tuple[str, str], Route | Reply] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                path = self.path.split("?")[0]
                server.requests.append((method, path, body))
                route = server.routes.get((method, path))
                status, payload = (
                    (404, "not found")
                    if route is None
                    else route(body)
                    if callable(route)
                    else route
                )
                chunks = payload if isinstance(payload, list) else None
                data = b"" if chunks is not None else _as_bytes(payload)
                self.send_response(status)
                kind = "text/event-stream" if chunks is not None else _content_type(data)
                self.send_header("Content-Type", kind)
                if chunks is None:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for piece in chunks if chunks is not None else [data]:
                    self.wfile.write(piece)
                    self.wfile.flush()

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), Handler, bind_and_activate=False
        )
        self.httpd.daemon_threads = True
        self.httpd.server_bind()
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        if listening:
            self.listen()

    def listen(self) -> None:
        self.httpd.server_activate()
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_bytes(payload: str | bytes | dict | list) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def _content_type(data: bytes) -> str:
    return "application/json" if data[:1] in (b"{", b"[") else "text/plain; charset=utf-8"


def models_body(*names: str) -> str:
    return json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


def chat_body(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> str:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def sse(*events: str | dict[str, Any]) -> list[bytes]:
    """Server-sent events: dicts become `data: {json}`, strings are sent as `data: <string>`."""
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}
