"""The simulator's engine model, output shaping and structured output, in-process (no server)."""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
from typing import Literal

import pytest
from pydantic import BaseModel

from msmall.simulator import generation as gen
from msmall.simulator.config import ConfigError, SimulatorConfig, config_from_args
from msmall.simulator.engine import EngineModel
from msmall.simulator.state import SimState

# Schedule ----------------------------------------------------------------------------------


def test_token_deadlines_are_exact_and_do_not_drift() -> None:
    engine = EngineModel(max_num_seqs=8, kv_tokens=1000, ttft=0.2, tpot=0.02)

    async def run() -> list[float]:
        seq = await engine.admit(10, arrived=100.0)
        due = [seq.first_deadline()]
        due += [seq.next_deadline() for _ in range(49)]
        return due

    due = asyncio.run(run())
    # Each token is due at arrival + ttft + k * tpot: no lateness can accumulate, because
    # the next deadline is computed from the last deadline, not from when a token was sent.
    assert due[0] == pytest.approx(100.2)
    assert due[-1] == pytest.approx(100.2 + 49 * 0.02)
    assert all(b - a == pytest.approx(0.02) for a, b in itertools.pairwise(due))


def test_tpot_grows_above_the_knee() -> None:
    engine = EngineModel(max_num_seqs=256, kv_tokens=10**6, ttft=0, tpot=0.01, knee=64, slope=1)

    async def run(count: int) -> float:
        for _ in range(count):
            await engine.admit(1)
        value = engine.tpot_now()
        for seq in list(engine.running):
            seq.finish()
        return value

    assert asyncio.run(run(64)) == pytest.approx(0.01)
    assert asyncio.run(run(128)) == pytest.approx(0.02)
    assert asyncio.run(run(96)) == pytest.approx(0.015)


