"""The event loop msmall's own servers and clients run on: uvloop where it is installed.

vLLM runs its API server on uvloop (vllm/entrypoints/cli/serve.py, ``uvloop.run(run_server(args))``;
its ``fastapi[standard]`` requirement brings ``uvicorn[standard]`` and with it uvloop and
httptools). uvloop reads and writes sockets and runs timers in C: measured in issue 13
(docs/benchmarks.md, "Simulator speed" and "256 streams") it cuts the simulator's and the bench
client's CPU per streamed token. Without it (Windows, or an install that left it out) asyncio's
own loop is used, slower but the same behaviour.

``MSMALL_EVENT_LOOP=asyncio`` forces asyncio's loop (to compare the two).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_enabled() -> bool:
    if os.environ.get("MSMALL_EVENT_LOOP", "").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    if uvloop_enabled():
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on new_event_loop()'s loop (asyncio.Runner's loop_factory is 3.11+)."""
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    # What asyncio.run does on the way out (asyncio/runners.py _cancel_all_tasks).
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
