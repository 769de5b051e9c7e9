"""The installed Ollama's version, from `ollama --version`."""

from __future__ import annotations

import re

from msmall.backends.engine import VersionProbe

# `ollama --version` answers at once; a wedged install should not stall the doctor.
OLLAMA_VERSION_TIMEOUT_S = 10.0


def probe(timeout_s: float = OLLAMA_VERSION_TIMEOUT_S) -> VersionProbe:
    """(version, problem) of the ollama on PATH; (None, None) when there is none."""
    from msmall import procs

    try:
        done = procs.run(["ollama", "--version"], timeout_s=timeout_s, check=False)
    except procs.ToolMissing:
        return VersionProbe(None)
    except procs.ToolFailed as exc:
        return VersionProbe(None, f"`ollama --version`: {exc.problem}")
    # "ollama version is 0.6.5"; with no server running it warns first and ends with
    # "Warning: client version is 0.6.5".
    found = re.findall(r"version is v?(\d+\.\d+(?:\.\d+)?)", done.stdout + done.stderr)
    if found:
        return VersionProbe(found[-1])
    if done.returncode != 0:
        return VersionProbe(None, f"`ollama --version` exited with code {done.returncode}")
    return VersionProbe(None, "`ollama --version` printed no version")
