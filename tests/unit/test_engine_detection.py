"""Which vLLM msmall targets: the one it will start (first `vllm` on PATH), never merely an
installed package of its own interpreter (a GPU box's venv may have vllm next to the tests' fake).
"""

from __future__ import annotations

import os
import stat
import sys
from importlib import metadata
from pathlib import Path

import pytest

from msmall.backends.vllm.versions import installed_vllm_version


def _vllm_script(bindir: Path, version: str) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "vllm"
    exe.write_text(f"#!/bin/sh\necho {version}\n", encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.fixture
def package_says(monkeypatch: pytest.MonkeyPatch):
    """Pretend this interpreter has a vllm package of some version installed."""

    def install(version: str) -> None:
        real = metadata.version
        monkeypatch.setattr(
            metadata, "version", lambda name: version if name == "vllm" else real(name)
        )

    return install


def test_the_vllm_on_path_wins_over_an_installed_package(tmp_path, monkeypatch, package_says):
    package_says("0.99.0")
    exe = _vllm_script(tmp_path / "elsewhere" / "bin", "0.9.2")
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    assert installed_vllm_version() == "0.9.2"


def test_the_package_answers_for_the_vllm_of_this_environment(tmp_path, monkeypatch, package_says):
    package_says("0.99.0")
    prefix = tmp_path / "venv"
    # `vllm --version` would say something else: the metadata must be what answers.
    exe = _vllm_script(prefix / "bin", "0.1.0")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    assert installed_vllm_version() == "0.99.0"


def test_no_vllm_on_path_is_none_even_with_a_package(monkeypatch, package_says):
    package_says("0.99.0")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert installed_vllm_version() is None


def test_the_fake_on_path_wins_in_the_e2e_setup(fakes_on_path, monkeypatch, package_says):
    package_says("0.99.0")
    monkeypatch.setenv("FAKE_VLLM_VERSION", "0.9.2")
    assert installed_vllm_version() == "0.9.2"
