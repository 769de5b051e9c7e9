"""Token timing and the load model, measured from the client as `vllm bench serve` measures it.

TTFT = first streamed token - request sent; TPOT = (last token - first token) / (tokens - 1)
(vllm/benchmarks/lib/endpoint_request_func.py async_request_openai_completions, and
benchmarks/serve.py calculate_metrics). The simulator runs as a subprocess so that the
client's event loop does not share its GIL.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import http_get
from msmall.simulator.harness import EngineProcess
from test_sim_clients import MODEL, start_sim

# Timing tests run one after another in one xdist worker: two of them at once would each
# measure the other's load (tests/conftest.py groups the Docker tests the same way).
pytestmark = pytest.mark.xdist_group("timing")

TTFT, TPOT, TOKENS = 0.2, 0.02, 40


async def _one(port: int, max_tokens: int) -> tuple[float, float, int]:
    """One streamed /v1/completions request on its own connection, with a minimal HTTP/1.1
    client (the client's own cost must not show up in a 1% budget on a busy 2-core machine)."""
    body = json.dumps(
        {"model": MODEL, "prompt": "timing", "max_tokens": max_tokens, "ignore_eos": True,
         "stream": True}
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        stamps: list[float] = []
        sent = time.monotonic()
        writer.write(head + body)
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        while True:
            event = await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout=30)
            if b"data: [DONE]" in event:
                break
            if b"data: {" in event and b'"text":""' not in event:
                stamps.append(time.monotonic())
    finally:
        writer.close()
    ttft = stamps[0] - sent
    tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return ttft, tpot, len(stamps)


async def _measure(port: int, concurrency: int, max_tokens: int = TOKENS) -> list[tuple]:
    await _one(port, 2)  # warm-up: first-request code paths
    return await asyncio.gather(*(_one(port, max_tokens) for _ in range(concurrency)))


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EngineProcess, str]]:
    engine, port = start_sim(
        tmp_path_factory.mktemp("home"),
        "--ttft", str(TTFT), "--tpot", str(TPOT), "--max-num-seqs", "64",
        # An access line per request is CPU for both processes (the log reader is a thread
        # of this one), as vLLM's own flag says for load tests.
        "--disable-uvicorn-access-log",
    )  # fmt: skip
    try:
        yield engine, port
    finally:
        engine.stop()


def _histogram(port: int, name: str) -> tuple[float, float]:
    text = http_get(f"http://127.0.0.1:{port}/metrics").text
    return _gauge(text, name + "_sum"), _gauge(text, name + "_count")


@pytest.mark.parametrize("concurrency", [1, 16, 64])
def test_ttft_and_tpot_match_the_injected_values(timed, concurrency: int) -> None:
    _, port = timed
    before = _histogram(port, "vllm:time_to_first_token_seconds")
    results = asyncio.run(_measure(port, concurrency))
    after = _histogram(port, "vllm:time_to_first_token_seconds")
    assert all(n == TOKENS for _, _, n in results), "ignore_eos + max_tokens: exact length"
    ttft = statistics.median(r[0] for r in results)
    tpot = statistics.median(r[1] for r in results)
    # The schedule itself is exact (tests/unit/test_sim_engine.py checks the deadlines). The
    # simulator's own TTFT (from the request's bytes arriving to its first token:
    # vllm:time_to_first_token_seconds) and the client's TPOT (a difference over 39 tokens)
    # only see the event loop's wake-up lateness. On this project's shared 2-core machine at
    # load 4-8 they stayed within 1-3% at 1 and 16 streams and within 5-16% at 64; the bounds
    # hold there and still catch the old per-token sleep, which compounded every late wake-up.
    # Beside a CPU hog with three other xdist workers (issue 14's check) the simulator's TTFT
    # at one stream read +6%: 10% there, still far from a queued request (+100%).
    tolerance = 0.10 if concurrency < 64 else 0.25
    assert abs(tpot - TPOT) / TPOT < tolerance, (tpot, results)
    server_ttft = (after[0] - before[0]) / (after[1] - before[1])
    assert abs(server_ttft - TTFT) / TTFT < tolerance, server_ttft
    # The client's TTFT also holds the OS scheduling two busy processes (measured: +1-16 ms
    # at 1 and 16 streams, up to +45 ms at 64 under load): only "not queued, not skipped" is
    # asserted here; benchmarks/sim_overhead.py --timing reports the exact figures. The
    # simulator asks its loop to wake up to 1.5 ms early (engine.sleep_until: the loop's timers
    # are that late on average), so a token may leave that much before its deadline.
    assert TTFT - 0.002 <= ttft < TTFT + 0.1, (ttft, results)


