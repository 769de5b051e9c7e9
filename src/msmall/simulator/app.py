"""build_app: the ASGI application of one simulated engine, ready at once (no startup delay).

``serve()`` (server.py) adds what a process does around it: the load phase with its log lines,
the port that refuses connections until ready, failures at startup, signals.
"""

from __future__ import annotations

from starlette.applications import Starlette

from msmall.simulator.config import SimulatorConfig
from msmall.simulator.state import SimState


def build_app(config: SimulatorConfig, state: SimState | None = None) -> Starlette:
    """The simulator's Starlette app; its SimState is ``app.state.sim``.

    Pass ``state`` to share it with a caller (serve() does, to flip health and count requests).
    """
    state = state or SimState(config)
    if config.flavor == "ollama":
        from msmall.simulator.ollama_app import build_ollama_app

        return build_ollama_app(state)
    from msmall.simulator.vllm_app import build_vllm_app

    return build_vllm_app(state)
