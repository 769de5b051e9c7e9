"""The HTTP client under every probe and smoke check: what it sends, what it refuses to read, and
the URL it shows.

A small real server on 127.0.0.1 (port 0) records the request headers and answers as a hostile
or unusual server would: a gzip body sent although msmall asked for none, a body one byte over
the limit, a stream that never ends.
"""

from __future__ import annotations

import gzip
import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from msmall import health


class _Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.headers: list[dict[str, str]] = []
        self.body = b"{}"
        self.gzip = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                data = gzip.compress(server.body) if server.gzip else server.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if server.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(timeout=10)
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def test_asks_for_no_compression_and_sends_the_key_only_when_given(server: _Server) -> None:
    with health._client(server.url, "k3y-value", 2.0) as client:
        client.get("/v1/models")
    with health._client(server.url, None, 2.0) as client:
        client.get("/v1/models")
    keyed, plain = server.headers
    assert keyed["accept-encoding"] == "identity"
    assert keyed["authorization"] == "Bearer k3y-value"
    assert plain["accept-encoding"] == "identity"
    assert "authorization" not in plain


def test_a_gzip_answer_sent_anyway_is_decoded_once(server: _Server) -> None:
    """httpx decodes the gzip while msmall reads it under the size cap; the answer msmall hands on
    must not claim gzip again (it would be decoded a second time and fail)."""
    server.gzip = True
    server.body = json.dumps({"data": [{"id": "m"}]}).encode()
    with health._client(server.url, None, 2.0) as client:
        resp = client.get("/v1/models")
    assert resp.json() == {"data": [{"id": "m"}]}
    assert "content-encoding" not in {k.lower() for k in resp.headers}


def test_body_cap_is_exactly_four_mib(server: _Server) -> None:
    """4 MiB = 4 x 1024 x 1024 = 4,194,304 bytes is read; one byte more is refused, and the
    message names the cap in KiB (4,096)."""
    server.body = b"x" * (4 * 1024 * 1024)
    with health._client(server.url, None, 2.0) as client:
        assert len(client.get("/").content) == 4194304
    server.body = b"x" * (4 * 1024 * 1024 + 1)
    with health._client(server.url, None, 2.0) as client, pytest.raises(ValueError) as info:
        client.get("/")
    assert str(info.value) == "the answer is larger than 4096 KiB"


def test_a_gzip_bomb_is_capped_after_decoding(server: _Server) -> None:
    """8 MiB of zeros compress to a few KiB; decoded they pass the 4 MiB cap: refused."""
    server.gzip = True
    server.body = b"0" * (8 * 1024 * 1024)
    with health._client(server.url, None, 2.0) as client, pytest.raises(ValueError):
        client.get("/")


