"""Shared fixtures: every test runs in an isolated user world (HOME, config, state, no secrets)."""

from __future__ import annotations

import os
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


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fakes_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake engine executables (vllm, ollama, nvidia-smi) first on PATH."""
    monkeypatch.setenv("PATH", f"{FAKES_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    # The fakes are Python scripts; make them run with this interpreter and find msmall.
    monkeypatch.setenv("MSMALL_FAKE_PYTHON", sys.executable)
    return FAKES_DIR


def msmall_cmd(*args: str) -> list[str]:
    """argv that runs the msmall CLI in a real subprocess."""
    return [sys.executable, "-m", "msmall", *args]
