"""`msmall export compose` really runs: Debian's docker-compose brings the file up against the
private real Docker Engine with the stand-in vLLM image and the stand-in NVIDIA hook
(tests/e2e/docker_daemon.py, from the real-Docker tests), the health check goes healthy, msmall's
smoke checks pass through the published port, and `docker-compose down` leaves nothing.

Skipped, with the reason, where that daemon cannot run (not root, no docker.io, no
docker-compose) or where docker_daemon.py is not in this tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import msmall_cmd

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600, func_only=True)]

docker_daemon = pytest.importorskip(
    "docker_daemon", reason="tests/e2e/docker_daemon.py (the real-Docker tests) is not here"
)

HEALTHY_WITHIN_S = 120.0
PROJECT = "msmallexporttest"


@pytest.fixture(scope="module")
def dockerd(nvidia_dockerd) -> Iterator[object]:
    """The session's private dockerd (tests/conftest.py), left with no container of ours."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (Debian: apt-get install -y docker-compose)")
    try:
        yield nvidia_dockerd
    finally:
        nvidia_dockerd.remove_containers()


def _compose(directory: Path, env: dict[str, str], *args: str, timeout: float = 180) -> str:
    proc = subprocess.run(
        ["docker-compose", "-p", PROJECT, "-f", str(directory / "compose.yaml"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"docker-compose {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _health(daemon, service_label: str) -> str | None:
    with contextlib.closing(daemon.client()) as cli:
        found = cli.containers.list(all=True, filters={"label": service_label})
        if not found:
            return None
        state = found[0].attrs["State"]
        return state.get("Health", {}).get("Status") or state.get("Status")


def test_compose_up_goes_healthy_serves_and_down_leaves_nothing(
    dockerd, tmp_path: Path, free_port: int
) -> None:
    out = tmp_path / "deploy"
    env = {**os.environ, "DOCKER_HOST": dockerd.docker_host, "HF_TOKEN": "hf_compose_test_4321"}
    proc = subprocess.run(
        msmall_cmd("export", "compose", "-p", "h100-bf16-vision", "--port", str(free_port),
                   "-o", str(out)),
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "hf_compose_test_4321" not in (out / "compose.yaml").read_text()
    try:
        _compose(out, env, "up", "-d")
        label = "msmall.deployment=h100-bf16-vision"
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        status = None
        while time.monotonic() < deadline:
            status = _health(dockerd, label)
            if status in ("healthy", "unhealthy", "exited", "dead"):
                break
            time.sleep(1)
        assert status == "healthy", f"health {status}: {_compose(out, env, 'logs', '--tail', '20')}"
        # The GPU reservation reached the NVIDIA hook, as `--gpus all` does for `serve`.
        assert dockerd.hook_calls(), "the stand-in NVIDIA hook saw no GPU request"
        smoke = subprocess.run(
            msmall_cmd("health", f"http://127.0.0.1:{free_port}"),
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        _compose(out, env, "down", "--volumes", "--remove-orphans")
    with contextlib.closing(dockerd.client()) as cli:
        assert cli.containers.list(all=True, filters={"label": "msmall.profile"}) == []
        left = [n.name for n in cli.networks.list() if n.name.startswith(PROJECT)]
        assert left == []
