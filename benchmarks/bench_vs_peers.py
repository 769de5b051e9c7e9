"""msmall bench against its peers, on the same simulator (a script, not CI).

    python benchmarks/bench_vs_peers.py accuracy  [--vllm-venv DIR] [--tokenizer DIR]
                                                  [--levels 1,16,64] [--vllm-api chat,completions]
    python benchmarks/bench_vs_peers.py timed     [--levels 1,16,64] [--seconds 15]
    python benchmarks/bench_vs_peers.py streams   [-c 256]            # 256 streams at 50 tok/s
    python benchmarks/bench_vs_peers.py stacks    [-c 256]            # client HTTP stacks compared

accuracy: the simulator runs with --ttft 0.2 --tpot 0.02 (batch slope 0: TPOT flat at any
batch); `msmall bench` measures chat requests of 40 tokens (ignore_eos) at each level; the error
of its TTFT/TPOT means against the injected values and its CPU per 1,000 streamed tokens are
printed. With --vllm-venv (a venv with vllm, e.g. `pip install vllm==0.33.0`; its benchmark
client runs without a GPU), vLLM's client does the same on the same simulator, right after
msmall at each level: `vllm bench serve --backend openai-chat --endpoint /v1/chat/completions`
(and/or the default `--backend openai --endpoint /v1/completions`, --vllm-api) with
`--dataset-name random --random-input-len 16 --random-output-len 40 --ignore-eos
--num-prompts N --max-concurrency C --num-warmups C --disable-tqdm`, run through
benchmarks/vllm_bench_cpu.py, which times the CPU of its load phase only (not importing torch).
Its tokenizer is --tokenizer, else benchmarks/sim_tokenizer.py's word-level one, written to a
temp dir with the venv's python (no Hugging Face access needed). Each row also has the
simulator's own mean TTFT over the same requests (/metrics), so what the client and the HTTP
path add shows apart from what the server did.

timed: what a user runs, `msmall bench --concurrency 1,16,64 --duration S` against the same
simulator (40-token chat requests): the error of its TTFT/TPOT means against the injected values
per level, with tokens per request (exactly 40 when counts are right). Duration levels hold
many waves, so the first wave's burst (see accuracy's --waves) weighs little.

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
from functools import partial
from pathlib import Path

from msmall.bench import metrics, runner
from msmall.bench.session import BenchOptions, run_bench
from msmall.simulator.harness import start_simulator

TTFT, TPOT = 0.2, 0.02
# Injected latency, a batch that never slows (slope 0) and never queues below 512 streams.
SIM_ARGS = (
    "--ttft", str(TTFT), "--tpot", str(TPOT), "--max-num-seqs", "512",
    "--batch-slope", "0", "--disable-uvicorn-access-log",
)  # fmt: skip


@contextmanager
def _stopped_after(engine):
    """`start_simulator` returns a started process; `with engine:` would start a second one."""
    try:
        yield engine
    finally:
        engine.stop()


def _autogroup_nice(pid: int | str = "self") -> int | None:
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-123 nice -10"
    except OSError:
        return None
    return int(text.rsplit(" ", 1)[1])


def _sim(*extra: str):
    """The simulator, in a CPU-scheduling group of its own at this script's priority.

    With scheduler autogroups (Linux, /proc/sys/kernel/sched_autogroup_enabled) a session is
    one group, and a group's CPU share is split among its processes: in this script's group,
    the simulator (80-90 % of a core at 256 streams) took most of the share the client's
    wake-ups needed, which waited in the run queue behind other sessions' processes (client
    run-queue wait 20-23 % of the wall time, 14-16 % in a group of its own). A server under
    test does not share its client's group in real use either (vLLM's engine core is another
    process, on another machine from the benchmark's client). Both keep the same priority:
    the group's nice is copied from this script's.
    """
    engine, port = start_simulator(*SIM_ARGS, *extra, new_session=True)
    nice = _autogroup_nice()
    if nice is not None and engine.proc is not None:
        try:
            Path(f"/proc/{engine.proc.pid}/autogroup").write_text(str(nice))
        except OSError as exc:  # a negative nice needs CAP_SYS_NICE
            print(f"note: simulator left at its own group's default nice ({exc})", file=sys.stderr)
    return engine, port


def _engine_ttft(port: int) -> tuple[float, float]:
    """The simulator's own TTFT record (request bytes in -> first token out, engine.py):
    vllm:time_to_first_token_seconds' sum and count from /metrics."""
    import httpx

    values = {"_sum": 0.0, "_count": 0.0}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    for line in text.splitlines():
        for suffix in values:
            if line.startswith(f"vllm:time_to_first_token_seconds{suffix}"):
                values[suffix] = float(line.rsplit(" ", 1)[1])
    return values["_sum"], values["_count"]


