"""The one error type that crosses into the CLI, with a stable exit code per kind.

The CLI prints ``message`` and, when present, ``fix`` on a second line; nothing else.
"""

from __future__ import annotations

from typing import NoReturn


class MsmallError(Exception):
    exit_code = 1

    def __init__(
        self, message: str, fix: str | None = None, details: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        # Extra evidence shown after the fix (e.g. the last log lines of a server that died).
        self.details = details or []

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n{self.fix}"


class ConfigError(MsmallError):
    """Bad profile, bad option, bad value: the user's input is wrong."""

    exit_code = 2


class EnvironmentProblem(MsmallError):
    """This machine cannot do it: no GPU, old driver, port taken, not enough memory."""

    exit_code = 3


class EngineUnavailable(MsmallError):
    """The engine (vllm, ollama, docker daemon) is missing or failed to start."""

    exit_code = 4


class EndpointUnhealthy(MsmallError):
    """The server answered but does not serve correctly (chat, tools, vision)."""

    exit_code = 5


class Interrupted(MsmallError):
    """Ctrl-C or SIGTERM; everything started has been stopped."""

    exit_code = 130


class Interrupt(KeyboardInterrupt):
    """What msmall's own signal handlers raise for Ctrl-C, SIGTERM and SIGHUP.

    A subclass, not KeyboardInterrupt itself: CPython notes a *plain* KeyboardInterrupt that
    leaves any `exec`/`eval` of a string (dataclasses and namedtuple build methods that way, so
    a lazy import running when the signal lands is enough), even one msmall catches later, and
    `python -m msmall` then ends by killing itself with SIGINT (exit -2 instead of 130:
    `run_eval_code_obj` sets `_Py_UnhandledKeyboardInterrupt`, Py_RunMain checks it after a
    SystemExit). It compares the exception's type exactly, so a subclass is never noted, and
    every `except KeyboardInterrupt` still catches it.
    """


# The signals msmall's handlers have turned into an Interrupt in this process. The raise alone
# can be lost: a handler runs wherever the main thread is when the signal lands, and if that is
# a finalizer (a __del__, a weakref callback, run by the garbage collector at any allocation),
# CPython prints "Exception ignored in ..." and carries on, and the serve would keep serving
# (tests/unit/test_lost_interrupt.py shows the drop). The serve's waits therefore also ask
# raise_if_interrupted().
_signalled: list[int] = []


def interrupt(signum: int, frame: object = None) -> NoReturn:
    """msmall's signal handler (SIGINT in the CLI, SIGTERM and SIGHUP during a serve): note the
    signal, raise Interrupt."""
    _signalled.append(signum)
    raise Interrupt


def raise_if_interrupted() -> None:
    """Raise the Interrupt a signal asked for, if its own raise was lost."""
    if _signalled:
        raise Interrupt


def forget_interrupts() -> None:
    """A new serve starts clean (msmall used as a library runs several in one process)."""
    _signalled.clear()
