"""How the simulator frames a stream's events into HTTP chunks (one write each).

A load test of 64 equal streams brings 64 first tokens, and later 64 stream ends, at the same
instant; each write costs the simulator ~60-80 us here, so the number of writes per stream
shows in TTFT. vLLM sends the role chunk right before the first token's chunk, and usage and
[DONE] right after the last one; the simulator sends each such pair as one HTTP chunk. The
events and their order are unchanged (test_sim_vllm_bench.py counts them as vLLM's client does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from msmall.simulator.harness import start_simulator
from test_sim_vllm_bench import RawConnection, _request, chat_body, sse_payloads


class ChunkedConnection(RawConnection):
    def chunks(self, raw: bytes, timeout: float = 20.0) -> list[bytes]:
        """Send `raw`; the body of the chunked answer, one item per HTTP chunk."""
        deadline = time.monotonic() + timeout
        self.sock.sendall(raw)
        assert b" 200 " in self._line(deadline) + b" "
        while self._line(deadline):
            pass
        out = []
        while size := int(self._line(deadline), 16):
            while len(self.buf) < size + 2:
                self._fill(deadline)
            out.append(self.buf[:size])
            self.buf = self.buf[size + 2 :]
        self._line(deadline)
        return out


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    engine, port = start_simulator("--served-model-name", "mistral-small-3.1")
    try:
        yield port
    finally:
        engine.stop()


@pytest.mark.parametrize("output_len", [1, 3])
def test_role_rides_with_the_first_token_and_usage_with_done(port: int, output_len: int) -> None:
    conn = ChunkedConnection(port)
    try:
        raw = _request("/v1/chat/completions", chat_body(output_len), port, "w-1", chat=True)
        chunks = conn.chunks(raw)
    finally:
        conn.close()
    events = [sse_payloads(chunk) for chunk in chunks]
    first = [json.loads(e) for e in events[0]]
    # role chunk + first content token in one HTTP chunk (two before)
    assert [c["choices"][0]["delta"].get("role") for c in first] == ["assistant", None]
    assert first[1]["choices"][0]["delta"]["content"]
    # usage + [DONE] in the last one (two before); every chunk between is one token
    assert events[-1][1:] == ["[DONE]"] and json.loads(events[-1][0])["choices"] == []
    assert json.loads(events[-1][0])["usage"]["completion_tokens"] == output_len
    assert len(chunks) == output_len + 1
    assert all(len(e) == 1 for e in events[1:-1])
