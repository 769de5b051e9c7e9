"""State writes on a full or read-only disk: one plain error, no temp file left (issue 9)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from msmall import paths, state
from msmall.errors import EnvironmentProblem


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_record_write_is_plain_and_leaves_nothing(
    code: int, monkeypatch, tmp_path: Path
) -> None:
    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    dep = state.Deployment(
        name="x", profile="demo", backend="simulator", base_url="http://127.0.0.1:9",
        served_model_name="m", log_path=str(tmp_path / "x.log"),
    )  # fmt: skip
    with pytest.raises(EnvironmentProblem, match=os.strerror(code)):
        state.save(dep)
    assert list(paths.deployments_dir().iterdir()) == []


def test_relative_state_dir_is_made_absolute(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMALL_STATE_DIR", "rel")
    assert paths.state_dir() == tmp_path / "rel"


def test_port_check_sees_a_bound_socket_that_does_not_listen() -> None:
    import socket

    from msmall.runtimes.process import port_in_use

    # What vLLM and the simulator do while loading: bind with SO_REUSEADDR, listen later.
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)
