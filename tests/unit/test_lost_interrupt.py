"""A stop signal whose Interrupt is raised inside a finalizer is lost (CPython reports it as
unraisable and carries on), and a foreground `msmall serve` hit by SIGHUP at that moment would
keep serving. msmall's handlers also note the signal, and the serve's waits act on the note."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import pytest

from msmall import errors, launcher
from msmall.errors import Interrupt


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    errors.forget_interrupts()
    yield
    errors.forget_interrupts()


class _SignalledInFinalizer:
    """Sends SIGHUP to this process from its __del__: Python runs the handler at the next
    bytecode of the main thread, still inside __del__."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(1000):  # bytecodes for the handler to run in
            pass


def test_an_interrupt_raised_in_a_finalizer_is_lost_but_noted(monkeypatch) -> None:
    unraisable: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_type))
    with launcher.sigterm_as_interrupt():
        _SignalledInFinalizer()  # collected at once: no exception gets out of this line
        assert unraisable == [Interrupt]  # the control: the raise really was lost
        with pytest.raises(Interrupt):
            errors.raise_if_interrupted()


def test_a_new_serve_starts_with_no_interrupt_noted() -> None:
    with pytest.raises(Interrupt):
        errors.interrupt(signal.SIGTERM)
    with launcher.sigterm_as_interrupt():
        errors.raise_if_interrupted()


class _Forever:
    poll_s = 0.01
    polls = 0

    def alive(self) -> bool:
        self.polls += 1
        return self.polls < 10_000


class _NoLog:
    def pump(self) -> None:
        pass


def test_the_foreground_wait_acts_on_a_lost_interrupt() -> None:
    handle = _Forever()
    with pytest.raises(Interrupt):
        errors.interrupt(signal.SIGHUP)  # raised, and (say) lost
    with pytest.raises(Interrupt):
        launcher._wait_foreground(handle, _NoLog(), None, "process", [])  # type: ignore[arg-type]
    assert handle.polls == 1
