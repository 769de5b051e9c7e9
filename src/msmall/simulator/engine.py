"""A small, honest load model of the engine's scheduler, and the metrics vLLM exports about it.

* At most ``max_num_seqs`` sequences run at once (vLLM's --max-num-seqs; Ollama's
  OLLAMA_NUM_PARALLEL). The rest wait in arrival order (FIFO, like vLLM's default "fcfs"
  scheduling policy).
* The KV cache is paged as in vLLM v1: ``kv_tokens // block_size`` blocks of 16 tokens
  (config/cache.py CacheConfig.DEFAULT_BLOCK_SIZE), one of them the null block that is never
  handed out (v1/core/block_pool.py get_usage). A request is admitted when the blocks for its
  prompt are free (scheduler.py schedule(): allocate_slots for the new tokens), and takes one
  more block each time its sequence crosses a block boundary while it decodes. When a running
  request needs a block and none is free, the scheduler preempts the last-admitted running
  request (FCFS: ``self.running[-1]``, possibly the request itself) until the block fits:
  the victim frees its blocks, goes back to the front of the waiting queue
  (_preempt_request: waiting.prepend_request) and, once admitted again, recomputes its
  prompt and the tokens it had generated (a prefill: ``ttft``) before its next token.
  ``vllm:num_preemptions_total`` counts this (v1/metrics/loggers.py, counter
  "vllm:num_preemptions"); ``vllm:kv_cache_usage_perc`` is blocks in use / usable blocks.
  Ollama has no paged cache: its requests reserve their whole answer at admission
  (``reserve``) and are never preempted.
* Token times are deadlines: token k of a request is due at ``admitted + ttft + sum(tpot_i)``,
  so sleeping never accumulates lateness (each token used to sleep tpot after the last one
  was sent, which added the event loop's latency to every token).
* The time per output token grows with the batch above a knee (decode becomes compute-bound):
  ``tpot * (1 + slope * max(0, running - knee) / knee)``. Defaults: knee 64, slope 1.0, so 128
  running sequences decode at half speed. Both are SimulatorConfig knobs (--batch-knee,
  --batch-slope); slope 0 keeps TPOT flat at any batch.

Metric names, help texts and histogram buckets follow vllm/v1/metrics/loggers.py
(PrometheusStatLogger.__init__) and vllm/v1/metrics/buckets.py of vLLM 0.33.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from dataclasses import dataclass, field

# vllm/v1/metrics/buckets.py TIME_TO_FIRST_TOKEN_BUCKETS, INTER_TOKEN_LATENCY_BUCKETS,
# REQUEST_LATENCY_BUCKETS.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        # Prometheus buckets are cumulative "le" bounds; store per-bucket, sum on export.
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, label: str) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append(f'{self.name}_bucket{{{label},le="{bound}"}} {float(running)}')
        out.append(f'{self.name}_bucket{{{label},le="+Inf"}} {float(self.count)}')
        out.append(f"{self.name}_count{{{label}}} {float(self.count)}")
        out.append(f"{self.name}_sum{{{label}}} {self.total}")
        return out


class Sequence:
    """One admitted request: its token deadlines and its share of the KV cache."""

    def __init__(
        self, engine: EngineModel, prompt_tokens: int, arrived: float, width: int, reserve: int
    ) -> None:
        self.engine = engine
        self.prompt_tokens = prompt_tokens
        self.width = max(1, width)  # n: parallel samples decode side by side
        self.reserve = reserve
        self.arrived = arrived
        self.admitted = arrived
        self.first_admitted: float | None = None
        self.next_due = arrived
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.tokens = 0
        self.done = False
        # Scheduling: the token being computed (1: the prefill's), the KV blocks held, and
        # whether the sequence is preempted (then ``resumed`` is set when admitted again).
        self.step = 1
        self.blocks = 0
        self.preempted = False
        self.resumed: asyncio.Future[None] | None = None
        self.preemptions = 0

    def slots(self) -> int:
        """KV slots the current step needs: the prompt and every token generated before it."""
        return max(self.prompt_tokens + self.width * (self.step - 1), self.reserve)

    def first_deadline(self) -> float:
        self.next_due = self.admitted + self.engine.ttft
        return self.next_due

    def next_deadline(self) -> float:
        """The deadline of the next token after the one just due."""
        self.next_due += self.engine.tpot_now()
        return self.next_due

    async def wait_first(self, stop: asyncio.Event | None = None) -> None:
        """Sleep until the first token is due (later if preempted meanwhile)."""
        await sleep_until(self.first_deadline(), stop)
        if self.preempted:
            await self._resume(stop)

    async def wait_next(self, stop: asyncio.Event | None = None) -> None:
        """Schedule the next token (its KV slot may preempt someone, or this request) and
        sleep until it is due."""
        self.step += 1
        engine = self.engine
        # The hot path of a load test: a new block only at a block boundary.
        if not self.preempted and (
            self.prompt_tokens + self.width * (self.step - 1) <= self.blocks * engine.block_size
            or engine.grow(self)
        ):
            await sleep_until(self.next_deadline(), stop)
        if self.preempted:
            await self._resume(stop)

    async def _resume(self, stop: asyncio.Event | None) -> None:
        # Preempted: wait to be admitted again, then recompute (a prefill) before the token.
        while self.preempted and self.resumed is not None:
            if stop is not None and stop.is_set():
                return
            loop = asyncio.get_running_loop()
            sleepers = _SLEEPERS.setdefault(loop, set())
            sleepers.add(self.resumed)  # wake_sleepers (the server stopping) ends the wait
            try:
                await self.resumed
            finally:
                sleepers.discard(self.resumed)
            if stop is not None and stop.is_set():
                return
            await sleep_until(self.first_deadline(), stop)

    def emitted(self, count: int = 1) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self.engine.hist["ttft"].observe(now - self.arrived)
        elif self.last_at is not None and count:
            self.engine.hist["itl"].observe((now - self.last_at) / count)
        self.last_at = now
        self.tokens += count

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        engine = self.engine
        engine.release(self)
        now = time.monotonic()
        hist = engine.hist
        # v1/metrics/stats.py update_from_finished_request: queued until first scheduled
        # ("ignore preemptions"), running from then on; the inference and decode intervals end
        # at the last token (last_token_ts), not when the response is done.
        admitted = self.admitted if self.first_admitted is None else self.first_admitted
        last = now if self.last_at is None else self.last_at
        hist["e2e"].observe(now - self.arrived)
        hist["queue"].observe(admitted - self.arrived)
        hist["inference"].observe(last - admitted)
        if self.first_at is not None and self.tokens > 1:
            hist["tpot"].observe((last - self.first_at) / (self.tokens - 1))


class EngineModel:
    def __init__(
        self,
        max_num_seqs: int,
        kv_tokens: int,
        ttft: float,
        tpot: float,
        knee: int = 64,
        slope: float = 1.0,
        block_size: int = 16,
    ) -> None:
        self.max_num_seqs = max(1, max_num_seqs)
        self.block_size = max(1, block_size)
        # Usable blocks: the pool less its null block (block_pool.py get_usage).
        self.num_blocks = max(1, kv_tokens // self.block_size - 1)
        self.ttft = ttft
        self.tpot = tpot
        self.knee = max(1, knee)
        self.slope = slope
        self.running: list[Sequence] = []
        self.waiting: deque[tuple[Sequence, asyncio.Future[None]]] = deque()
        self.used_blocks = 0
        self.num_preemptions = 0
        self._turns: deque[asyncio.Future[None]] = deque()
        self._turn_scheduled = False
        self.hist = {
            "ttft": Histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            ),
            "itl": Histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL_BUCKETS,
            ),
            "tpot": Histogram(
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                ITL_BUCKETS,
            ),
            "e2e": Histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                LATENCY_BUCKETS,
            ),
            "queue": Histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                LATENCY_BUCKETS,
            ),
            "inference": Histogram(
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                LATENCY_BUCKETS,
            ),
        }

    async def turn(self) -> None:
        """Wait for this request's turn to be parsed and planned: one request per event-loop
        iteration, so the loop reads its sockets and sends due tokens between two requests.

        A closed-loop load test sends 64 requests at once. Handled back to back (about half a
        millisecond each), they would hold the loop for tens of milliseconds: requests that
        arrive meanwhile are read (and their TTFT clock started, server.StampedH11) that much
        later, and every running stream's tokens wait. vLLM's API server is no faster per
        request, but its engine core runs in another process, so its token clock does not
        wait for request parsing; taking turns keeps the simulator's clock as free.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._turns.append(future)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            loop.call_soon(self._next_turn, loop)
        await future

    def _next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._turns:
            future = self._turns.popleft()
            if not future.done():  # a cancelled waiter (the client went away) is skipped
                future.set_result(None)
                break
        if self._turns:
            loop.call_soon(self._next_turn, loop)  # the next iteration, after polling I/O
        else:
            self._turn_scheduled = False

    def tpot_now(self) -> float:
        over = max(0, len(self.running) - self.knee)
        return self.tpot * (1.0 + self.slope * over / self.knee)

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.used_blocks / self.num_blocks)

    def _blocks_for(self, seq: Sequence) -> int:
        return math.ceil(seq.slots() / self.block_size)

    def _fits(self, seq: Sequence) -> bool:
        if len(self.running) >= self.max_num_seqs:
            return False
        # A request alone always runs (vLLM checks at startup that max_model_len fits the cache).
        need = self._blocks_for(seq) - seq.blocks
        return not self.running or self.used_blocks + need <= self.num_blocks

    def _start(self, seq: Sequence, at: float | None = None) -> None:
        seq.admitted = time.monotonic() if at is None else at
        if seq.first_admitted is None:
            seq.first_admitted = seq.admitted
        seq.preempted = False
        self.running.append(seq)
        need = self._blocks_for(seq)
        self.used_blocks += need - seq.blocks
        seq.blocks = need

    async def admit(
        self, prompt_tokens: int, arrived: float | None = None, *, width: int = 1, reserve: int = 0
    ) -> Sequence:
        """Wait for a place in the running batch; FIFO, so no request overtakes an older one.

        ``arrived`` (time.monotonic()) is when the request came in: a request admitted at once
        counts its TTFT from then, so parsing it is inside the TTFT, not added to it.
        ``reserve``: KV tokens held from admission on (Ollama's whole answer); vLLM's requests
        grow block by block instead.
        """
        seq = Sequence(
            self, prompt_tokens, time.monotonic() if arrived is None else arrived, width, reserve
        )
        if not self.waiting and self._fits(seq):
            self._start(seq, seq.arrived)
            return seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((seq, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(seq)  # admitted just as the client went away
            else:
                self.waiting = deque(w for w in self.waiting if w[0] is not seq)
                self._wake()
            raise
        return seq

    def grow(self, seq: Sequence) -> bool:
        """Give ``seq`` the blocks its current step needs, preempting the last-admitted running
        requests while none are free (v1/core/sched/scheduler.py schedule(), the running loop
        around kv_cache_manager.allocate_slots). False: ``seq`` itself was preempted."""
        if seq.preempted:
            return False
        need = self._blocks_for(seq) - seq.blocks
        while need > 0 and self.used_blocks + need > self.num_blocks:
            victim = self.running[-1]
            if victim is seq and len(self.running) == 1:
                break  # alone: it runs (see _fits)
            self._preempt(victim)
            if victim is seq:
                return False
        self.used_blocks += need
        seq.blocks += need
        return True

    def _preempt(self, seq: Sequence) -> None:
        """scheduler.py _preempt_request: free the blocks, back to the front of the queue."""
        self.running.remove(seq)
        self.used_blocks -= seq.blocks
        seq.blocks = 0
        seq.preempted = True
        seq.preemptions += 1
        self.num_preemptions += 1
        seq.resumed = asyncio.get_running_loop().create_future()
        self.waiting.appendleft((seq, seq.resumed))

    def release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.used_blocks -= seq.blocks
            seq.blocks = 0
        elif seq.preempted:
            self.waiting = deque(w for w in self.waiting if w[0] is not seq)
        self._wake()

    def _wake(self) -> None:
        while self.waiting and self._fits(self.waiting[0][0]):
            seq, future = self.waiting.popleft()
            if future.done():
                continue
            self._start(seq)
            future.set_result(None)

    def metric_lines(self, label: str) -> list[str]:
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(len(self.running))}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} {float(len(self.waiting))}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} {self.kv_usage}",
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{{{label}}} {float(self.num_preemptions)}",
        ]
        for hist in self.hist.values():
            lines += hist.lines(label)
        return lines


