"""A lean HTTP/1.1 client on an asyncio Protocol, made for timing server-sent events.

Why not httpx: measured in issue 13 (docs/benchmarks.md, "Bench client"), httpx's async stack
spends several times more CPU per streamed token than this client, and on a 2-core machine that
CPU is taken from the server under test and shows up as TTFT error. This client does the least
per event: the response is parsed inside ``data_received`` (no task wakes up per chunk, no
``readuntil``/``readexactly`` futures), one monotonic timestamp (`time.perf_counter`) is taken
when the bytes are handed over by the event loop, and each chunk of a chunked body goes to the
caller's ``on_data(timestamp, bytes)`` at once. With 256 streams a decode step of the engine
arrives as a burst of 256 chunks; each costs one callback, not a round of task switches.

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
_MAX_LINE = 4096  # a chunk-size line or trailer


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


class _Exchange:
    """The parser of one response, fed from data_received; completes `done`."""

    __slots__ = (
        "body",
        "buf",
        "done",
        "got_bytes",
        "headers",
        "mode",
        "need",
        "on_data",
        "remaining",
        "status",
        "stream_to",
    )

    def __init__(
        self, done: asyncio.Future[Response], on_data: Callable[[float, bytes], None] | None
    ) -> None:
        self.done = done
        self.on_data = on_data
        self.buf = b""
        self.got_bytes = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        # "head", "size" (a chunk-size line), "data" (need bytes + CRLF), "trailer",
        # "length" (Content-Length bytes left), "close" (until EOF)
        self.mode = "head"
        self.need = 0
        self.remaining = 0
        self.stream_to: Callable[[float, bytes], None] | None = None  # on_data, once 200

    def _sink(self, ts: float, data: bytes) -> None:
        if self.stream_to is not None:
            self.stream_to(ts, data)
        else:
            self.body.extend(data)

    def feed(self, ts: float, data: bytes) -> bool:
        """Parse what arrived; True when the response is complete."""
        self.got_bytes = True
        if self.mode == "size" and not self.buf and self.stream_to is not None:
            # The hottest path: exactly one whole chunk in this read (a streamed token), handed
            # over in one slice. ``find`` without a start offset: with one, CPython 3.11 parses
            # its arguments through a format string built per call (stringlib
            # parse_args_finds), a measurable share of a 7 us chunk. Anything else (a chunk
            # extension, two chunks, a split one, the last chunk) takes the loop below.
            eol = data.find(b"\r\n")
            if 0 < eol < 9 and data[-2:] == b"\r\n":
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = 0
                if size and eol + 4 + size == len(data):
                    self.stream_to(ts, data[eol + 2 : -2])
                    return False
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        while True:
            mode = self.mode
            if mode == "size":
                # The hot path: a chunk-size line and the whole chunk in one read (one SSE
                # event per chunk), handed over without a second pass through the loop.
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_LINE:
                        raise HttpError("protocol", "a header or chunk-size line is too long")
                    break
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError("protocol", f"bad chunk size {buf[pos:eol][:40]!r}") from None
                pos = eol + 2
                if not size:
                    self.mode = "trailer"
                    continue
                stop = pos + size
                if stop + 2 <= end:
                    if buf[stop : stop + 2] != b"\r\n":
                        raise HttpError("protocol", "a chunk does not end with CRLF")
                    if self.stream_to is not None:
                        self.stream_to(ts, buf[pos:stop])
                    else:
                        self.body.extend(buf[pos:stop])
                    pos = stop + 2
                else:
                    self.need = size
                    self.mode = "data"
            elif mode == "data":
                stop = pos + self.need
                if stop + 2 > end:
                    break
                if buf[stop : stop + 2] != b"\r\n":
                    raise HttpError("protocol", "a chunk does not end with CRLF")
                self._sink(ts, buf[pos:stop])
                pos = stop + 2
                self.mode = "size"
            elif mode == "trailer":
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_LINE:
                        raise HttpError("protocol", "a trailer line is too long")
                    break
                line_empty = eol == pos
                pos = eol + 2
                if line_empty:
                    self.buf = b""
                    return True
            elif mode == "head":
                eoh = buf.find(b"\r\n\r\n", pos)
                if eoh < 0:
                    if end - pos > MAX_HEADER_BYTES:
                        raise HttpError("protocol", "the response head is too long")
                    break
                self._head(buf[pos:eoh])
                pos = eoh + 4
                if self.status == 200:
                    self.stream_to = self.on_data
                te = self.headers.get("transfer-encoding", "").lower()
                if "chunked" in te:
                    self.mode = "size"
                elif "content-length" in self.headers:
                    try:
                        self.remaining = int(self.headers["content-length"])
                    except ValueError:
                        raise HttpError("protocol", "a bad Content-Length") from None
                    self.mode = "length"
                    if self.remaining == 0:
                        self.buf = b""
                        return True
                else:
                    self.mode = "close"
            elif mode == "length":
                take = min(self.remaining, end - pos)
                if take:
                    self._sink(ts, buf[pos : pos + take])
                    pos += take
                    self.remaining -= take
                if self.remaining == 0:
                    self.buf = b""
                    return True
                break
            else:  # "close": the body runs until the server closes the connection
                if pos < end:
                    self._sink(ts, buf[pos:])
                pos = end
                break
        self.buf = buf[pos:] if pos < end else b""
        return False

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError("protocol", f"bad status line {lines[0][:80]!r}") from None
        headers = self.headers
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    def response(self) -> Response:
        return Response(self.status, self.headers, bytes(self.body))


class _Protocol(asyncio.Protocol):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        # One timestamp per read: every chunk in it arrived at the same moment.
        self.conn._data(time.perf_counter(), data)

    def eof_received(self) -> bool | None:
        self.conn._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._lost(exc)


class Connection:
    def __init__(self, target: Target, headers: dict[str, str] | None = None) -> None:
        self.target = target
        self.extra_headers = headers or {}
        self.transport: asyncio.Transport | None = None
        self._exchange: _Exchange | None = None
        self._head_cache: dict[tuple[str, str, int], bytes] = {}

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self.target.scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Protocol(self), self.target.host, self.target.port, ssl=context
            )
        except OSError as exc:
            raise HttpError(
                "connect", f"cannot connect to {self.target.host_header}: {exc}"
            ) from None
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Each SSE event is a small write; Nagle + delayed ACK would add 40 ms to some.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()

    # Called by _Protocol -------------------------------------------------------------------

    def _data(self, ts: float, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return  # bytes nobody asked for (a server talking out of turn): ignored
        try:
            complete = exchange.feed(ts, data)
        except HttpError as exc:
            self._exchange = None
            self.close()
            if not exchange.done.done():
                exchange.done.set_exception(exc)
            return
        if complete:
            self._exchange = None
            if exchange.headers.get("connection", "").lower() == "close":
                self.close()
            if not exchange.done.done():
                exchange.done.set_result(exchange.response())

    def _lost(self, exc: Exception | None) -> None:
        self.transport = None
        exchange, self._exchange = self._exchange, None
        if exchange is None or exchange.done.done():
            return
        if exchange.mode == "close":
            exchange.done.set_result(exchange.response())
        elif not exchange.got_bytes:
            exchange.done.set_exception(_Closed())
        else:
            exchange.done.set_exception(
                HttpError("protocol", f"the answer broke off: {exc or 'connection closed'}"[:200])
            )

    # ----------------------------------------------------------------------------------------

    def _head(self, method: str, path: str, length: int) -> bytes:
        key = (method, path, length)
        head = self._head_cache.get(key)
        if head is None:
            lines = [
                f"{method} {self.target.base_path}{path} HTTP/1.1",
                f"Host: {self.target.host_header}",
                "Accept: */*",
                "Content-Type: application/json",
                f"Content-Length: {length}",
            ]
            lines += [f"{k}: {v}" for k, v in self.extra_headers.items()]
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if len(self._head_cache) < 64:
                self._head_cache[key] = head
        return head

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
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            fresh = self.transport is None
            if fresh:
                await self._connect()
            transport = self.transport
            if transport is None or transport.is_closing():
                self.transport = None
                if fresh or attempt:
                    raise HttpError("protocol", "connection closed before the answer")
                continue
            done: asyncio.Future[Response] = loop.create_future()
            self._exchange = _Exchange(done, on_data)
            if on_sent is not None:
                on_sent(time.perf_counter())
            transport.write(self._head(method, path, len(body)) + body)
            try:
                return await done
            except _Closed:
                self.close()
                # A kept-alive socket the server closed meanwhile: retry once on a new one.
                if fresh or attempt:
                    raise HttpError("protocol", "connection closed before the answer") from None
            except BaseException:
                # Cancelled (a timeout) or broken: the socket is in an unknown state.
                self._exchange = None
                self.close()
                raise
        raise AssertionError("unreachable")


class _Closed(Exception):
    """The connection closed before any byte of the answer (retryable once)."""


class SSEParser:
    """Splits a byte stream into `data:` payloads; each keeps the timestamp of the bytes that
    completed it (an event split over two reads is timed by the second)."""

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bool:
        """Part of an event is waiting for the rest."""
        return bool(self._buffer)

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