def test_admission_is_fifo_and_bounded_by_seqs_and_kv_blocks() -> None:
    # 7 blocks of 16 tokens, one the null block: 6 usable (v1/core/block_pool.py get_usage).
    engine = EngineModel(max_num_seqs=2, kv_tokens=7 * 16, ttft=0, tpot=0)
    assert engine.num_blocks == 6

    async def run() -> list[str]:
        order: list[str] = []

        async def request(name: str, prompt: int, hold: asyncio.Event) -> None:
            seq = await engine.admit(prompt)
            order.append(name)
            await hold.wait()
            seq.finish()

        holds = {n: asyncio.Event() for n in "abcde"}
        tasks = [
            asyncio.create_task(request("a", 60, holds["a"])),  # 4 blocks
            asyncio.create_task(request("b", 17, holds["b"])),  # 2 blocks: the cache is full
            asyncio.create_task(request("c", 33, holds["c"])),  # 3 blocks: waits
            asyncio.create_task(request("d", 5, holds["d"])),  # 1 block, but must not overtake c
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a", "b"] and len(engine.waiting) == 2
        assert engine.used_blocks == 6 and engine.kv_usage == pytest.approx(1.0)
        holds["b"].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a", "b"]  # c (3 blocks) does not fit beside a (4): d waits too
        holds["a"].set()
        for _ in range(4):
            await asyncio.sleep(0)
        assert order == ["a", "b", "c", "d"]
        assert engine.kv_usage == pytest.approx(4 / 6)
        for hold in holds.values():
            hold.set()
        await asyncio.gather(*tasks)
        return order

    asyncio.run(run())
    assert engine.running == [] and engine.used_blocks == 0


def test_blocks_grow_with_the_answer_and_the_last_admitted_is_preempted() -> None:
    """v1/core/sched/scheduler.py schedule(): a running request that needs a block when none
    is free preempts self.running[-1] (FCFS), which frees its blocks, goes to the front of the
    waiting queue (_preempt_request) and recomputes prompt + output when admitted again."""
    engine = EngineModel(max_num_seqs=8, kv_tokens=5 * 16, ttft=0, tpot=0)  # 4 usable blocks

    async def run() -> None:
        a = await engine.admit(16)  # 1 block
        b = await engine.admit(16)  # 1 block
        c = await engine.admit(32)  # 2 blocks: full
        assert engine.used_blocks == 4 and engine.running == [a, b, c]
        # a's second token needs the KV of prompt + first token: 17 slots, a second block.
        await a.wait_next()
        assert c.preempted and engine.running == [a, b] and engine.waiting[0][0] is c
        assert (a.blocks, c.blocks, engine.used_blocks) == (2, 0, 3)
        assert engine.num_preemptions == 1
        late = asyncio.create_task(engine.admit(1))  # queues behind the preempted c
        await asyncio.sleep(0)
        c_token = asyncio.create_task(c.wait_next())  # c waits to be admitted again
        await asyncio.sleep(0)
        assert not c_token.done()
        a.finish()  # 2 blocks free: c (prompt 32 + its first token: 3 blocks) resumes first
        await asyncio.wait_for(c_token, 1)
        assert not c.preempted and c.blocks == 3 and c.preemptions == 1
        assert engine.running == [b, c] and not late.done()
        b.finish()
        await asyncio.wait_for(late, 1)
        # Alone, a request never preempts itself (vLLM refuses a cache smaller than a request).
        for seq in list(engine.running):
            seq.finish()
        solo = await engine.admit(100)
        await solo.wait_next()
        assert not solo.preempted and engine.kv_usage == 1.0
        solo.finish()

    asyncio.run(run())
    assert engine.used_blocks == 0 and not engine.waiting
    text = "\n".join(engine.metric_lines('engine="0"'))
    assert 'vllm:num_preemptions_total{engine="0"} 1.0' in text


def test_a_request_can_preempt_itself_and_ollama_reserves() -> None:
    engine = EngineModel(max_num_seqs=8, kv_tokens=4 * 16, ttft=0, tpot=0)  # 3 usable blocks

    async def run() -> None:
        a = await engine.admit(32)  # 2 blocks
        b = await engine.admit(16)  # 1 block, admitted last
        step = asyncio.create_task(b.wait_next())  # b needs a second block: it is the victim
        await asyncio.sleep(0)
        assert b.preempted and not step.done() and engine.running == [a]
        a.finish()
        await asyncio.wait_for(step, 1)
        assert engine.running == [b] and b.blocks == 2
        b.finish()
        # Ollama: the whole answer is reserved at admission and never grows.
        held = await engine.admit(10, reserve=40)
        assert held.blocks == 3
        await held.wait_next()
        assert held.blocks == 3
        held.finish()

    asyncio.run(run())
    assert engine.num_preemptions == 1


def test_metrics_use_the_vllm_033_names() -> None:
    engine = EngineModel(max_num_seqs=4, kv_tokens=100, ttft=0, tpot=0)
    text = "\n".join(engine.metric_lines('engine="0"'))
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_sum",
        "vllm:request_queue_time_seconds_count",
        "vllm:num_preemptions_total",
    ):
        assert name in text
    assert "gpu_cache_usage_perc" not in text  # gone in vLLM v1's metrics


# Output length -------------------------------------------------------------------------------


def test_shape_honours_max_min_ignore_eos_and_stop() -> None:
    text = "alpha beta gamma delta"
    assert gen.shape(text, gen.OutputLimits()).deltas == ["alpha", " beta", " gamma", " delta"]
    cut = gen.shape(text, gen.OutputLimits(max_tokens=2))
    assert cut.deltas == ["alpha", " beta"] and cut.finish_reason == "length"
    padded = gen.shape(text, gen.OutputLimits(max_tokens=50, ignore_eos=True))
    assert len(padded.deltas) == 50 and padded.finish_reason == "length"
    at_least = gen.shape("ok", gen.OutputLimits(min_tokens=7))
    assert len(at_least.deltas) == 7 and at_least.finish_reason == "stop"
    stopped = gen.shape(text, gen.OutputLimits(stop=[" gamma", "beta"]))
    assert "".join(stopped.deltas) == "alpha " and stopped.stop_reason == "beta"
    # A stop string inside the first min_tokens tokens does not end the answer.
    late = gen.shape(text, gen.OutputLimits(stop=["beta"], min_tokens=3))
    assert "".join(late.deltas) == text and late.stop_reason is None


