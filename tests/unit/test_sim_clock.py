"""The simulator's clock: deadline sleeps that learn the loop's lateness, and request turns."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from msmall import eventloop
from msmall.simulator import engine as eng
from msmall.simulator.engine import EngineModel, sleep_until, wake_sleepers


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_deadline_sleeps_land_on_their_deadlines_on_average(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("MSMALL_EVENT_LOOP", loop_kind)

    async def run() -> tuple[list[float], list[float], float]:
        loop = asyncio.get_running_loop()
        raw, late = [], []
        for _ in range(60):  # the loop's own timers, uncorrected
            deadline = time.monotonic() + 0.004
            woke = loop.create_future()
            loop.call_at(deadline, woke.set_result, None)
            await woke
            raw.append(time.monotonic() - deadline)
        for _ in range(120):
            deadline = time.monotonic() + 0.004
            await sleep_until(deadline)
            late.append(time.monotonic() - deadline)
        return raw, late, eng._EARLY[loop]

    raw, late, early = eventloop.run(run())

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    # The loop's timers take whole milliseconds (measured 0.5-1 ms late); the learnt advance
    # stays within its bounds and the later sleeps are less late than the loop's own timers.
    assert 0.0 <= early <= eng._EARLY_MAX_S
    assert median(late[60:]) <= max(median(raw) * 0.75, 0.0003), (median(raw), late[60:])
    assert min(late) > -eng._EARLY_MAX_S - 0.0005  # never much earlier than the advance


def test_wake_sleepers_ends_sleeps_and_forgets_the_loop() -> None:
    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        task = loop.create_task(sleep_until(started + 30))
        await asyncio.sleep(0.01)
        wake_sleepers()
        await asyncio.wait_for(task, 2)
        assert loop not in eng._EARLY and loop not in eng._SLEEPERS
        return time.monotonic() - started

    assert asyncio.run(run()) < 2


def test_requests_take_turns_one_per_loop_iteration_in_arrival_order() -> None:
    engine = EngineModel(max_num_seqs=8, kv_tokens=1000, ttft=0, tpot=0)

    async def run() -> list[tuple[str, int]]:
        iteration = [0]
        order: list[tuple[str, int]] = []

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0)
                iteration[0] += 1

        async def request(name: str) -> None:
            await engine.turn()
            order.append((name, iteration[0]))

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(request(n) for n in "abcd"))
        tick.cancel()
        return order

    order = asyncio.run(run())
    assert [name for name, _ in order] == list("abcd")
    # Each turn comes at least one loop iteration after the one before it.
    assert all(b[1] > a[1] for a, b in itertools.pairwise(order))


def test_a_cancelled_turn_is_skipped() -> None:
    engine = EngineModel(max_num_seqs=8, kv_tokens=1000, ttft=0, tpot=0)

    async def run() -> list[str]:
        order: list[str] = []

        async def request(name: str) -> None:
            await engine.turn()
            order.append(name)

        tasks = [asyncio.create_task(request(n)) for n in "abc"]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    assert asyncio.run(run()) == ["a", "c"]