# Per event loop: several simulators may run in one process (SimulatorThread), each on its own.
_SLEEPERS: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
# How much earlier than a deadline to ask the event loop to wake, per loop (see sleep_until).
_EARLY: dict[asyncio.AbstractEventLoop, float] = {}
_EARLY_MAX_S = 0.0015
_EARLY_GAIN = 0.05


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def sleep_until(deadline: float, stop: asyncio.Event | None = None) -> None:
    """Sleep to a time.monotonic() deadline (the event loop's clock); ``wake_sleepers()`` (the
    server stopping) ends every such sleep at once.

    As cheap as asyncio.sleep (one future, one timer): with 64 streams due at the same
    instant, an asyncio.wait_for per token (a task, a cancellation) made the last stream's
    token tens of milliseconds late.

    Event-loop timers wake late: epoll and libuv take whole milliseconds, so a timer fires
    0.5-1 ms after the instant asked for (measured here: median 0.9 ms late with asyncio's
    loop and with uvloop), which alone is +0.5% on a 0.2 s TTFT. The wake-up is therefore asked
    for a little early, by an amount learnt from how late the wake-ups of this loop have been
    (an integral controller: each wake-up moves it by 5% of its lateness, kept within
    0..1.5 ms), so that tokens leave on their deadlines on average. It never moves a deadline,
    and no token is held back or spread out: it only takes out the loop's own lateness.
    """
    if stop is not None and stop.is_set():
        return
    loop = asyncio.get_running_loop()
    early = _EARLY.get(loop, 0.0)
    wake_at = deadline - early
    if wake_at <= loop.time():
        return
    future: asyncio.Future[None] = loop.create_future()
    handle = loop.call_at(wake_at, _wake, future)
    sleepers = _SLEEPERS.get(loop)
    if sleepers is None:
        sleepers = _SLEEPERS[loop] = set()
    sleepers.add(future)
    try:
        await future
    finally:
        handle.cancel()
        sleepers.discard(future)
    if loop in _SLEEPERS:  # not woken by wake_sleepers (the server stopping)
        late = time.monotonic() - deadline
        _EARLY[loop] = min(_EARLY_MAX_S, max(0.0, early + _EARLY_GAIN * late))


def wake_sleepers() -> None:
    """End every sleep_until of the running event loop now (call on its thread)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _EARLY.pop(loop, None)
    for future in list(_SLEEPERS.pop(loop, ())):
        _wake(future)
