"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time

import psutil

from conftest import msmall_cmd

WAIT_S = 30.0


def path_without_nvidia_hook(path: str | None = None) -> str:
    """PATH minus the directories holding nvidia-container-runtime-hook: msmall takes a local
    hook as proof that Docker can serve --gpus, which a "no toolkit" test must not find on a
    machine where the NVIDIA Container Toolkit is installed."""
    dirs = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    keep = [
        d
        for d in dirs
        if d and not os.path.exists(os.path.join(d, "nvidia-container-runtime-hook"))
    ]
    return os.pathsep.join(keep)


class LiveServe:
    """A running `msmall serve` subprocess whose stderr lines we can wait for."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            msmall_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"never saw {text!r}; stderr so far:\n{''.join(self.seen)}")

    def finish(self, timeout: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=timeout)
        # The reader thread drains the pipe up to EOF, which follows the exit closely.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                break
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def server_children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