def test_over_max_num_seqs_requests_wait_and_metrics_show_it(tmp_path: Path) -> None:
    engine, port = start_sim(
        tmp_path, "--ttft", "0.1", "--tpot", "0.01", "--max-num-seqs", "2", "--batch-slope", "0"
    )
    base = f"http://127.0.0.1:{port}"

    async def run() -> tuple[list, str]:
        async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as c:
            await _one(port, 2)  # warm-up
            tasks = [asyncio.create_task(_one(port, 20)) for _ in range(4)]
            metrics = ""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                metrics = (await c.get("/metrics")).text
                if (
                    'vllm:num_requests_waiting{engine="0"' in metrics
                    and _gauge(metrics, "vllm:num_requests_waiting") == 2.0
                ):
                    break
                await asyncio.sleep(0.01)
            return await asyncio.gather(*tasks), metrics

    try:
        results, during = asyncio.run(run())
        after = http_get(base + "/metrics").text
    finally:
        engine.stop()
    assert _gauge(during, "vllm:num_requests_running") == 2.0
    assert _gauge(during, "vllm:num_requests_waiting") == 2.0
    assert _gauge(during, "vllm:kv_cache_usage_perc") > 0
    ttfts = sorted(r[0] for r in results)
    # Two run at once; the other two wait for a whole request (0.1 + 19 * 0.01 s) first.
    assert ttfts[1] < 0.15 and ttfts[2] > 0.35, ttfts
    assert _gauge(after, "vllm:num_requests_running") == 0.0
    assert 'vllm:time_to_first_token_seconds_count{engine="0"' in after
    assert _gauge(after, "vllm:request_queue_time_seconds_count") == 5.0


def test_tpot_grows_above_the_batch_knee(tmp_path: Path) -> None:
    engine, port = start_sim(
        tmp_path, "--ttft", "0.05", "--tpot", "0.01", "--batch-knee", "2", "--batch-slope", "1"
    )
    try:
        results = asyncio.run(_measure(port, 4, 30))
    finally:
        engine.stop()
    # 4 running, knee 2, slope 1: tpot * (1 + 1 * (4 - 2) / 2) = 2 * tpot.
    tpot = statistics.median(r[1] for r in results)
    assert abs(tpot - 0.02) / 0.02 < 0.05, results


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and "le=" not in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_client_that_goes_away_frees_its_place_at_once(tmp_path: Path) -> None:
    """vLLM aborts a request whose client disconnected; the simulator's TokenStream (no anyio
    task group per response, simulator/streaming.py) must still notice and end the sequence."""
    engine, port = start_sim(tmp_path, "--ttft", "0.01", "--tpot", "0.05")
    base = f"http://127.0.0.1:{port}"

    async def run() -> tuple[float, float]:
        body = json.dumps(
            {"model": MODEL, "prompt": "x", "max_tokens": 400, "ignore_eos": True, "stream": True}
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"data: {"), 10)  # streaming has begun
        async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as c:
            running = _gauge((await c.get("/metrics")).text, "vllm:num_requests_running")
            writer.close()  # 400 tokens at 0.05 s would take 20 s
            deadline = time.monotonic() + 5
            after = running
            while time.monotonic() < deadline and after:
                await asyncio.sleep(0.02)
                after = _gauge((await c.get("/metrics")).text, "vllm:num_requests_running")
        return running, after

    try:
        running, after = asyncio.run(run())
    finally:
        engine.stop()
    assert running == 1.0
    assert after == 0.0