# Structured output ---------------------------------------------------------------------------


class Colour(str, enum.Enum):
    red = "red"
    blue = "blue"


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Order(BaseModel):
    id: int
    price: float
    colour: Colour
    size: Literal["S", "M", "L"]
    tags: list[str]
    note: str | None = None
    root: Node
    extra: dict[str, int] = {}


def test_json_from_a_pydantic_schema_with_refs_enums_and_recursion() -> None:
    schema = Order.model_json_schema()
    assert "$defs" in schema  # nested models are $refs
    value = gen.value_from_schema(schema, "an order")
    Order.model_validate(value)
    Order.model_validate_json(gen.json_answer(schema, "x"))


def test_json_schema_bounds() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 5, "maximum": 9},
            "x": {"type": "number", "exclusiveMinimum": 0},
            "code": {"type": "string", "minLength": 4, "maxLength": 6},
            "items": {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
            "const": {"const": "fixed"},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        },
        "required": ["n", "x", "code", "items", "const", "either"],
    }
    value = gen.value_from_schema(schema)
    assert 5 <= value["n"] <= 9 and value["x"] > 0 and 4 <= len(value["code"]) <= 6
    assert value["items"] == [True, True] and value["const"] == "fixed"
    assert isinstance(value["either"], int)
    assert isinstance(json.loads(gen.json_answer(None, "hi")), dict)


# Config ------------------------------------------------------------------------------------


def test_fractional_tools_as_text() -> None:
    config = config_from_args(["--fail", "tools-as-text:0.3"])
    assert config.fail_rate("tools-as-text") == pytest.approx(0.3)
    state = SimState(config.replace(quiet=True))
    draws = [state.draw("tools-as-text") for _ in range(20)]
    assert sum(draws[:10]) == 3 and sum(draws[10:]) == 3  # exact in every 10
    plain = SimState(SimulatorConfig(fail=frozenset({"tools-as-text"}), quiet=True))
    assert all(plain.draw("tools-as-text") for _ in range(5))  # plain mode: every request
    off = SimState(SimulatorConfig(quiet=True))
    assert not any(off.draw("tools-as-text") for _ in range(5))
    with pytest.raises(ConfigError):
        SimulatorConfig(fail=frozenset({"tools-as-text:1.5"}))
    with pytest.raises(ConfigError):
        SimulatorConfig(fail=frozenset({"http-503:0.5"}))
    with pytest.raises(SystemExit):
        config_from_args(["--fail", "tools-as-text:abc"])


def test_a_started_harness_is_not_started_twice() -> None:
    """`with engine:` on what start_simulator() returned must not leak a second simulator."""
    import sys

    from msmall.simulator.harness import EngineProcess

    engine = EngineProcess([sys.executable, "-c", "import time; time.sleep(30)"], {})
    engine.start()
    first = engine.proc
    try:
        with engine:
            assert engine.proc is first
    finally:
        engine.stop()
    assert first.poll() is not None


def test_tpot_and_inference_time_end_at_the_last_token() -> None:
    """vllm/v1/metrics/stats.py update_from_finished_request: decode_time and inference_time
    end at last_token_ts; the response's tail (usage, [DONE]) sent after it is not decode."""
    engine = EngineModel(max_num_seqs=8, kv_tokens=1000, ttft=0.2, tpot=0.02)

    async def run():
        return await engine.admit(10, arrived=100.0)

    seq = asyncio.run(run())
    seq.first_at, seq.last_at, seq.tokens = 100.2, 100.2 + 9 * 0.02, 10
    seq.finish()  # now, long after the last token
    tpot, inference = engine.hist["tpot"], engine.hist["inference"]
    assert tpot.count == 1 and tpot.total == pytest.approx(0.02)
    assert inference.total == pytest.approx(0.2 + 9 * 0.02)
