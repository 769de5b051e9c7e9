"""Shared fixtures: every test runs in an isolated user world (HOME, config, state, no secrets)."""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
DATA_DIR = TESTS_DIR / "data"
FAKES_DIR = TESTS_DIR / "fakes"
REPO_ROOT = TESTS_DIR.parent

SECRET_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "VLLM_API_KEY",
    "MSMALL_API_KEY",
    "OPENAI_API_KEY",
)


def pytest_configure(config: pytest.Config) -> None:
    _cache_bytecode(config)


def _cache_bytecode(config: pytest.Config) -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, keep this session's bytecode in the pytest cache
    instead of compiling everything again in every process.

    With it set, nothing ever writes a .pyc for src/ or tests/: every Python subprocess the
    suite starts (the CLI, the simulator, the fakes) compiles the msmall modules it imports
    again (about 0.06 s of CPU per CLI run), and each xdist worker re-runs pytest's assertion
    rewriting of every test module (about 6 s of CPU per worker). The cache lives in .pytest_cache (git-ignored, written
    by pytest anyway), never beside the sources, so the tree stays as clean as the variable
    asks. Set in the controller before pytest-xdist starts its workers, so they and every
    subprocess inherit it. Not with `-p no:cacheprovider` (benchmarks/mutate.py): it rewrites
    one module in place, and a mutant of the same size written in the same second would pass
    the mtime check of a cached .pyc.
    """
    if not sys.flags.dont_write_bytecode or os.environ.get("PYTHONPYCACHEPREFIX"):
        return  # bytecode is written the usual way, or already kept somewhere chosen
    cache = getattr(config, "cache", None)
    if cache is None or not config.pluginmanager.has_plugin("cacheprovider"):
        return
    prefix = str(cache.mkdir("pycache"))
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # This process too: the test modules are imported (and rewritten) after this hook.
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


@pytest.fixture(autouse=True)
def isolated_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MSMALL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MSMALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for var in (
        *SECRET_VARS, "DOCKER_HOST", "OLLAMA_HOST", "OLLAMA_MODELS", "MSMALL_DEBUG",
        "FAKE_NVIDIA_SMI_SCENARIO", "FAKE_NVIDIA_SMI_SLEEP", "HF_HUB_CACHE", "XDG_CACHE_HOME",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    # Same results on a GPU machine: tests that want GPUs ask for the fake nvidia-smi explicitly.
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "none")
    return tmp_path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def pick_port() -> int:
    """A free TCP port for a server that another program starts (so it cannot bind port 0).

    Ports the kernel hands out for port 0 and outgoing connections come from the ephemeral
    range, so a port below it cannot be taken by anyone's `bind(0)` between our check and the
    server's bind. Each xdist worker draws from its own slice, so parallel tests never collide.
    Where the server is ours (in-process), bind port 0 and read the port back instead.
    """
    low, _ = _ephemeral_range()
    floor = 20000 if low > 21000 else 1024
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    width = max((low - floor) // 16, 64)
    start = floor + (index % 16) * width
    candidates = list(range(start, min(start + width, low)))
    # Not the global generator: pytest-randomly reseeds it the same way for every test.
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


@pytest.fixture
def free_port() -> int:
    return pick_port()


@pytest.fixture
def fakes_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake engine executables (vllm, ollama, nvidia-smi) first on PATH."""
    monkeypatch.setenv("PATH", f"{FAKES_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    # The fakes are Python scripts; make them run with this interpreter and find msmall.
    monkeypatch.setenv("MSMALL_FAKE_PYTHON", sys.executable)
    return FAKES_DIR


# Sets SIGINT's disposition, then execs the rest of argv: a disposition survives exec, so the
# program starts the way a shell job or CI runner would start it, whatever pytest inherited.
_WITH_SIGINT = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == 'ignored' else signal.SIG_DFL); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
SIGINT_DISPOSITIONS = ("default", "ignored")


def with_sigint(argv: list[str], disposition: str = "default") -> list[str]:
    """argv that runs `argv` with SIGINT at its default disposition or ignored."""
    assert disposition in SIGINT_DISPOSITIONS
    return [sys.executable, "-c", _WITH_SIGINT, disposition, *argv]


def msmall_cmd(*args: str) -> list[str]:
    """argv that runs the msmall CLI in a real subprocess."""
    return [sys.executable, "-m", "msmall", *args]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`--dist loadgroup`), every test on the session dockerd runs in one
    # worker: a second worker's daemon would wait on the first one's data-root lock for the
    # whole session. Without xdist the marker does nothing.
    for item in items:
        # The marker too: a test may reach the daemon through getfixturevalue().
        if "nvidia_dockerd" in getattr(item, "fixturenames", ()) or item.get_closest_marker(
            "docker"
        ):
            item.add_marker(pytest.mark.xdist_group("docker"))


@pytest.fixture(scope="session")
def nvidia_dockerd():
    """One private real dockerd (NVIDIA toolkit stand-in, stand-in vLLM image) for the whole
    session, shared by the real-Docker tests and the export compose-up test: it owns the cached
    data root, and a second daemon on it would wait for the first's lock."""
    import docker_daemon  # tests/e2e/docker_daemon.py; tests/e2e is on sys.path by then

    yield from docker_daemon.toolkit_daemon_session()