def _with_engine_ttft(port: int, run) -> dict | None:
    """Run one tool's level and add the engine's mean TTFT over the same requests (warm-ups
    included) and the tool's mean TTFT minus it: what the client and the HTTP path add."""
    sum0, n0 = _engine_ttft(port)
    row = run()
    sum1, n1 = _engine_ttft(port)
    if row is None:
        return None
    engine = (sum1 - sum0) / max(1.0, n1 - n0)
    row["engine_ttft_mean_s"] = engine
    row["ttft_over_engine_ms"] = (row["ttft_mean_s"] - engine) * 1000
    row["load_average"] = row.pop("load_average")
    return row


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
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run_bench(
        BenchOptions(
            target=f"http://127.0.0.1:{port}",
            concurrency=[conc],
            requests=requests,
            output_tokens=tokens,
            input_tokens=16,
        )
    )
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    level = result["levels"][0]
    per_request = level["output_tokens"] / max(1, level["requests"])
    return {
        "tool": "msmall bench (chat)",
        "concurrency": conc,
        "requests": level["requests"],
        "failed": sum(level["errors"].values()),
        # Mean tokens per measured request (exact when it is the asked number).
        "output_lens": f"{per_request:g}",
        "ttft_mean_s": level["ttft_s"]["mean"],
        "ttft_error_pct": (level["ttft_s"]["mean"] - TTFT) / TTFT * 100,
        "tpot_mean_s": level["tpot_s"]["mean"],
        "tpot_error_pct": (level["tpot_s"]["mean"] - TPOT) / TPOT * 100,
        **_engine_means(port, before),
        # Warm-ups included: the CPU of the whole run over the tokens of the whole run.
        "cpu_s_per_1k_tokens": cpu / ((requests + conc) * tokens) * 1000,
        "client_cpu_percent": 100 * cpu / max(wall, 1e-9),
        "loop_lag_p99_ms": level["client"]["loop_lag_p99_s"] * 1000,
        "wall_s": wall,
        "load_average": _load(),
    }


BENCH_DIR = Path(__file__).resolve().parent


