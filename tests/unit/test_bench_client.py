"""The bench client's response parser, its token fast path, and its keep-alive retry.

The parser runs inside ``data_received`` (bench/client.py), so it must give the same chunks
however the bytes are split into reads; the fast path (runner._is_plain_token) must count
exactly the chunks the full JSON decode counts as tokens.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from msmall import eventloop
from msmall.bench import client, runner
from msmall.bench.client import Connection, HttpError, Target

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunked(*pieces: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n\r\n"


def _parse(stream: bytes, split: int) -> tuple[list[bytes], client.Response, bool]:
    """Feed `stream` in reads of `split` bytes; the chunks handed over and the response."""
    loop = asyncio.new_event_loop()
    try:
        got: list[bytes] = []
        ex = client._Exchange(loop.create_future(), lambda ts, data: got.append(data))
        done = False
        for at in range(0, len(stream), split):
            assert not done, "bytes after the end of the response"
            done = ex.feed(1.0, stream[at : at + split])
        return got, ex.response(), done
    finally:
        loop.close()


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64, 10_000])
def test_chunked_body_parses_the_same_however_it_is_split(split: int) -> None:
    pieces = [b'data: {"a":1}\n\n', b"x" * 300, b"data: [DONE]\n\n"]
    got, response, done = _parse(HEAD + _chunked(*pieces), split)
    assert done and response.status == 200
    assert got == pieces
    assert response.headers["content-type"] == "text/event-stream"


def test_content_length_and_error_bodies_are_kept() -> None:
    body = b'{"error": "nope"}'
    raw = b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    got, response, done = _parse(raw, 5)
    assert done and response.status == 400 and response.body == body
    assert got == []  # only a 200 answer streams to on_data


def test_trailers_end_the_response() -> None:
    raw = HEAD + b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n"
    got, _, done = _parse(raw, 4)
    assert done and got == [b"abc"]


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"zz\r\nabc\r\n",  # not a hex size
        HEAD + b"3\r\nabcXY",  # no CRLF after the chunk
        b"HTTP/1.1 OK\r\n\r\n",  # no status code
    ],
)
def test_broken_framing_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(HttpError) as err:
        _parse(raw, 3)
    assert err.value.kind == "protocol"


def test_an_endless_head_is_refused() -> None:
    with pytest.raises(HttpError, match="too long"):
        _parse(b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 20_000, 4096)


# The token fast path ------------------------------------------------------------------------


def _full_decode_is_token(payload: bytes) -> bool:
    """The rule of vLLM's endpoint_request_func.py, as runner.run_request decodes it."""
    chunk = json.loads(payload)
    choices = chunk.get("choices")
    if not choices:
        return False
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return bool(content or delta.get("reasoning") or delta.get("tool_calls")) or (
        content == "" and "role" not in delta and not choices[0].get("finish_reason")
    )


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


