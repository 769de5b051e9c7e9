"""The simulator under `vllm bench serve`'s own request shapes, replayed as raw HTTP.

The bytes below are what vLLM 0.33.0's benchmark client sends (captured from
vllm/benchmarks/lib/endpoint_request_func.py async_request_openai_completions and
async_request_openai_chat_completions over aiohttp 3.14: header order, `x-request-id` from
`--request-id-prefix`, JSON spacing, `"logprobs": null`, `"repetition_penalty": 1.0`), two
requests on one kept-alive connection as its TCPConnector reuses them. The stream is then read
with that client's own rules, so the test fails where `vllm bench serve` would miscount:
- completions: every chunk with non-empty `choices` is a token; the usage chunk must have
  `choices: []` (else it is a token too);
- chat: a chunk is a token when its delta has content/reasoning/tool_calls, or `content: ""`
  without `role` (`_choice_has_streamed_output`); the role-only opening chunk is not;
- output tokens come from the last `usage` (`completion_tokens`), and TPOT divides by it minus
  one, so the token chunks must be exactly that many.
vllm itself is not needed: benchmarks/bench_vs_peers.py runs the real client.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from msmall.simulator.harness import start_simulator

MODEL = "mistral-small-3.1"
PROMPT = "baba babe babi babo babu bada bade badi bado badu bafa bafe bafi bafo bafu baga"


def _request(path: str, body: bytes, port: int, request_id: str, chat: bool) -> bytes:
    # aiohttp puts an explicit Content-Type (chat passes one) before its own headers, and
    # adds Content-Type after Content-Length when it comes from json= (completions).
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if chat:
        lines.append("Content-Type: application/json")
    lines += [
        f"x-request-id: {request_id}",
        "Accept: */*",
        "Accept-Encoding: gzip, deflate",
        "User-Agent: Python/3.11 aiohttp/3.14.5",
        f"Content-Length: {len(body)}",
    ]
    if not chat:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def completions_body(output_len: int) -> bytes:
    # json.dumps default separators, key order as in async_request_openai_completions.
    return json.dumps(
        {
            "model": MODEL,
            "prompt": PROMPT,
            "repetition_penalty": 1.0,
            "max_tokens": output_len,
            "logprobs": None,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    ).encode()


def chat_body(output_len: int) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
            "max_completion_tokens": output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    ).encode()


class RawConnection:
    """One kept-alive HTTP/1.1 connection; reads a chunked response to its end."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("response not complete in time")
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exchange(self, raw: bytes, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        self.sock.sendall(raw)
        status = int(self._line(deadline).split()[1])
        headers: dict[str, str] = {}
        while line := self._line(deadline):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding") == "chunked":
            while size := int(self._line(deadline), 16):
                while len(self.buf) < size + 2:
                    self._fill(deadline)
                body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
            self._line(deadline)  # the blank line after the last chunk
        else:
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                self._fill(deadline)
            body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body


def sse_payloads(body: bytes) -> list[str]:
    # StreamedResponseHandler.add_chunk: messages split on a blank line, "data: " removed.
    out = []
    for message in body.decode().split("\n\n"):
        message = message.strip()
        if message and not message.startswith(":"):
            out.append(message.removeprefix("data: "))
    return out


def streamed_output(choice: dict) -> bool:
    """endpoint_request_func.py _choice_has_streamed_output, as vLLM 0.33 has it."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    if (
        delta.get("content")
        or delta.get("reasoning")
        or delta.get("tool_calls")
        or delta.get("function_call")
    ):
        return True
    return delta.get("content") == "" and "role" not in delta


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    engine, port = start_simulator("--served-model-name", MODEL)
    try:
        yield port
    finally:
        engine.stop()


@pytest.mark.parametrize("output_len", [1, 2, 40])
def test_completions_stream_counts_as_vllm_bench_counts(port: int, output_len: int) -> None:
    conn = RawConnection(port)
    try:
        for n in range(2):  # the second request rides the kept-alive connection
            rid = f"bench-a49b6715-{n}"
            raw = _request("/v1/completions", completions_body(output_len), port, rid, False)
            status, headers, body = conn.exchange(raw)
            assert status == 200
            assert headers["content-type"].startswith("text/event-stream")
            payloads = sse_payloads(body)
            assert payloads[-1] == "[DONE]"
            chunks = [json.loads(p) for p in payloads[:-1]]
            tokens = [c for c in chunks if c.get("choices")]
            usages = [c["usage"] for c in chunks if not c.get("choices") and c.get("usage")]
            assert len(usages) == 1 and usages[0]["completion_tokens"] == output_len
            assert usages[0]["prompt_tokens"] == len(PROMPT.split())
            assert len(tokens) == output_len
            assert all(c["choices"][0]["text"] for c in tokens)
            assert tokens[-1]["choices"][0]["finish_reason"] == "length"
            assert all(c["choices"][0]["finish_reason"] is None for c in tokens[:-1])
            # serve/engine/serving.py _base_request_id: the X-Request-Id header names it.
            assert {c["id"] for c in chunks} == {f"cmpl-{rid}"}
    finally:
        conn.close()


@pytest.mark.parametrize("output_len", [1, 2, 40])
def test_chat_stream_counts_as_vllm_bench_counts(port: int, output_len: int) -> None:
    conn = RawConnection(port)
    try:
        for n in range(2):
            rid = f"bench-a49b6715-{n}"
            raw = _request("/v1/chat/completions", chat_body(output_len), port, rid, True)
            status, _, body = conn.exchange(raw)
            assert status == 200
            payloads = sse_payloads(body)
            assert payloads[-1] == "[DONE]"
            chunks = [json.loads(p) for p in payloads[:-1]]
            tokens = [c for c in chunks if c.get("choices") and streamed_output(c["choices"][0])]
            usage = [c["usage"] for c in chunks if not c.get("choices") and c.get("usage")]
            assert usage and usage[-1]["completion_tokens"] == output_len
            # One token chunk per token: an empty finish chunk after the last token would be
            # counted as one more (an ITL of ~0 per request, and TPOT's end moved).
            assert len(tokens) == output_len
            assert tokens[-1]["choices"][0]["finish_reason"] == "length"
            assert all(c["choices"][0]["finish_reason"] is None for c in tokens[:-1])
            # The role-only opening chunk comes first and is not a token.
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert {c["id"] for c in chunks} == {f"chatcmpl-{rid}"}
    finally:
        conn.close()


def test_tokenize_probe_agrees_with_a_word_level_tokenizer(port: int) -> None:
    """serve.py _align_prompts_to_server_tokenizer posts the first random prompt to /tokenize
    (add_special_tokens false) and re-aligns every prompt when the count differs from its own;
    benchmarks/sim_tokenizer.py's word-level tokenizer counts one token per word, as here."""
    conn = RawConnection(port)
    try:
        body = json.dumps({"model": MODEL, "prompt": PROMPT, "add_special_tokens": False})
        raw = _request("/tokenize", body.encode(), port, "probe", True)
        status, _, reply = conn.exchange(raw)
        assert status == 200
        tokens = json.loads(reply)["tokens"]
        assert len(tokens) == len(PROMPT.split())
        body = json.dumps({"model": MODEL, "tokens": tokens[:5]})
        status, _, reply = conn.exchange(_request("/detokenize", body.encode(), port, "d", True))
        assert status == 200
        assert json.loads(reply)["prompt"] == " ".join(PROMPT.split()[:5])
        # get_first_model_from_server (no --model given) reads data[0]["id"] and ["root"].
        status, _, reply = conn.exchange(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n"
        )
        assert status == 200
        first = json.loads(reply)["data"][0]
        assert first["id"] == MODEL and first["root"]
    finally:
        conn.close()
