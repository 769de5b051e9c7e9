"""msmall bench against its peers, on the same simulator (a script, not CI).

    python benchmarks/bench_vs_peers.py accuracy  [--vllm-venv DIR]   # TTFT/TPOT error at 1/16/64
    python benchmarks/bench_vs_peers.py streams   [-c 256]            # 256 streams at 50 tok/s
    python benchmarks/bench_vs_peers.py stacks    [-c 256]            # client HTTP stacks compared

accuracy: the simulator runs with --ttft 0.2 --tpot 0.02 (batch slope 0: TPOT flat at any
batch); `msmall bench` measures chat requests of 40 tokens (ignore_eos) at each level; the error
of its TTFT/TPOT means against the injected values and its CPU per 1,000 streamed tokens are
printed. With --vllm-venv (a venv where `vllm bench serve` runs), vLLM's client does the same
(`--dataset-name random --random-output-len 40 --ignore-eos --max-concurrency C`).

streams: C concurrent streams of 100 tokens at 0.02 s each (50 tokens/s per stream) for
--seconds; prints the client's loop lag p99 and CPU (target: lag p99 < 5 ms).

stacks: the same load read by three clients — msmall's asyncio-streams client, httpx.AsyncClient
and aiohttp (when installed) — each timing tokens the same way; CPU seconds per 1,000 tokens and
loop lag p99 decide the stack.

--json prints the raw rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from msmall.bench import metrics, runner
from msmall.bench.session import BenchOptions, run_bench
from msmall.simulator.harness import start_simulator

TTFT, TPOT = 0.2, 0.02


@contextmanager
def _stopped_after(engine):
    """`start_simulator` returns a started process; `with engine:` would start a second one."""
    try:
        yield engine
    finally:
        engine.stop()


def _sim(*extra: str):
    return start_simulator(
        "--ttft", str(TTFT), "--tpot", str(TPOT), "--max-num-seqs", "512",
        "--batch-slope", "0", "--disable-uvicorn-access-log", *extra,
    )  # fmt: skip


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _histogram(port: int, name: str) -> tuple[float, float]:
    """(sum, count) of one of the simulator's /metrics histograms."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(f"vllm:{name}{suffix}{{"):
                values[suffix] = float(line.rsplit(" ", 1)[1])
    return values["_sum"], values["_count"]


def _engine_means(port: int, before: dict) -> dict:
    """The simulator's own TTFT/TPOT means since `before` (its warm-ups included)."""
    out = {}
    for key, name, truth in (
        ("sim_ttft_error_pct", "time_to_first_token_seconds", TTFT),
        ("sim_tpot_error_pct", "request_time_per_output_token_seconds", TPOT),
    ):
        total, count = _histogram(port, name)
        mean = (total - before[name][0]) / max(1.0, count - before[name][1])
        out[key] = (mean - truth) / truth * 100
    return out


def _msmall_level(port: int, conc: int, requests: int, tokens: int) -> dict:
    names = ("time_to_first_token_seconds", "request_time_per_output_token_seconds")
    before = {name: _histogram(port, name) for name in names}
    cpu0 = time.process_time()
    result = run_bench(
        BenchOptions(
            target=f"http://127.0.0.1:{port}",
            concurrency=[conc],
            requests=requests,
            output_tokens=tokens,
            input_tokens=16,
        )
    )
    cpu = time.process_time() - cpu0
    level = result["levels"][0]
    return {
        "tool": "msmall bench",
        "concurrency": conc,
        "ttft_mean_s": level["ttft_s"]["mean"],
        "ttft_error_pct": (level["ttft_s"]["mean"] - TTFT) / TTFT * 100,
        "tpot_mean_s": level["tpot_s"]["mean"],
        "tpot_error_pct": (level["tpot_s"]["mean"] - TPOT) / TPOT * 100,
        **_engine_means(port, before),
        # Warm-ups included: the CPU of the whole run over the tokens of the whole run.
        "cpu_s_per_1k_tokens": cpu / ((requests + conc) * tokens) * 1000,
        "loop_lag_p99_ms": level["client"]["loop_lag_p99_s"] * 1000,
        "load_average": _load(),
    }


