"""The built-in simulator as an engine: the whole serve flow on a machine without a GPU. It
speaks and logs like vLLM, so vLLM's log rules read its failures."""

from __future__ import annotations

from msmall.backends.engine import Engine
from msmall.backends.simulator.plan import plan_simulator
from msmall.backends.vllm import logs

ENGINE = Engine(
    name="simulator",
    label="simulator",
    flavor="vllm",
    default_port=8000,
    plan=plan_simulator,
    log_rules=logs.LOG_RULES,
    needs_gpu=False,
)
