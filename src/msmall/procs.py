"""One way to run an external tool (nvidia-smi, vllm --version, ollama --version).

Argument lists only, never a shell; every way a tool can fail becomes a `ToolError` that says in
words what happened, so callers decide whether that is "not installed", "broken" or fine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


class ToolError(Exception):
    """The tool could not give an answer; ``problem`` says why, in one line."""

    def __init__(self, problem: str, output: str = "", returncode: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.output = output  # stdout and stderr, for callers that read the tool's own words
        self.returncode = returncode


class ToolMissing(ToolError):
    """Not on PATH (or not executable)."""


class ToolFailed(ToolError):
    """It ran but timed out, could not start, or exited non-zero."""


@dataclass(frozen=True)
class ToolResult:
    stdout: str
    stderr: str
    returncode: int


def run(argv: list[str], timeout_s: float, *, check: bool = True) -> ToolResult:
    """Run argv to completion with a deadline; text output decoded leniently.

    ``check``: a non-zero exit raises ToolFailed (with the output); without it the caller reads
    the return code itself (tools that print their version and then complain, like ollama).
    """
    name = argv[0]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ToolMissing(f"{name} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{name} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise ToolFailed(f"{name} could not be run: {exc.strerror or exc}") from None
    if check and done.returncode != 0:
        output = f"{done.stdout}\n{done.stderr}"
        first = next((line.strip() for line in output.splitlines() if line.strip()), "")
        raise ToolFailed(
            f"{name} exited with code {done.returncode}: {first or 'no output'}",
            output,
            done.returncode,
        )
    return ToolResult(done.stdout, done.stderr, done.returncode)