def _vllm_tokenizer(venv: Path, given: str | None) -> str:
    """The tokenizer vLLM's client needs: the one given, or benchmarks/sim_tokenizer.py's
    (word-level, counts like the simulator), written with the venv's own `tokenizers`."""
    if given:
        return given
    out = Path(tempfile.mkdtemp(prefix="msmall-sim-tokenizer-"))
    subprocess.run(
        [str(venv / "bin" / "python"), str(BENCH_DIR / "sim_tokenizer.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return str(out)


def vllm_argv(
    venv: Path, tokenizer: str, port: int, conc: int, requests: int, tokens: int, api: str
) -> tuple[list[str], Path, Path]:
    """`vllm bench serve` as benchmarks/vllm_bench_cpu.py runs it (that wrapper only times the
    load phase's CPU), the result file and the CPU file."""
    work = Path(tempfile.mkdtemp(prefix="msmall-vllm-bench-"))
    result, cpu = work / "result.json", work / "cpu.json"
    endpoint = (
        ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"]
        if api == "chat"
        else ["--backend", "openai", "--endpoint", "/v1/completions"]
    )
    argv = [
        str(venv / "bin" / "python"), str(BENCH_DIR / "vllm_bench_cpu.py"), str(cpu),
        "serve", *endpoint, "--base-url", f"http://127.0.0.1:{port}",
        "--model", "mistral-small-3.1", "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", "16",
        "--random-output-len", str(tokens), "--ignore-eos", "--num-prompts", str(requests),
        "--max-concurrency", str(conc), "--num-warmups", str(conc), "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-filename", str(result),
    ]  # fmt: skip
    return argv, result, cpu


def _vllm_level(
    venv: Path, tokenizer: str, port: int, conc: int, requests: int, tokens: int, api: str
) -> dict | None:
    argv, result, cpu_file = vllm_argv(venv, tokenizer, port, conc, requests, tokens, api)
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not result.exists():
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return None
        data = json.loads(result.read_text())
        cpu = json.loads(cpu_file.read_text())
    finally:
        shutil.rmtree(result.parent, ignore_errors=True)
    # Warm-ups (one per connection, like msmall's) stream tokens too: count them in the CPU.
    streamed = data["total_output_tokens"] + conc * tokens
    lens = sorted(set(data.get("output_lens") or []))
    return {
        "tool": f"vllm bench serve ({api})",
        "concurrency": conc,
        "requests": data["completed"],
        "failed": data["failed"],
        "output_lens": ",".join(str(n) for n in lens),
        "ttft_mean_s": data["mean_ttft_ms"] / 1000,
        "ttft_error_pct": (data["mean_ttft_ms"] / 1000 - TTFT) / TTFT * 100,
        "tpot_mean_s": data["mean_tpot_ms"] / 1000,
        "tpot_error_pct": (data["mean_tpot_ms"] / 1000 - TPOT) / TPOT * 100,
        "cpu_s_per_1k_tokens": cpu["cpu_s"] / streamed * 1000,
        "client_cpu_percent": 100 * cpu["cpu_s"] / max(cpu["wall_s"], 1e-9),
        "wall_s": time.perf_counter() - started,
        "load_average": _load(),
    }


def accuracy(args: argparse.Namespace) -> list[dict]:
    rows = []
    levels = [int(c) for c in args.levels.split(",")]
    apis = [a for a in args.vllm_api.split(",") if a]
    venv = Path(args.vllm_venv) if args.vllm_venv else None
    tokenizer = _vllm_tokenizer(venv, args.tokenizer) if venv else None
    engine, port = _sim()
    try:
        _accuracy_levels(rows, engine, port, levels, apis, venv, tokenizer, args.waves)
    finally:
        if venv and tokenizer != args.tokenizer:
            shutil.rmtree(tokenizer, ignore_errors=True)
    return rows


def _accuracy_levels(rows, engine, port, levels, apis, venv, tokenizer, waves: int) -> None:
    with _stopped_after(engine):
        for conc in levels:
            # `waves` requests per stream: a closed loop of equal requests sends each wave as one
            # burst, and the first after the warm-ups waits on the server most (64 requests
            # read and parsed at once); more waves show the steady state.
            requests = max(8, conc * waves)
            rows.append(_with_engine_ttft(port, partial(_msmall_level, port, conc, requests, 40)))
            for api in apis if venv else ():
                run = partial(_vllm_level, venv, tokenizer, port, conc, requests, 40, api)
                row = _with_engine_ttft(port, run)
                if row:
                    rows.append(row)


def timed(args: argparse.Namespace) -> list[dict]:
    engine, port = _sim()
    with _stopped_after(engine):
        result = run_bench(
            BenchOptions(
                target=f"http://127.0.0.1:{port}",
                concurrency=[int(c) for c in args.levels.split(",")],
                duration_s=args.seconds,
                output_tokens=40,
                input_tokens=16,
            )
        )
    return [
        {
            "tool": "msmall bench (chat, timed)",
            "concurrency": level["concurrency"],
            "seconds": args.seconds,
            "requests": level["requests"],
            "tokens_per_request": level["output_tokens"] / max(1, level["requests"]),
            "failed": sum(level["errors"].values()),
            "ttft_error_pct": (level["ttft_s"]["mean"] - TTFT) / TTFT * 100,
            "tpot_error_pct": (level["tpot_s"]["mean"] - TPOT) / TPOT * 100,
            "loop_lag_p99_ms": level["client"]["loop_lag_p99_s"] * 1000,
            "bottleneck": level["client"]["bottleneck"],
            "load_average": _load(),
        }
        for level in result["levels"]
    ]


def streams_level(port: int, concurrency: int, seconds: float) -> dict:
    """One closed-loop level of C streams of 100 tokens (50 tokens/s each at TPOT 0.02)."""
    return run_bench(
        BenchOptions(
            target=f"http://127.0.0.1:{port}",
            concurrency=[concurrency],
            duration_s=seconds,
            output_tokens=100,
            input_tokens=16,
        )
    )


def streams(args: argparse.Namespace) -> list[dict]:
    engine, port = _sim()
    with _stopped_after(engine):
        cpu0 = time.process_time()
        result = streams_level(port, args.concurrency, args.seconds)
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


def _on_line(r: metrics.RequestResult, line: str, last: float) -> float:
    """One SSE line read by a peer stack: a content delta's timing (the same rule for every
    stack). Returns the time of the last content chunk."""
    if not line.startswith("data: {"):
        return last
    ts = time.perf_counter()
    delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
    if delta.get("content"):
        if r.ttft is None:
            r.ttft = ts - r.started
        else:
            r.itl.append(ts - last)
        last = r.end = ts
        r.chunks += 1
    return last


async def _httpx_stream(client, tokens: int, out: list) -> None:
    r = metrics.RequestResult(kind="chat", started=time.perf_counter())
    last = r.started
    async with client.stream("POST", "/v1/chat/completions", json=_body(tokens)) as resp:
        async for line in resp.aiter_lines():
            last = _on_line(r, line, last)
    out.append(r)


async def _aiohttp_stream(session, url: str, tokens: int, out: list) -> None:
    r = metrics.RequestResult(kind="chat", started=time.perf_counter())
    last = r.started
    async with session.post(url, json=_body(tokens)) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            last = _on_line(r, line, last)
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
    parser.add_argument("mode", choices=("accuracy", "timed", "streams", "stacks"))
    parser.add_argument("-c", "--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--vllm-venv", default=None, help="a venv with vllm installed")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer dir for vLLM (default: sim_tokenizer.py's)"
    )
    parser.add_argument("--levels", default="1,16,64", help="accuracy, timed: concurrency levels")
    parser.add_argument(
        "--vllm-api", default="chat", help="accuracy: chat, completions or chat,completions"
    )
    parser.add_argument(
        "--waves", type=int, default=2, help="accuracy: requests per stream at each level"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = {"accuracy": accuracy, "timed": timed, "streams": streams, "stacks": stacks}
    rows = modes[args.mode](args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # The union of the rows' keys, in first-seen order: a vLLM row lacks msmall's loop-lag
    # column, and cells taken in each row's own order would land under the wrong headers.
    keys = list(dict.fromkeys(key for row in rows for key in row))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        values = [row.get(key, "") for key in keys]
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
