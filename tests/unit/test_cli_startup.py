"""What the `msmall` process imports: each start is paid by the user and by every CLI test."""

from __future__ import annotations

import socket
import subprocess
import sys

# Runs the CLI as `python -m msmall` does, then reports what was imported as the process ends.
_REPORT = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('imported:', 'httpx' in sys.modules, "
    "sys.modules.get('httpx._main') is not None, file=sys.stderr)); "
    "sys.argv = ['msmall', *sys.argv[1:]]; "
    "runpy.run_module('msmall', run_name='__main__')"
)


def test_a_probing_command_never_imports_httpx_command_line_client() -> None:
    """httpx's __init__ imports its own CLI (click, pygments, rich.syntax: ~0.1 s) when those
    are installed; msmall's main() keeps it out. The probe still runs on httpx."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: the probe is refused at once
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", _REPORT, "health", f"http://127.0.0.1:{port}", "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0, done.stderr  # nothing serves there
    assert "Traceback" not in done.stderr, done.stderr
    assert "imported: True False" in done.stderr, done.stderr


def test_library_use_leaves_httpx_alone() -> None:
    """Only the CLI entry point blocks httpx's CLI: importing msmall as a library does not."""
    # A None entry is the block; a failed import (no click installed) leaves no entry at all.
    code = "import sys, msmall.cli.app, httpx; print(sys.modules.get('httpx._main', 0) is None)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
