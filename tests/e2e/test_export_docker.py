"""`msmall export compose` really runs: Debian's docker-compose brings the file up against the
private real Docker Engine with the stand-in images and the stand-in NVIDIA hook
(tests/e2e/docker_daemon.py, from the real-Docker tests), the health check goes healthy, msmall's
smoke checks pass through the published port, and `docker-compose down` leaves nothing.

Two profiles: a vLLM one (the `vllm/vllm-openai` stand-in) and an Ollama one (the
`ollama/ollama` stand-in: the simulator's Ollama flavor behind a stand-in `ollama` CLI), where
the one-shot pull service must pull the model into the server's volume before the smoke checks.

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
from helpers import http_get

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600, func_only=True)]

docker_daemon = pytest.importorskip(
    "docker_daemon", reason="tests/e2e/docker_daemon.py (the real-Docker tests) is not here"
)

# Docker 20.10 runs the first health check one interval after the start: 30 s in the exported
# files. The tests shorten only that interval, with an override file beside the export
# (_write_interval_override); the check, its timeout, retries and start period are the export's.
CHECK_INTERVAL = "1s"
HEALTHY_WITHIN_S = 120.0
PULLED_WITHIN_S = 60.0
PROJECT = "msmallexporttest"
PROJECT_LABEL = f"com.docker.compose.project={PROJECT}"


@pytest.fixture(scope="module")
def dockerd(nvidia_dockerd) -> Iterator[object]:
    """The session's private dockerd (tests/conftest.py), left with no container of ours."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (Debian: apt-get install -y docker-compose)")
    try:
        yield nvidia_dockerd
    finally:
        nvidia_dockerd.remove_containers()


OVERRIDE = "interval-override.yaml"


def _write_interval_override(directory: Path, compose: str) -> None:
    """A compose override beside the export that sets the health-check interval of every
    service that has a check to CHECK_INTERVAL, and nothing else: with the export's 30 s each
    test waited 30 s for Docker to run the first check, about a minute of the Docker worker's
    run, the suite's last."""
    import yaml

    services = yaml.safe_load(compose)["services"]
    override = {
        "services": {
            name: {"healthcheck": {"interval": CHECK_INTERVAL}}
            for name, service in services.items()
            if "healthcheck" in service
        }
    }
    assert override["services"], "the export has no health check to shorten"
    (directory / OVERRIDE).write_text(yaml.safe_dump(override))


def _compose(directory: Path, env: dict[str, str], *args: str, timeout: float = 180) -> str:
    files = ["-f", str(directory / "compose.yaml"), "-f", str(directory / OVERRIDE)]
    proc = subprocess.run(
        ["docker-compose", "-p", PROJECT, *files, *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"docker-compose {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _state(daemon, label: str) -> dict | None:
    with contextlib.closing(daemon.client()) as cli:
        found = cli.containers.list(all=True, filters={"label": label})
        return found[0].attrs["State"] if found else None


def _wait_healthy(daemon, label: str) -> str | None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    status = None
    while time.monotonic() < deadline:
        state = _state(daemon, label) or {}
        status = state.get("Health", {}).get("Status") or state.get("Status")
        if status in ("healthy", "unhealthy", "exited", "dead"):
            break
        time.sleep(1)
    return status


def _export(profile: str, port: int, out: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        msmall_cmd("export", "compose", "-p", profile, "--port", str(port), "-o", str(out)),
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    compose = (out / "compose.yaml").read_text()
    _write_interval_override(out, compose)
    return compose


def _smoke(port: int, env: dict[str, str]) -> None:
    smoke = subprocess.run(
        msmall_cmd("health", f"http://127.0.0.1:{port}"),
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr


def _assert_nothing_left(daemon) -> None:
    with contextlib.closing(daemon.client()) as cli:
        assert cli.containers.list(all=True, filters={"label": PROJECT_LABEL}) == []
        assert cli.containers.list(all=True, filters={"label": "msmall.profile"}) == []
        left = [n.name for n in cli.networks.list() if n.name.startswith(PROJECT)]
        assert left == []
        volumes = cli.volumes.list(filters={"label": PROJECT_LABEL})
        assert [v.name for v in volumes] == []


def _hook_saw(daemon, label: str) -> bool:
    """The stand-in NVIDIA hook ran for the container with LABEL (the compose GPU reservation
    reached it, as `--gpus` does for `serve`)."""
    with contextlib.closing(daemon.client()) as cli:
        ids = {c.id for c in cli.containers.list(all=True, filters={"label": label})}
    return any(call.get("id") in ids for call in daemon.hook_calls())


def test_compose_up_goes_healthy_serves_and_down_leaves_nothing(
    dockerd, tmp_path: Path, free_port: int
) -> None:
    out = tmp_path / "deploy"
    env = {**os.environ, "DOCKER_HOST": dockerd.docker_host, "HF_TOKEN": "hf_compose_test_4321"}
    assert "hf_compose_test_4321" not in _export("h100-bf16-vision", free_port, out, env)
    try:
        _compose(out, env, "up", "-d")
        label = "msmall.deployment=h100-bf16-vision"
        status = _wait_healthy(dockerd, label)
        assert status == "healthy", f"health {status}: {_compose(out, env, 'logs', '--tail', '20')}"
        assert _hook_saw(dockerd, label), "the stand-in NVIDIA hook saw no GPU request"
        _smoke(free_port, env)
    finally:
        _compose(out, env, "down", "--volumes", "--remove-orphans")
    _assert_nothing_left(dockerd)


def test_ollama_compose_pulls_the_model_serves_and_down_leaves_nothing(
    dockerd, tmp_path: Path, free_port: int
) -> None:
    import yaml

    out = tmp_path / "deploy"
    env = {**os.environ, "DOCKER_HOST": dockerd.docker_host}
    services = yaml.safe_load(_export("4090-q4", free_port, out, env))["services"]
    assert services["msmall-4090-q4-pull"]["command"][0] == "pull"
    tag = services["msmall-4090-q4-pull"]["command"][1]
    try:
        # `up -d` returns once the server is healthy and the pull service has started: the pull
        # service waits on `condition: service_healthy`.
        _compose(out, env, "up", "-d", timeout=HEALTHY_WITHIN_S + 60)
        label = "msmall.deployment=4090-q4"
        status = _wait_healthy(dockerd, label)
        assert status == "healthy", f"health {status}: {_compose(out, env, 'logs', '--tail', '20')}"
        assert _hook_saw(dockerd, label), "the stand-in NVIDIA hook saw no GPU request"
        # The one-shot pull service reached the server by its service name and pulled the tag.
        pull_label = "com.docker.compose.service=msmall-4090-q4-pull"
        deadline = time.monotonic() + PULLED_WITHIN_S
        state = _state(dockerd, pull_label) or {}
        while state.get("Status") != "exited" and time.monotonic() < deadline:
            time.sleep(0.5)
            state = _state(dockerd, pull_label) or {}
        logs = _compose(out, env, "logs", "--no-color", "msmall-4090-q4-pull")
        assert state.get("Status") == "exited" and state.get("ExitCode") == 0, logs
        assert "success" in logs
        tags = http_get(f"http://127.0.0.1:{free_port}/api/tags", timeout=10).json()
        assert [m["name"] for m in tags["models"]] == [tag]
        _smoke(free_port, env)
    finally:
        _compose(out, env, "down", "--volumes", "--remove-orphans")
    _assert_nothing_left(dockerd)
