"""Engine-like log lines, printed to stdout and flushed one by one.

The wording copies the real engines (see shared/data/samples): msmall's log parsers and
diagnoses must work on the simulator's output exactly as on vLLM's and Ollama's.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading

_lock = threading.Lock()


def _emit(line: str) -> None:
    with _lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            # The reader went away (a supervisor that stopped reading): the server keeps serving.
            pass


class VllmLog:
    """vLLM 0.33 style: ``(APIServer pid=N) INFO 05-06 21:00:52 [api_server.py:602] message``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.pid = os.getpid()
        # The engine core is a separate process in real vLLM; its pid only has to differ.
        self.engine_pid = self.pid + 1

    def _line(self, who: str, pid: int, level: str, source: str, message: str) -> None:
        if self.quiet:
            return
        stamp = dt.datetime.now().strftime("%m-%d %H:%M:%S")
        _emit(f"({who} pid={pid}) {level} {stamp} [{source}] {message}")

    def api(self, message: str, source: str = "api_server.py:1880", level: str = "INFO") -> None:
        self._line("APIServer", self.pid, level, source, message)

    def engine(self, message: str, source: str, level: str = "INFO") -> None:
        self._line("EngineCore", self.engine_pid, level, source, message)

    def uvicorn(self, message: str) -> None:
        """uvicorn's own lines, which vLLM prefixes but does not reformat."""
        if not self.quiet:
            _emit(f"(APIServer pid={self.pid}) INFO:     {message}")

    def raw(self, message: str) -> None:
        if not self.quiet:
            _emit(message)


class OllamaLog:
    """Ollama (Go slog) style: ``time=... level=INFO source=routes.go:1297 msg="..." k=v``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def line(self, source: str, msg: str, level: str = "INFO", **fields: object) -> None:
        if self.quiet:
            return
        stamp = dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
        parts = [f"time={stamp}", f"level={level}", f"source={source}", f"msg={_quote(msg)}"]
        parts += [f"{key.replace('__', '.')}={_quote(str(value))}" for key, value in fields.items()]
        _emit(" ".join(parts))

    def gin(self, status: int, seconds: float, client: str, method: str, path: str) -> None:
        """The HTTP access line of Ollama's gin router."""
        if self.quiet:
            return
        stamp = dt.datetime.now().strftime("%Y/%m/%d - %H:%M:%S")
        took = f"{seconds * 1000:.6f}ms" if seconds < 1 else f"{seconds:.9f}s"
        _emit(f'[GIN] {stamp} | {status:3d} | {took:>13} | {client:>15} | {method:<7} "{path}"')

    def raw(self, message: str) -> None:
        if not self.quiet:
            _emit(message)


def _quote(value: str) -> str:
    # slog quotes values with spaces, quotes or '='.
    if value and not any(c in value for c in ' "=\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
