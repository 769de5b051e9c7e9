"""A lean HTTP/1.1 client on asyncio streams, made for timing server-sent events.

Why not httpx: measured in issue 13 (docs/benchmarks.md, "Bench client"), httpx's async stack
spends several times more CPU per streamed token than this client, and on a 2-core machine that
CPU is taken from the server under test and shows up as TTFT error. This client does the least
per event: one `readuntil`/`readexactly` per chunk of a chunked response, a monotonic timestamp
(`time.perf_counter`) taken the moment the chunk's bytes are handed over, nothing else.

One `Connection` is one kept-alive socket; a bench worker owns one and reuses it for every
request (as `vllm bench serve`'s aiohttp session does with its connection pool).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """A transport failure; `kind` names it for the errors-by-kind table."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # only for responses that are not streamed to on_data


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[:-3]
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class Connection:
    def __init__(self, target: Target, headers: dict[str, str] | None = None) -> None:
        self.target = target
        self.extra_headers = headers or {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self.target.scheme == "https" else None
        try:
            self.reader, self.writer = await asyncio.open_connection(
                self.target.host, self.target.port, ssl=context, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise HttpError(
                "connect", f"cannot connect to {self.target.host_header}: {exc}"
            ) from None
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            # Each SSE event is a small write; Nagle + delayed ACK would add 40 ms to some.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def _head(self, method: str, path: str, length: int) -> bytes:
        lines = [
            f"{method} {self.target.base_path}{path} HTTP/1.1",
            f"Host: {self.target.host_header}",
            "Accept: */*",
            "Content-Type: application/json",
            f"Content-Length: {length}",
        ]
        lines += [f"{k}: {v}" for k, v in self.extra_headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        on_data: Callable[[float, bytes], None] | None = None,
        on_sent: Callable[[float], None] | None = None,
    ) -> Response:
        """Send one request; body pieces of a 200 answer go to `on_data(timestamp, bytes)`.

        `on_sent` gets the time the request was written (the TTFT clock starts there, as in
        vLLM's endpoint_request_func.py, `st = time.perf_counter()` before `session.post`).
        """
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                if on_sent is not None:
                    on_sent(time.perf_counter())
                self.writer.write(self._head(method, path, len(body)) + body)
                await self.writer.drain()
                status_line = await self.reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.close()
                # A kept-alive socket the server closed meanwhile: retry once on a new one.
                if fresh or attempt:
                    raise HttpError(
                        "protocol", f"connection closed before the answer: {exc}"
                    ) from None
                continue
            except asyncio.LimitOverrunError as exc:
                self.close()
                raise HttpError("protocol", f"status line too long: {exc}") from None
            return await self._read_response(status_line, on_data)
        raise AssertionError("unreachable")

    async def _read_response(
        self, status_line: bytes, on_data: Callable[[float, bytes], None] | None
    ) -> Response:
        reader = self.reader
        assert reader is not None
        try:
            parts = status_line.split(b" ", 2)
            status = int(parts[1])
        except (IndexError, ValueError):
            self.close()
            raise HttpError("protocol", f"bad status line {status_line[:80]!r}") from None
        headers: dict[str, str] = {}
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            stream_to = on_data if status == 200 else None
            body = bytearray()

            def sink(ts: float, data: bytes) -> None:
                if stream_to is not None:
                    stream_to(ts, data)
                else:
                    body.extend(data)

            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers
                        break
                    data = await reader.readexactly(size + 2)
                    sink(time.perf_counter(), data[:-2])
            elif "content-length" in headers:
                remaining = int(headers["content-length"])
                while remaining > 0:
                    data = await reader.read(min(remaining, 65536))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    sink(time.perf_counter(), data)
            else:
                while data := await reader.read(65536):
                    sink(time.perf_counter(), data)
                self.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.close()
            raise HttpError("protocol", f"the answer broke off: {exc!r}"[:200]) from None
        except asyncio.LimitOverrunError:
            self.close()
            raise HttpError("protocol", "a header or chunk-size line is too long") from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, bytes(body))


class SSEParser:
    """Splits a byte stream into `data:` payloads; each keeps the timestamp of the bytes that
    completed it (an event split over two reads is timed by the second)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        # The common case, one whole `data: ...` event per chunk: no splitting, no copies.
        if (
            not self._buffer
            and data.startswith(b"data: ")
            and data.endswith(b"\n\n")
            and data.find(b"\n") == len(data) - 2
        ):
            return [data[6:-2]]
        buffer = self._buffer + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = buffer.split(b"\n\n")
        payloads = []
        for event in events:
            for line in event.split(b"\n"):
                # Lines starting ':' are SSE comments (pings), skipped as vLLM's
                # StreamedResponseHandler does.
                if line.startswith(b"data:"):
                    payloads.append(line[5:].strip())
        return payloads


async def get_json(conn: Connection, path: str, timeout: float = 10.0) -> tuple[int, object]:
    import json

    try:
        response = await asyncio.wait_for(conn.request("GET", path), timeout)
    except asyncio.TimeoutError:
        conn.close()
        raise HttpError("timeout", f"GET {path} took over {timeout:.0f} s") from None
    try:
        return response.status, json.loads(response.body or b"null")
    except ValueError:
        return response.status, None