PAYLOADS = [
    _chunk({"content": " fox"}),
    _chunk({"content": 'say "hi"'}),
    _chunk({"content": '"'}),
    _chunk({"content": ""}),
    _chunk({"content": "", "role": "assistant"}),
    _chunk({"role": "assistant", "content": "Hi"}),
    _chunk({"content": "end"}, finish="stop"),
    _chunk({"content": ""}, finish="length"),
    _chunk({"content": "x"}, usage={"prompt_tokens": 1, "completion_tokens": 2}),
    _chunk({"reasoning": "hmm"}),
    _chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
    _chunk({"content": 'mentions "tool_calls" in text'}),
    json.dumps({"choices": [], "usage": {"completion_tokens": 3}}).encode(),
    json.dumps({"error": {"message": "x"}}).encode(),
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_fast_path_never_counts_what_the_full_decode_would_not(payload: bytes) -> None:
    if runner._is_plain_token(payload):
        assert _full_decode_is_token(payload)
        # Nothing the full decode reads besides the token itself: no usage, no tool call.
        chunk = json.loads(payload)
        assert "usage" not in chunk and "error" not in chunk
        assert not chunk["choices"][0]["delta"].get("tool_calls")


def test_the_fast_path_takes_plain_content_chunks() -> None:
    assert runner._is_plain_token(_chunk({"content": " fox"}))
    assert runner._is_plain_token(_chunk({"content": 'say "hi"'}))
    assert not runner._is_plain_token(_chunk({"content": ""}))
    assert not runner._is_plain_token(_chunk({"role": "assistant", "content": "Hi"}))


# Keep-alive ---------------------------------------------------------------------------------


async def _server_closing_after_each_answer() -> tuple[asyncio.AbstractServer, list[int]]:
    """A server that answers one request per connection, then closes it (keep-alive lost)."""
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        served.append(1)
        writer.write(HEAD + _chunked(b"data: [DONE]\n\n"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, served


def test_a_kept_alive_socket_the_server_closed_is_replaced() -> None:
    async def run() -> tuple[int, int, list[int]]:
        server, served = await _server_closing_after_each_answer()
        port = server.sockets[0].getsockname()[1]
        conn = Connection(Target.from_url(f"http://127.0.0.1:{port}"))
        got: list[bytes] = []
        try:
            first = await asyncio.wait_for(
                conn.request("POST", "/x", b"{}", lambda ts, d: got.append(d)), 5
            )
            await asyncio.sleep(0.05)  # the server's close reaches us
            second = await asyncio.wait_for(
                conn.request("POST", "/x", b"{}", lambda ts, d: got.append(d)), 5
            )
        finally:
            conn.close()
            server.close()
            await server.wait_closed()
        assert got == [b"data: [DONE]\n\n"] * 2
        return first.status, second.status, served

    assert eventloop.run(run()) == (200, 200, [1, 1])


def test_a_refused_connection_is_a_connect_error(free_port: int) -> None:
    async def run() -> None:
        conn = Connection(Target.from_url(f"http://127.0.0.1:{free_port}"))
        await conn.request("GET", "/v1/models")

    with pytest.raises(HttpError) as err:
        eventloop.run(run())
    assert err.value.kind == "connect"


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSMALL_EVENT_LOOP", "asyncio")
    loop = eventloop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    monkeypatch.delenv("MSMALL_EVENT_LOOP")
    uvloop = pytest.importorskip("uvloop")
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


class _Replay:
    """A Connection stand-in that answers with the given SSE events, one chunk each."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def request(self, method, path, body=b"", on_data=None, on_sent=None):
        on_sent(0.0)
        for n, event in enumerate(self.events, 1):
            on_data(float(n), event)
        return client.Response(200)


@pytest.mark.parametrize("vision", [False, True])
def test_run_request_counts_the_tokens_the_full_rule_counts(vision: bool) -> None:
    from msmall.bench import workload

    events = [b"data: " + p + b"\n\n" for p in PAYLOADS if b'"error"' not in p]
    events.append(b"data: [DONE]\n\n")
    req = workload.BenchRequest(
        "vision" if vision else "chat", {}, expect_colour="red" if vision else None
    )
    result = asyncio.run(runner.run_request(_Replay(events), req))  # type: ignore[arg-type]
    expected = sum(_full_decode_is_token(p) for p in PAYLOADS if b'"error"' not in p)
    assert result.error is None, result.error_detail
    assert result.chunks == expected
    assert result.usage_tokens == 3  # the last usage chunk wins
    assert result.ttft == 1.0  # the first chunk, " fox", is a token


def test_one_chunk_per_read_takes_the_fast_path_and_parses_the_same() -> None:
    """The shape of a token stream: the head, then one whole chunk per read. The one-chunk
    path must hand over exactly what the general parser does, and leave every other shape
    (an extension, two chunks in a read, a size that does not match, the last chunk) to it."""
    pieces = [b'data: {"a":1}\n\n', b"y" * 300, b"z", b"data: [DONE]\n\n"]
    reads = [HEAD] + [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces[:2]]
    reads += [b"1;ext=1\r\nz\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(pieces[3]), pieces[3])]
    loop = asyncio.new_event_loop()
    try:
        got: list[bytes] = []
        ex = client._Exchange(loop.create_future(), lambda ts, data: got.append(data))
        done = [ex.feed(1.0, r) for r in reads]
        assert got == pieces and done == [False] * 4 + [True]
        # a read whose size line promises more than it holds waits for the rest
        got.clear()
        ex = client._Exchange(loop.create_future(), lambda ts, data: got.append(data))
        ex.feed(1.0, HEAD)
        assert ex.feed(1.0, b"5\r\nabc") is False and got == []
        assert ex.feed(1.0, b"de\r\n") is False and got == [b"abcde"]
        with pytest.raises(HttpError):  # a size line that is not hex, alone in its read
            ex.feed(1.0, b"zz\r\nabc\r\n")
    finally:
        loop.close()


def test_a_level_runs_with_the_heap_frozen_and_fewer_collections() -> None:
    import gc

    seen: list[tuple[int, int]] = []

    class Probe(runner.Runner):
        async def closed_loop(self, spec, progress=None):  # type: ignore[override]
            seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
            return "ok"

    before = gc.get_threshold()
    probe = Probe(Target.from_url("http://127.0.0.1:1"), None)  # type: ignore[arg-type]
    assert eventloop.run(probe.run_level(runner.LevelSpec(concurrency=1))) == "ok"
    frozen, young = seen[0]
    assert frozen > 1000 and young == runner.GC_YOUNG_THRESHOLD
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # undone after