def _vllm_level(venv: Path, port: int, conc: int, requests: int, tokens: int) -> dict | None:
    exe = venv / "bin" / "vllm"
    if not exe.exists():
        return None
    out = Path(tempfile.mkdtemp()) / "vllm.json"
    argv = [
        str(exe), "bench", "serve", "--backend", "openai-chat", "--endpoint",
        "/v1/chat/completions", "--base-url", f"http://127.0.0.1:{port}", "--model",
        "mistral-small-3.1", "--tokenizer", "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        "--dataset-name", "random", "--random-input-len", "16", "--random-output-len",
        str(tokens), "--ignore-eos", "--num-prompts", str(requests), "--max-concurrency",
        str(conc), "--save-result", "--result-filename", str(out),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    data = json.loads(out.read_text())
    return {
        "tool": "vllm bench serve",
        "concurrency": conc,
        "ttft_mean_s": data["mean_ttft_ms"] / 1000,
        "ttft_error_pct": (data["mean_ttft_ms"] / 1000 - TTFT) / TTFT * 100,
        "tpot_mean_s": data["mean_tpot_ms"] / 1000,
        "tpot_error_pct": (data["mean_tpot_ms"] / 1000 - TPOT) / TPOT * 100,
        "wall_s": time.perf_counter() - started,
        "load_average": _load(),
    }


def accuracy(args: argparse.Namespace) -> list[dict]:
    rows = []
    engine, port = _sim()
    with _stopped_after(engine):
        for conc in (1, 16, 64):
            rows.append(_msmall_level(port, conc, max(8, conc * 2), 40))
            if args.vllm_venv:
                row = _vllm_level(Path(args.vllm_venv), port, conc, max(8, conc * 2), 40)
                if row:
                    rows.append(row)
    return rows


def streams(args: argparse.Namespace) -> list[dict]:
    engine, port = _sim()
    with _stopped_after(engine):
        cpu0 = time.process_time()
        result = run_bench(
            BenchOptions(
                target=f"http://127.0.0.1:{port}",
                concurrency=[args.concurrency],
                duration_s=args.seconds,
                output_tokens=100,
                input_tokens=16,
            )
        )
        cpu = time.process_time() - cpu0
    level = result["levels"][0]
    return [
        {
            "streams": args.concurrency,
            "requests": level["requests"],
            "tokens_per_s": level["output_tokens_per_s"],
            "tpot_mean_s": level["tpot_s"]["mean"],
            "itl_p99_s": level["itl_s"]["p99"],
            "loop_lag_p99_ms": level["client"]["loop_lag_p99_s"] * 1000,
            "loop_lag_max_ms": level["client"]["loop_lag_max_s"] * 1000,
            "client_cpu_percent": level["client"]["cpu_percent"],
            "cpu_s_per_1k_tokens": cpu / max(1, level["output_tokens"]) * 1000,
            "bottleneck": level["client"]["bottleneck"],
            "load_average": _load(),
        }
    ]


def _body(tokens: int) -> dict:
    return {
        "model": "mistral-small-3.1",
        "messages": [{"role": "user", "content": "stack test"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _httpx_stream(client, tokens: int, out: list) -> None:
    r = metrics.RequestResult(kind="chat", started=time.perf_counter())
    last = r.started
    async with client.stream("POST", "/v1/chat/completions", json=_body(tokens)) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            ts = time.perf_counter()
            delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                if r.ttft is None:
                    r.ttft = ts - r.started
                else:
                    r.itl.append(ts - last)
                last = r.end = ts
                r.chunks += 1
    out.append(r)


async def _aiohttp_stream(session, url: str, tokens: int, out: list) -> None:
    r = metrics.RequestResult(kind="chat", started=time.perf_counter())
    last = r.started
    async with session.post(url, json=_body(tokens)) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            ts = time.perf_counter()
            delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                if r.ttft is None:
                    r.ttft = ts - r.started
                else:
                    r.itl.append(ts - last)
                last = r.end = ts
                r.chunks += 1
    out.append(r)


async def _stack_run(stack: str, port: int, conc: int, rounds: int, tokens: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    out: list = []
    monitor = runner.Monitor()
    if stack == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(
            base_url=base, timeout=120, limits=limits, trust_env=False
        ) as client:
            await asyncio.gather(*(_httpx_stream(client, 2, []) for _ in range(conc)))
            cpu0 = time.process_time()
            monitor.start()
            for _ in range(rounds):
                await asyncio.gather(*(_httpx_stream(client, tokens, out) for _ in range(conc)))
    elif stack == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = base + "/v1/chat/completions"
            await asyncio.gather(*(_aiohttp_stream(session, url, 2, []) for _ in range(conc)))
            cpu0 = time.process_time()
            monitor.start()
            for _ in range(rounds):
                await asyncio.gather(
                    *(_aiohttp_stream(session, url, tokens, out) for _ in range(conc))
                )
    else:
        from msmall.bench import workload
        from msmall.bench.client import Connection, Target

        target = Target.from_url(base)
        conns = [Connection(target) for _ in range(conc)]
        req = workload.BenchRequest("chat", _body(tokens))
        warm = workload.BenchRequest("chat", _body(2))
        await asyncio.gather(*(runner.run_request(c, warm) for c in conns))
        cpu0 = time.process_time()
        monitor.start()
        for _ in range(rounds):
            out += await asyncio.gather(*(runner.run_request(c, req) for c in conns))
        for c in conns:
            c.close()
    await monitor.stop()
    cpu = time.process_time() - cpu0
    done = [r for r in out if r.ttft is not None]
    chunks = sum(r.chunks for r in done)
    ttft = sum(r.ttft for r in done) / len(done)
    return {
        "stack": stack,
        "streams": conc,
        "requests": len(done),
        "ttft_mean_s": ttft,
        "ttft_error_pct": (ttft - TTFT) / TTFT * 100,
        "cpu_s_per_1k_tokens": cpu / max(1, chunks) * 1000,
        "cpu_percent": monitor.cpu_percent,
        "loop_lag_p99_ms": monitor.lag_p99() * 1000,
        "load_average": _load(),
    }


def stacks(args: argparse.Namespace) -> list[dict]:
    rows = []
    engine, port = _sim()
    with _stopped_after(engine):
        for stack in ("msmall", "httpx", "aiohttp"):
            if stack == "aiohttp" and shutil.which("true") and not _has("aiohttp"):
                continue
            rows.append(asyncio.run(_stack_run(stack, port, args.concurrency, 2, 50)))
    return rows


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("accuracy", "streams", "stacks"))
    parser.add_argument("-c", "--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--vllm-venv", default=None, help="a venv with vllm installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {"accuracy": accuracy, "streams": streams, "stacks": stacks}[args.mode](args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    keys = list(rows[0]) if rows else []
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
