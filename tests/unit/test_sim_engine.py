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


def test_admission_is_fifo_and_bounded_by_seqs_and_kv() -> None:
    engine = EngineModel(max_num_seqs=2, kv_tokens=100, ttft=0, tpot=0)

    async def run() -> list[str]:
        order: list[str] = []

        async def request(name: str, need: int, hold: asyncio.Event) -> None:
            seq = await engine.admit(need)
            order.append(name)
            await hold.wait()
            seq.finish()

        holds = {n: asyncio.Event() for n in "abcd"}
        tasks = [
            asyncio.create_task(request("a", 60, holds["a"])),
            asyncio.create_task(request("b", 30, holds["b"])),
            asyncio.create_task(request("c", 50, holds["c"])),  # does not fit next to a
            asyncio.create_task(request("d", 5, holds["d"])),  # fits, but must not overtake c
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a", "b"] and len(engine.waiting) == 2
        assert engine.kv_usage == pytest.approx(0.9)
        holds["b"].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a", "b"]  # c (50) does not fit beside a (60): it waits, d waits too
        holds["a"].set()
        for _ in range(4):
            await asyncio.sleep(0)
        assert order == ["a", "b", "c", "d"]
        for hold in holds.values():
            hold.set()
        await asyncio.gather(*tasks)
        return order

    asyncio.run(run())
    assert engine.running == [] and engine.kv_used == 0


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