@pytest.fixture
def verify_loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every CA bundle an SSL context loads (httpx's default loads certifi's, ~40 ms of CPU)."""
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    return loads


def test_a_plain_http_client_loads_no_ca_bundle(server: _Server, verify_loads: list) -> None:
    """A `msmall serve` made seven clients, all for http://127.0.0.1, and each parsed certifi's
    bundle: about 0.25 s of CPU per serve for TLS it never spoke."""
    for _ in range(3):
        with health._client(server.url, None, 2.0) as client:
            assert client.get("/v1/models").status_code == 200
    assert verify_loads == []


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes the self-signed certificate")
    folder: Path = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_an_https_client_still_verifies_the_certificate(
    self_signed: ssl.SSLContext, verify_loads: list
) -> None:
    """The saving is for http:// only: an https:// endpoint with a certificate no CA signed is
    refused, and the verifying context is built once per process, not per client."""
    server = _Server(tls=self_signed)
    try:
        for _ in range(2):
            refused = pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED")
            with health._client(server.url, None, 2.0) as client, refused:
                client.get("/v1/models")
        assert server.headers == []
    finally:
        server.close()
    assert len(verify_loads) <= 1


@pytest.mark.parametrize(
    ("timeout", "deadline"),
    [(2.0, 5.0), (10.0, 10.0), (10.5, 120.0), (120.0, 120.0), (300.0, 300.0)],
)
def test_total_deadline_per_request(timeout: float, deadline: float) -> None:
    """Probes (per-read timeout up to 10 s = 5 x the 2 s probe timeout) get a 5 s total
    deadline, or their own timeout if longer; smoke checks (longer timeouts) get 120 s, or
    theirs if longer."""
    with health._client("http://127.0.0.1:9", None, timeout) as client:
        assert client.deadline_s == deadline


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://user:pass@example.com:8000/v1?q=1#f", "http://example.com:8000/v1?q=1#f"),
        ("https://user@example.com/v1", "https://example.com/v1"),
        ("http://:pass@example.com/v1", "http://example.com/v1"),
        ("http://u:p@[::1]:8000/v1", "http://[::1]:8000/v1"),
        ("http://u:p@example.com/v1", "http://example.com/v1"),
        ("http://[::1/v1", "<invalid URL>"),
    ],
)
def test_public_url_never_shows_credentials(url: str, shown: str) -> None:
    assert health.public_url(url) == shown


# ---------------------------------------------------------------------------------------------
# The stream check's reading of server-sent events


def _stream(chunks: list[bytes]):
    from helpers import ScriptedServer

    with ScriptedServer() as s:
        s.routes[("POST", "/v1/chat/completions")] = (200, chunks)
        with health._client(s.url, None, 30.0) as client:
            return health.check_stream(client, "m")


def test_stream_of_exactly_the_size_cap_is_read() -> None:
    """4,194,304 bytes in all (SSE comment lines as padding, one text event, `data: [DONE]` as
    the last line) is at the cap, not over it: the check passes. One byte more is refused."""
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "1"}}]}\n\n'
    done = b"data: [DONE]\n"
    pad = 4 * 1024 * 1024 - len(event) - len(done)
    # 1 KiB comment lines, the last one shorter.
    line = b":" + b"x" * 1022 + b"\n"
    rest = pad % len(line)
    padding = line * (pad // len(line)) + (b":" + b"x" * (rest - 2) + b"\n" if rest else b"")
    body = padding + event + done
    assert len(body) == 4194304
    result = _stream([body])
    assert (result.ok, result.detail.split(",")[0]) == (True, "1 chunks")
    over = _stream([b":\n" + body[1:] + b"\n"])  # 4,194,305 bytes
    assert not over.ok
    assert over.detail == "the stream sent too much data"


def test_sse_data_without_a_space_is_read() -> None:
    """The SSE spec makes the space after `data:` optional (a proxy may drop it)."""
    result = _stream([b'data:{"choices": [{"index": 0, "delta": {"content": "1"}}]}\n\n',
                      b"data:[DONE]\n\n"])  # fmt: skip
    assert result.ok, result.detail


def test_stream_of_exactly_the_event_cap_is_read() -> None:
    """2,048 `data:` events (2,047 text chunks and [DONE]) is the cap, not over it; 2,049 is
    refused."""
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "1"}}]}\n\n'
    result = _stream([event * 2047 + b"data: [DONE]\n\n"])
    assert (result.ok, result.detail.split(",")[0]) == (True, "2047 chunks")
    over = _stream([event * 2048 + b"data: [DONE]\n\n"])
    assert (over.ok, over.detail) == (False, "the stream sent more than 2048 events")


def test_stream_with_bytes_that_are_not_utf8_is_still_read() -> None:
    """A comment line with invalid UTF-8 (a proxy's banner, say) must not break the check."""
    result = _stream([b": caf\xe9 \xff\n\n", b'data: {"choices": [{"index": 0, "delta": '
                      b'{"content": "1"}}]}\n\n', b"data: [DONE]\n\n"])  # fmt: skip
    assert result.ok, result.detail


def test_first_model_waits_at_most_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`msmall check URL` asks /v1/models once: a 10 s per-read timeout and a 10 s total deadline
    (a probe's, never the smoke checks' 120 s)."""
    from helpers import ScriptedServer, models_body

    made: list[health._Bounded] = []
    real = health._client

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(health, "_client", spy)
    with ScriptedServer() as s:
        s.routes[("GET", "/v1/models")] = (200, models_body("served-name"))
        assert health.first_model(s.url) == "served-name"
    assert [b.deadline_s for b in made] == [10.0]
    assert made[0]._client.timeout.read == 10.0


def test_skipped_checks_in_the_report() -> None:
    """tools/vision off: those checks are reported as skipped, with no time spent (0 ms)."""
    from helpers import ScriptedServer

    with ScriptedServer() as s:
        report = health.smoke(s.url, "m", tools=False, vision=False, timeout_s=5.0)
    skipped = [c.to_dict() for c in report.checks if c.skipped]
    assert skipped == [
        {"name": n, "ok": False, "latency_ms": 0, "detail": "not requested", "fix": None,
         "skipped": True}
        for n in ("tools", "vision")
    ]  # fmt: skip
