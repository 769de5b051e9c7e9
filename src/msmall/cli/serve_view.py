"""How `serve` shows progress: a calm live panel on a terminal, plain lines otherwise.

Both write to stderr; stdout is kept for results (`--json`).
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from msmall.cli.output import err

_ICONS = {True: "ok  ", False: "FAIL"}
PROGRESS_EVERY_S = 2.0


def make_reporter(json_output: bool):
    console = err()
    if console.is_terminal and not json_output and not console.is_dumb_terminal:
        return LiveReporter()
    return PlainReporter()


def _check_line(result: Any) -> str:
    if result.skipped:
        return f"  skip  {result.name:<7} {result.detail}"
    line = f"  {_ICONS[result.ok]}  {result.name:<7} {result.latency_ms:>8.0f} ms  {result.detail}"
    if not result.ok and result.fix:
        line += f"\n        fix: {result.fix}"
    return line


def _fmt_bytes(n: int | None) -> str:
    return f"{(n or 0) / 1024**3:.2f} GiB"


class PlainReporter:
    """One line per event that matters; log lines themselves stay in the log file."""

    def __init__(self) -> None:
        self._last_activity = ""
        self._last_progress = ""
        self._last_progress_at = float("-inf")

    def _print(self, text: str) -> None:
        err().print(text, markup=False, highlight=False)

    def stage(self, text: str) -> None:
        self._print(f"msmall: {text}")

    def info(self, text: str) -> None:
        self._print(f"msmall: {text}")

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}")

    def log_lines(self, lines: list[str]) -> None:
        pass

    def activity(self, text: str) -> None:
        if text != self._last_activity:
            self._last_activity = text
            self._print(f"  engine: {text}")

    def progress(self, label: str, completed: int | None, total: int | None) -> None:
        # A pipe gets a line every few seconds and one at the end, not thousands.
        import time

        now = time.monotonic()
        finished = bool(total) and (completed or 0) >= (total or 0)
        if now - self._last_progress_at < PROGRESS_EVERY_S and not (
            finished and self._last_progress != label
        ):
            return
        self._last_progress_at = now
        self._last_progress = label if finished else ""
        detail = f" {_fmt_bytes(completed)} / {_fmt_bytes(total)}" if total else ""
        self._print(f"  pull: {label}{detail}")

    def check(self, result: Any) -> None:
        self._print(_check_line(result))

    def close(self) -> None:
        sys.stderr.flush()


class LiveReporter:
    """A small live panel: stage, engine activity, pull bar, last log lines."""

    def __init__(self) -> None:
        from rich.live import Live

        self._stage = ""
        self._activity = ""
        self._lines: deque[str] = deque(maxlen=6)
        self._progress: tuple[str, int | None, int | None] | None = None
        self._live = Live(self._render(), console=err(), refresh_per_second=8, transient=True)
        self._live.start()

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        parts: list[Any] = [Text.assemble(("msmall ", "bold"), (self._stage, "cyan"))]
        if self._activity:
            parts.append(Text(f"  engine: {self._activity}"))
        if self._progress:
            label, done, total = self._progress
            if total:
                parts.append(Text(f"  {label}: {_fmt_bytes(done)} / {_fmt_bytes(total)}"))
                parts.append(ProgressBar(total=total, completed=done or 0, width=50))
            else:
                parts.append(Text(f"  {label}"))
        for line in self._lines:
            parts.append(Text(f"  | {line[:160]}", style="dim"))
        return Group(*parts)

    def _refresh(self) -> None:
        self._live.update(self._render())

    def _print(self, text: str, style: str = "") -> None:
        from rich.text import Text

        # A styled Text, not print(style=...): the latter leaks into the live panel's next render.
        self._live.console.print(Text(text, style=style), highlight=False)

    def stage(self, text: str) -> None:
        self._stage = text
        if text.startswith("ready"):
            self._print(f"msmall: {text}", "bold green")
        self._refresh()

    def info(self, text: str) -> None:
        self._print(f"msmall: {text}")

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}", "yellow")

    def log_lines(self, lines: list[str]) -> None:
        self._lines.extend(line for line in lines if line.strip())
        self._refresh()

    def activity(self, text: str) -> None:
        self._activity = text
        self._refresh()

    def progress(self, label: str, completed: int | None, total: int | None) -> None:
        self._progress = (label, completed, total)
        self._refresh()

    def check(self, result: Any) -> None:
        self._print(_check_line(result), "green" if result.ok or result.skipped else "red")

    def close(self) -> None:
        self._live.stop()
