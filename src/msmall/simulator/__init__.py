"""The built-in simulator: an HTTP server that behaves like vLLM 0.33 or Ollama 0.33 serving
Mistral Small 3.1 (endpoints, response shapes, log lines, failure modes), with no GPU.

    python -m msmall.simulator --flavor vllm --port 8000

From Python::

    from msmall.simulator import SimulatorConfig, build_app, serve, SimulatorThread

``build_app`` and ``serve`` pull in starlette and uvicorn, so they are imported on first use:
``import msmall.simulator`` (and ``--help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msmall.simulator.config import FAIL_MODES, SimulatorConfig, parse_ollama_host

if TYPE_CHECKING:
    from msmall.simulator.app import build_app
    from msmall.simulator.server import SimulatorThread, serve

__all__ = [
    "FAIL_MODES",
    "SimulatorConfig",
    "SimulatorThread",
    "build_app",
    "parse_ollama_host",
    "serve",
]

_LAZY = {
    "build_app": "msmall.simulator.app",
    "serve": "msmall.simulator.server",
    "SimulatorThread": "msmall.simulator.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msmall.simulator' has no attribute {name!r}")
