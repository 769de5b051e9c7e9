"""What the simulator itself adds to a request, at zero injected latency.

Starts ``python -m msmall.simulator --quiet`` as a subprocess pinned to one CPU core (where the
OS allows it), then measures:

* per-request latency of the real ``openai`` client on one kept-alive connection
  (``client.chat.completions.create``, non-streamed; target p50 < 5 ms);
* streamed requests per second with C concurrent kept-alive connections (a small raw HTTP/1.1
  client on asyncio, so the client is not what is measured; target >= 500 req/s on one core).

    python benchmarks/sim_overhead.py [--flavor vllm|ollama] [-n 300] [--seconds 5] [-c 16]

``--timing`` instead measures injected latency the way `vllm bench serve` does: the simulator
runs with --ttft 0.2 --tpot 0.02; N streams at once (1, 16, 64) each ask /v1/completions for
40 tokens with ignore_eos; TTFT = first token - request sent, TPOT = (last - first) / 39;
reported as the median over the streams and the error against the injected values (target:
within 1%).

``--json`` prints the raw numbers. Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time

import httpx

from msmall.simulator.harness import EngineProcess, simulator_argv

MODEL = {"vllm": "mistral-small-3.1", "ollama": "mistral-small3.1:24b-instruct-2503-q4_K_M"}
P50_TARGET_MS = 5.0
STREAM_TARGET_RPS = 500.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(base + "/v1/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"the simulator at {base} did not answer within {timeout} s")


def openai_latency(base: str, model: str, count: int) -> list[float]:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Reply with 'OK'."}]
    for _ in range(20):  # warm-up: connection, imports, first-request paths
        client.chat.completions.create(model=model, messages=messages)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.chat.completions.create(model=model, messages=messages)
        samples.append((time.perf_counter() - started) * 1000)
    client.close()
    return samples


async def _stream_worker(port: int, request: bytes, stop_at: float, done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            await writer.drain()
            # A chunked SSE/NDJSON response ends with the zero-length chunk.
            await reader.readuntil(b"\r\n0\r\n\r\n")
            done[0] += 1
    finally:
        writer.close()


async def streamed_rps(port: int, flavor: str, model: str, seconds: float, conc: int) -> float:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Reply with 'OK'."}],
            "stream": True,
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = [0]
    await asyncio.gather(
        *(_stream_worker(port, request, time.monotonic() + 0.5, [0]) for _ in range(conc))
    )  # warm-up
    started = time.monotonic()
    await asyncio.gather(
        *(_stream_worker(port, request, started + seconds, done) for _ in range(conc))
    )
    return done[0] / (time.monotonic() - started)


async def _timed_stream(port: int, max_tokens: int) -> tuple[float, float, int]:
    body = json.dumps(
        {"model": MODEL["vllm"], "prompt": "timing", "max_tokens": max_tokens,
         "ignore_eos": True, "stream": True}
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stamps: list[float] = []
    try:
        sent = time.monotonic()
        writer.write(head + body)
        await writer.drain()
        await reader.readline()
        while True:
            event = await reader.readuntil(b"\n\n")
            if b"data: [DONE]" in event:
                break
            if b"data: {" in event and b'"text":""' not in event:
                stamps.append(time.monotonic())
    finally:
        writer.close()
    return stamps[0] - sent, (stamps[-1] - stamps[0]) / (len(stamps) - 1), len(stamps)


def timing(args: argparse.Namespace) -> int:
    ttft, tpot, tokens = 0.2, 0.02, 40
    port = free_port()
    argv = simulator_argv(
        "--port", str(port), "--quiet", "--ttft", str(ttft), "--tpot", str(tpot),
        "--max-num-seqs", "256",
    )  # fmt: skip
    rows = []
    with EngineProcess(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}) as engine:
        # Not pinned: this measures the accuracy of the injected latency, not one core's speed.
        assert engine.proc is not None
        wait_ready(f"http://127.0.0.1:{port}")

        async def run(conc: int) -> list[tuple[float, float, int]]:
            await _timed_stream(port, 2)
            return await asyncio.gather(*(_timed_stream(port, tokens) for _ in range(conc)))

        for conc in (1, 16, 64):
            results = asyncio.run(run(conc))
            assert all(n == tokens for _, _, n in results)
            m_ttft = statistics.median(r[0] for r in results)
            m_tpot = statistics.median(r[1] for r in results)
            rows.append(
                {
                    "concurrency": conc,
                    "ttft_s": round(m_ttft, 4),
                    "ttft_error_pct": round((m_ttft - ttft) / ttft * 100, 2),
                    "tpot_s": round(m_tpot, 5),
                    "tpot_error_pct": round((m_tpot - tpot) / tpot * 100, 2),
                }
            )
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"injected ttft {ttft} s, tpot {tpot} s, {tokens} tokens per request")
        print("| streams | median TTFT (s) | error | median TPOT (s) | error |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['concurrency']} | {r['ttft_s']:.4f} | {r['ttft_error_pct']:+.2f}% "
                f"| {r['tpot_s']:.5f} | {r['tpot_error_pct']:+.2f}% |"
            )
    ok = all(abs(r["ttft_error_pct"]) < 1 and abs(r["tpot_error_pct"]) < 1 for r in rows)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=("vllm", "ollama"), default="vllm")
    parser.add_argument("-n", type=int, default=300, help="openai requests timed")
    parser.add_argument("--seconds", type=float, default=5.0, help="streamed load duration")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--core", type=int, default=0, help="CPU core for the simulator")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timing", action="store_true", help="measure TTFT/TPOT instead")
    args = parser.parse_args()
    if args.timing:
        return timing(args)

    port = free_port()
    argv = simulator_argv("--flavor", args.flavor, "--port", str(port), "--quiet")
    if args.flavor == "ollama":
        argv.append("--pulled")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OLLAMA_HOST", None)
    with EngineProcess(argv, env) as engine:
        pinned = False
        if hasattr(os, "sched_setaffinity") and engine.proc is not None:
            try:
                os.sched_setaffinity(engine.proc.pid, {args.core})
                pinned = True
            except OSError:
                pass
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        model = MODEL[args.flavor]
        lat = sorted(openai_latency(base, model, args.n))
        rps = asyncio.run(streamed_rps(port, args.flavor, model, args.seconds, args.concurrency))

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]

    result = {
        "flavor": args.flavor,
        "pinned_to_one_core": pinned,
        "openai_requests": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p95_ms": round(pct(0.95), 2),
        "max_ms": round(lat[-1], 2),
        "streamed_concurrency": args.concurrency,
        "streamed_rps": round(rps, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"flavor {args.flavor}, simulator pinned to one core: {pinned}, python "
            f"{sys.version.split()[0]}"
        )
        print(
            f"| flavor | openai p50 (ms) | p95 (ms) | max (ms) "
            f"| streamed req/s (c={args.concurrency}) |"
        )
        print("| --- | ---: | ---: | ---: | ---: |")
        print(
            f"| {args.flavor} | {result['p50_ms']:.2f} | {result['p95_ms']:.2f} "
            f"| {result['max_ms']:.2f} | {result['streamed_rps']:.0f} |"
        )
    ok = result["p50_ms"] < P50_TARGET_MS and rps >= STREAM_TARGET_RPS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
