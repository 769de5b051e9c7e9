"""`msmall health` survives any server (issue 9): a small misbehaving HTTP server on 127.0.0.1
port 0, one mode per case; each ends in a plain failed check within a bounded time."""

from __future__ import annotations

import functools
import gzip
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import msmall_cmd

MODEL_LIST = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
ESCAPE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"


@functools.cache
def gzip_bomb() -> bytes:
    """200 MiB of zeros in 200 KB. Made once: compressing it takes 1.4 s of CPU, and msmall asks
    more than once."""
    return gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)


class Hostile(BaseHTTPRequestHandler):
    mode = "html"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(
        self, body: bytes, ctype: str = "application/json", extra: dict | None = None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        models = self.path.startswith("/v1/models")
        try:
            if mode == "html":
                self._send(b"<html><body>hello</body></html>", "text/html")
            elif mode == "wrong-json":
                self._send(
                    b'{"data": "nope", "choices": {"x": 1}}'
                    if not models
                    else b'{"data": [{"id": "m"}]}'
                )
            elif mode == "escapes":
                if models:
                    self._send(json.dumps({"data": [{"id": "m" + ESCAPE}]}).encode())
                else:
                    self._send(json.dumps({"error": {"message": ESCAPE}}).encode())
            elif models:
                self._send(MODEL_LIST)
            elif mode == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(200 * 1024 * 1024))
                self.end_headers()
                chunk = b" " * 65536
                for _ in range(200 * 16):
                    self.wfile.write(chunk)
            elif mode == "gzip-bomb":
                self._send(gzip_bomb(), extra={"Content-Encoding": "gzip"})
            elif mode == "drip":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            elif mode == "endless-stream":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                event = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
                while True:
                    self.wfile.write(event)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hostile():
    servers = []

    def start(mode: str) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        server.daemon_threads = True
        server.mode = mode  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "mode", ["html", "wrong-json", "huge", "gzip-bomb", "drip", "endless-stream", "escapes"]
)
def test_health_fails_plainly_and_in_bounded_time(hostile, mode: str) -> None:
    url = hostile(mode)
    started = time.monotonic()
    result = subprocess.run(
        msmall_cmd("health", url, "--timeout", "3"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "\x1b" not in result.stderr + result.stdout, repr(result.stderr)
    assert "\x07" not in result.stderr
    # Four checks, each capped at its deadline (3 s, at least the 5 s probe floor) and start-up.
    assert took < 60, f"{mode} took {took:.0f} s"


def test_url_credentials_are_never_echoed(hostile) -> None:
    url = hostile("html").replace("http://", "http://alice:s3cr3t-pw@")
    result = subprocess.run(
        msmall_cmd("health", url, "--timeout", "3", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 5
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "alice" not in result.stdout + result.stderr
