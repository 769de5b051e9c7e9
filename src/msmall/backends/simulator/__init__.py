"""The built-in simulator as an engine: the whole serve flow on a machine without a GPU. It
speaks and logs like vLLM, so vLLM's log rules read its failures."""

from __future__ import annotations

from msmall.backends import vllm
from msmall.backends.engine import Engine
from msmall.backends.simulator.plan import plan_simulator

ENGINE = Engine(
    name="simulator",
    label="simulator",
    flavor="vllm",
    default_port=8000,
    plan=plan_simulator,
    load_log_rules=vllm.log_rules,
    needs_gpu=False,
)
