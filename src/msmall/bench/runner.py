"""Load generation: closed-loop concurrency levels and open-loop Poisson arrivals.

Closed loop (`vllm bench serve --max-concurrency C`, guidellm's "concurrent" profile): C workers,
each with its own kept-alive connection, send one request after another. Every worker first
sends one warm-up request (connection set-up, first-request paths); the level's clock starts
when all warm-ups are done, and only requests started after that are measured. With
`--requests N` the level measures N requests; with `--duration S` it measures the requests
started within S seconds. The window ends when the last measured request ends.

Open loop (`--rate R`, vLLM's `get_request` with burstiness 1): arrivals are a Poisson process
(exponential gaps, seeded), independent of how fast the server answers. About one second of
arrivals (at least one request) is warm-up. The achieved rate (measured arrivals over the time
they spanned) is reported next to the asked one: a client that cannot keep up shows there.

The client watches itself: a ticker measures how late the event loop wakes it (loop lag) and
the process CPU time is sampled. Timestamps are taken as chunks arrive, so loop lag is error
on every timestamp; the level is flagged `bottleneck` when the lag p99 or the CPU could distort
the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from msmall.bench import metrics, workload
from msmall.bench.client import Connection, HttpError, SSEParser, Target

# Above these the client's own delay is a visible share of a fast engine's TPOT (10-20 ms).
LAG_LIMIT_S = 0.005
CPU_LIMIT_PERCENT = 85.0
# The lag ticker's period. Each tick's lateness is a sample; a longer period only means fewer
# samples (40/s), not a coarser one. Every wake-up costs ~0.16 ms of CPU on this 2-core VM: at
# 5 ms the ticker alone was 31 ms of CPU a second, which made msmall's client dearer than
# `vllm bench serve` at one stream (docs/benchmarks.md).
LAG_TICK_S = 0.025
REQUEST_TIMEOUT_S = 600.0
_DECODER = json.JSONDecoder()
_CONTENT = b'"delta":{"content":"'
_CONTENT_END = len(_CONTENT)
# Keys the full decode acts on. One regex pass: `key in payload` on bytes first tries the key
# as an integer and formats (then drops) a TypeError every time in CPython 3.11
# (bytes_methods.c _Py_bytes_contains), which made five such tests 4.3 us a chunk; this is 2.0.
_NEWS = re.compile(rb'"(?:tool_calls"|usage":\{|reasoning|error"|role")')


def _is_plain_token(payload: bytes) -> bool:
    """A chunk whose only news is a non-empty content delta in its first choice.

    Its delta opens with ``"content":"`` followed by something other than the closing quote
    (a quote inside the text is escaped, ``\\"``), and no key the full decode would act on
    (usage, tool calls, reasoning, an error, a role) appears unescaped anywhere in it. Such a
    chunk is a token by vLLM's rule whatever else it holds (finish_reason included).
    """
    at = payload.find(_CONTENT)
    if at < 0 or payload[at + _CONTENT_END : at + _CONTENT_END + 1] == b'"':
        return False
    return _NEWS.search(payload) is None


@dataclass
class LevelSpec:
    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None
    duration_s: float | None = None


@dataclass
class LevelOutcome:
    spec: LevelSpec
    results: list[metrics.RequestResult]
    window_s: float
    achieved_rate: float | None = None
    cpu_percent: float = 0.0
    loop_lag_p99_s: float = 0.0
    loop_lag_max_s: float = 0.0
    max_in_flight: int = 0
    samples: list[float] = field(default_factory=list)


def _error_kind(status: int) -> str:
    return f"http_{status}"


async def run_request(
    conn: Connection,
    req: workload.BenchRequest,
    timeout_s: float = REQUEST_TIMEOUT_S,
    body: bytes | None = None,
) -> metrics.RequestResult:
    result = metrics.RequestResult(kind=req.kind, expect_tokens=req.expect_tokens)
    parser = SSEParser()
    # json.loads(bytes) first sniffs the encoding; SSE is UTF-8 (the spec), so decode once.
    decode = _DECODER.decode
    text_parts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    state = {"last": 0.0, "done": False}

    def on_sent(ts: float) -> None:
        result.started = ts
        state["last"] = ts

    need_text = req.expect_colour is not None
    itl_append = result.itl.append

    def on_data(ts: float, data: bytes) -> None:
        # The hot path, a plain content token alone in its chunk (`data: {...}\n\n`, the
        # shape vLLM and the simulator send): recognised by a byte scan, no SSE split, no JSON
        # decode (256 streams send 12,800 of these a second). Anything else (role, finish,
        # usage, tool calls, reasoning, errors, an empty content, several events or a split
        # one) takes the full path below, which applies the same rules.
        if (
            not need_text
            and data[:7] == b"data: {"
            and data[-3:] == b"}\n\n"
            and data.find(b"\n") == len(data) - 2
            and not parser.pending
            and _is_plain_token(data)
        ):
            if result.ttft is None:
                result.ttft = ts - result.started
            else:
                itl_append(ts - state["last"])
            state["last"] = ts
            result.end = ts
            result.chunks += 1
            return
        for payload in parser.feed(data):
            if payload == b"[DONE]":
                state["done"] = True
                continue
            try:
                chunk = decode(payload.decode())
            except (ValueError, UnicodeDecodeError):
                result.error, result.error_detail = "bad_json", payload[:80].decode("latin-1")
                continue
            if not isinstance(chunk, dict):
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                result.usage_tokens = int(usage["completion_tokens"])
            choices = chunk.get("choices")
            if not choices:
                if "error" in chunk:
                    result.error = "stream_error"
                    result.error_detail = str(chunk["error"])[:200]
                continue
            delta = choices[0].get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            tool_calls = delta.get("tool_calls")
            # vLLM endpoint_request_func.py _choice_has_streamed_output: content, reasoning or
            # tool calls; an empty content without a role is an (invisible) token too.
            is_token = bool(content or reasoning or tool_calls) or (
                content == "" and "role" not in delta and not choices[0].get("finish_reason")
            )
            if content:
                text_parts.append(content)
            if tool_calls:
                for call in tool_calls:
                    entry = calls.setdefault(
                        int(call.get("index", 0)), {"function": {"name": "", "arguments": ""}}
                    )
                    fn = call.get("function") or {}
                    if fn.get("name"):
                        entry["function"]["name"] += fn["name"]
                    if fn.get("arguments"):
                        entry["function"]["arguments"] += fn["arguments"]
            if is_token:
                if result.ttft is None:
                    result.ttft = ts - result.started
                else:
                    result.itl.append(ts - state["last"])
                state["last"] = ts
                result.end = ts
                result.chunks += 1

    if body is None:
        body = encode(req)
    try:
        response = await asyncio.wait_for(
            conn.request("POST", "/v1/chat/completions", body, on_data, on_sent), timeout_s
        )
    except asyncio.TimeoutError:
        conn.close()
        result.error, result.error_detail = "timeout", f"no full answer within {timeout_s:.0f} s"
        return result
    except HttpError as exc:
        result.error, result.error_detail = exc.kind, str(exc)
        return result
    if response.status != 200:
        result.error = _error_kind(response.status)
        result.error_detail = response.body[:200].decode("utf-8", "replace")
        return result
    if result.error:
        return result
    if result.ttft is None:
        result.error, result.error_detail = "no_tokens", "the stream carried no token"
        return result
    if not state["done"]:
        result.error, result.error_detail = "no_done", "the stream ended without [DONE]"
        return result
    if req.expect_tool is not None:
        ordered = [calls[i] for i in sorted(calls)]
        result.tool_ok, result.check_detail = workload.score_tool_call(ordered, req.expect_tool)
    if req.expect_colour is not None:
        result.vision_ok, result.check_detail = workload.score_vision(
            "".join(text_parts), req.expect_colour
        )
    return result


def encode(req: workload.BenchRequest) -> bytes:
    return json.dumps(req.body, separators=(",", ":")).encode()


class _Pool:
    """Requests made and encoded ahead, in the workload's order.

    A closed loop's workers end their requests together (equal lengths) and each sends its
    next one at once: made on the spot (about 30 us each: prompt, JSON), 256 of them would
    hold the loop for ~8 ms while every stream's tokens arrive. A background task keeps this
    pool topped up a few at a time between bursts instead; the order of requests is the
    workload's either way.
    """

    BATCH = 16
    PAUSE_S = 0.002

    def __init__(self, work: workload.Workload, size: int) -> None:
        self.work = work
        self.size = max(1, size)
        self.ready: deque[tuple[workload.BenchRequest, bytes]] = deque()
        self._task: asyncio.Task | None = None
        self._wanted: asyncio.Event | None = None

    def _make(self) -> tuple[workload.BenchRequest, bytes]:
        req = self.work.next()
        return req, encode(req)

    def take(self) -> tuple[workload.BenchRequest, bytes]:
        item = self.ready.popleft() if self.ready else self._make()
        if self._wanted is not None:
            self._wanted.set()
        return item

    async def _fill(self) -> None:
        # Asleep while the pool is full: polling every PAUSE_S cost ~80 ms of CPU a second
        # (a wake-up is ~0.16 ms here), most of msmall's client CPU at one stream.
        assert self._wanted is not None
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self.ready) < self.size:
                for _ in range(self.BATCH):
                    if len(self.ready) >= self.size:
                        break
                    self.ready.append(self._make())
                await asyncio.sleep(self.PAUSE_S)

    def start(self) -> None:
        while len(self.ready) < self.size:
            self.ready.append(self._make())
        self._wanted = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._fill())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class Monitor:
    """Event-loop lag and process CPU over a level."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None
        self._cpu0 = 0.0
        self._wall0 = 0.0
        self.cpu_percent = 0.0

    async def _tick(self) -> None:
        # perf_counter, not loop.time(): uvloop's loop.time() is the time cached when the
        # current loop iteration began, so a stall inside an iteration would not show.
        clock = time.perf_counter
        while True:
            due = clock() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append(max(0.0, clock() - due))

    def start(self) -> None:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        wall = time.perf_counter() - self._wall0
        self.cpu_percent = 100 * (time.process_time() - self._cpu0) / max(wall, 1e-9)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def lag_p99(self) -> float:
        return metrics.percentile(sorted(self.lags), 99) if self.lags else 0.0


Progress = Callable[[int, int | None], None]

# Young-generation threshold during a level (CPython's default is 700 allocations).
GC_YOUNG_THRESHOLD = 50_000


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Fewer, cheaper garbage collections while a level runs; every pause is lag on the
    timestamps taken meanwhile.

    What is alive before the level (imported modules, earlier levels' results) is collected
    once and frozen, so the level's collections do not walk it: a full collection of msmall's
    heap took 25-40 ms here. vLLM does the same once its server has started
    (vllm/entrypoints/launchers/utils/server_utils.py, utils/gc_utils.py freeze_gc_heap).
    Young collections come every 50,000 container allocations instead of 700: a streamed token
    allocates almost none (bytes and floats are not tracked), so at 256 streams the default
    meant ~200 young and ~18 older collections (1-3 ms each) in a 6 s level, now a handful.
    Both are undone when the level ends.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


class Runner:
    def __init__(
        self,
        target: Target,
        work: workload.Workload,
        headers: dict[str, str] | None = None,
        seed: int = 0,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.target = target
        self.work = work
        self.headers = headers or {}
        self.random = random.Random(seed)
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.max_in_flight = 0

    def _conn(self) -> Connection:
        return Connection(self.target, self.headers)

    async def _one(
        self, conn: Connection, prepared: tuple[workload.BenchRequest, bytes]
    ) -> metrics.RequestResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await run_request(conn, prepared[0], self.timeout_s, prepared[1])
        finally:
            self.in_flight -= 1

    async def closed_loop(self, spec: LevelSpec, progress: Progress | None = None) -> LevelOutcome:
        assert spec.concurrency
        conns = [self._conn() for _ in range(spec.concurrency)]
        pool = _Pool(self.work, spec.concurrency)
        start = asyncio.Event()
        warm = [0]
        measured: list[metrics.RequestResult] = []
        state = {"issued": 0, "t0": 0.0, "stop_at": math.inf}
        monitor = Monitor()

        async def worker(conn: Connection) -> None:
            await self._one(conn, pool.take())
            warm[0] += 1
            if warm[0] == spec.concurrency:
                state["t0"] = time.perf_counter()
                if spec.duration_s is not None:
                    state["stop_at"] = state["t0"] + spec.duration_s
                self.max_in_flight = 0
                monitor.start()
                start.set()
            await start.wait()
            while True:
                if spec.requests is not None and state["issued"] >= spec.requests:
                    return
                if time.perf_counter() >= state["stop_at"]:
                    return
                state["issued"] += 1
                result = await self._one(conn, pool.take())
                measured.append(result)
                if progress:
                    progress(len(measured), spec.requests)

        pool.start()
        try:
            await asyncio.gather(*(worker(c) for c in conns))
        finally:
            await pool.stop()
            for conn in conns:
                conn.close()
        await monitor.stop()
        ends = [r.end or r.started for r in measured]
        window = (max(ends) if ends else time.perf_counter()) - state["t0"]
        return LevelOutcome(
            spec,
            measured,
            window,
            cpu_percent=monitor.cpu_percent,
            loop_lag_p99_s=monitor.lag_p99(),
            loop_lag_max_s=max(monitor.lags, default=0.0),
            max_in_flight=self.max_in_flight,
        )

    async def open_loop(self, spec: LevelSpec, progress: Progress | None = None) -> LevelOutcome:
        assert spec.rate and spec.rate > 0
        if spec.requests is None and spec.duration_s is None:
            raise ValueError("a rate level needs --requests or --duration")
        warmup = max(1, math.ceil(spec.rate))
        idle: list[Connection] = []
        measured: list[metrics.RequestResult] = []
        arrivals: list[float] = []
        tasks: set[asyncio.Task] = set()
        monitor = Monitor()
        pool = _Pool(self.work, max(8, math.ceil(spec.rate)))

        async def fire(is_warm: bool) -> None:
            conn = idle.pop() if idle else self._conn()
            try:
                result = await self._one(conn, pool.take())
            finally:
                idle.append(conn)
            if not is_warm:
                measured.append(result)
                if progress:
                    progress(len(measured), spec.requests)

        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        t0 = 0.0
        pool.start()
        try:
            while True:
                is_warm = n < warmup
                if not is_warm:
                    if n == warmup:
                        t0 = time.perf_counter()
                        self.max_in_flight = self.in_flight
                        monitor.start()
                    measured_n = n - warmup
                    if spec.requests is not None and measured_n >= spec.requests:
                        break
                    if spec.duration_s is not None and time.perf_counter() - t0 >= spec.duration_s:
                        break
                    arrivals.append(time.perf_counter())
                task = loop.create_task(fire(is_warm))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                # Deadlines, not sleeps of the gap: lateness of one wake-up is not carried on.
                next_at += self.random.expovariate(spec.rate)
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await pool.stop()
            for conn in idle:
                conn.close()
        await monitor.stop()
        ends = [r.end or r.started for r in measured]
        window = (max(ends) if ends else time.perf_counter()) - t0
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        achieved = (len(arrivals) - 1) / span if span > 0 else None
        return LevelOutcome(
            spec,
            measured,
            window,
            achieved_rate=achieved,
            cpu_percent=monitor.cpu_percent,
            loop_lag_p99_s=monitor.lag_p99(),
            loop_lag_max_s=max(monitor.lags, default=0.0),
            max_in_flight=self.max_in_flight,
        )

    async def run_level(self, spec: LevelSpec, progress: Progress | None = None) -> LevelOutcome:
        with quiet_gc():
            if spec.rate is not None:
                return await self.open_loop(spec, progress)
            return await self.closed_loop(spec, progress)


def level_json(outcome: LevelOutcome, slo: dict[str, float] | None) -> dict[str, Any]:
    spec = outcome.spec
    figures = metrics.level_figures(outcome.results, outcome.window_s, slo)
    head: dict[str, Any] = {}
    if spec.rate is not None:
        head = {"rate": spec.rate, "achieved_rate": outcome.achieved_rate}
    else:
        head = {"concurrency": spec.concurrency}
    bottleneck = outcome.loop_lag_p99_s > LAG_LIMIT_S or outcome.cpu_percent > CPU_LIMIT_PERCENT
    if spec.rate is not None and outcome.achieved_rate is not None:
        # An open loop that could not send at the asked rate measured a different load.
        bottleneck = bottleneck or outcome.achieved_rate < 0.95 * spec.rate
    figures["client"] = {
        "cpu_percent": round(outcome.cpu_percent, 1),
        "loop_lag_p99_s": outcome.loop_lag_p99_s,
        "loop_lag_max_s": outcome.loop_lag_max_s,
        "max_in_flight": outcome.max_in_flight,
        "bottleneck": bottleneck,
    }
    if bottleneck:
        figures["warnings"].append(
            f"the client may have distorted these figures (loop lag p99 "
            f"{outcome.loop_lag_p99_s * 1000:.1f} ms, CPU {outcome.cpu_percent:.0f}%)"
        )
    return {**head, **figures}
