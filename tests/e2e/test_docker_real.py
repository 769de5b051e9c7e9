"""The Docker backend against a real Docker Engine (Debian's dockerd 20.10 + containerd + runc).

tests/e2e/test_docker_backend.py proves the same paths against tests/fakes/docker_engine.py, a
fake of the Engine API that agrees with our reading of it; here the daemon is real. It runs
privately (its own socket, data root, exec root, pid file and bridge: tests/e2e/docker_daemon.py)
with a stand-in NVIDIA hook, and the image tagged vllm/vllm-openai runs msmall's simulator behind
vLLM's argument parser. msmall is driven only through its CLI, in subprocesses, with DOCKER_HOST
pointing at the private daemon; the tests then ask the daemon what it really did.

Marked `docker`; skipped, with the reason, where no private dockerd can start (not root,
docker.io missing). docs/docker.md says how to run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import FAKES_DIR, msmall_cmd
from docker_daemon import (
    VLLM_TAGS,
    PrivateDaemon,
    bridge_exists,
    start_or_skip,
    teardown_checked,
    tiny_vllm_image,
    why_not_runnable,
)
from helpers import LiveServe, path_without_nvidia_hook
from msmall.httpclient import new_client

# The session fixture may build the image (minutes, cold); the per-test limit is for the test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(180, func_only=True)]

SECRET = "hf_msmall_real_docker_secret_17"
OTHER_SECRET = "sk-not-for-the-container-99"
LABEL = "msmall.deployment"
DEFAULT_NETWORKS = {"bridge", "host", "none"}
WAIT_S = 60.0

# (profile, fake nvidia-smi scenario, image tag msmall must pick, extra serve flags)
VLLM_PROFILES = [
    ("h100-bf16-vision", "h100", "vllm/vllm-openai:v0.33.0", []),
    ("2x4090-fp8-vision", "2x4090", "vllm/vllm-openai:v0.33.0-cu129", []),
    ("4090-q4", "1x4090", "vllm/vllm-openai:v0.33.0-cu129", []),
    # Does not fit two 24 GB cards (it is meant for two 48 GB ones): msmall refuses without it.
    ("2x4090-bf16-vision", "2x4090", "vllm/vllm-openai:v0.33.0-cu129", ["--force"]),
]


# ---------------------------------------------------------------------------------------------
# Fixtures: the daemons live for the session; each test must leave no container behind


_start = start_or_skip
_teardown = teardown_checked


@pytest.fixture(scope="session")
def plain_dockerd() -> Iterator[PrivateDaemon]:
    """dockerd on a machine without the NVIDIA Container Toolkit."""
    reason = why_not_runnable()
    if reason:
        pytest.skip(f"no private Docker Engine here: {reason}")
    daemon = _start(PrivateDaemon(nvidia="none"))
    try:
        # Its containers must fail to start on the GPU request, so any image with the tag does.
        tiny_vllm_image(daemon)
        yield daemon
    finally:
        _teardown(daemon)
    # Checked here, not in a test: in random order (pytest-randomly) a test that stopped the
    # daemon could run before the others that need it. Afterwards no dockerd, containerd, shim
    # or docker-proxy of it runs and its bridge is gone; a failure here is a teardown error.
    assert daemon.leftover_processes() == []
    assert not bridge_exists(daemon.bridge)
    assert not daemon.socket.exists()


def _own_cleanup(daemon: PrivateDaemon) -> Iterator[PrivateDaemon]:
    with contextlib.closing(daemon.client()) as cli:
        before = {c.id for c in cli.containers.list(all=True)}
    assert not before, f"a container from an earlier test is still there: {before}"
    yield daemon
    daemon.note_containers()
    left = daemon.remove_containers()
    assert not left, f"the test left containers behind (removed now): {left}"


@pytest.fixture
def dockerd(nvidia_dockerd: PrivateDaemon) -> Iterator[PrivateDaemon]:
    yield from _own_cleanup(nvidia_dockerd)


@pytest.fixture
def dockerd_without_hook(plain_dockerd: PrivateDaemon) -> Iterator[PrivateDaemon]:
    yield from _own_cleanup(plain_dockerd)


@pytest.fixture
def live() -> Iterator[Callable[..., LiveServe]]:
    started: list[LiveServe] = []

    def start(args: list[str], env: dict[str, str]) -> LiveServe:
        lp = LiveServe(args, env)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        lp.kill()


# ---------------------------------------------------------------------------------------------
# Helpers


def env_for(daemon: PrivateDaemon, scenario: str = "h100", **extra: str) -> dict[str, str]:
    """msmall's environment: the private daemon, and GPUs from the fake nvidia-smi."""
    path = f"{FAKES_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    if daemon.nvidia == "none":
        path = path_without_nvidia_hook(path)  # a real toolkit here would answer for the daemon
    return {
        **os.environ,
        "DOCKER_HOST": daemon.docker_host,
        "MSMALL_GPU_SOURCE": "nvidia-smi",
        "FAKE_NVIDIA_SMI_SCENARIO": scenario,
        "MSMALL_FAKE_PYTHON": sys.executable,
        "PATH": path,
        **extra,
    }


def run(*args: str, env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        msmall_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def serve_args(profile: str, port: int, *extra: str) -> list[str]:
    return ["serve", "--profile", profile, "--backend", "docker", "--port", str(port), *extra]


def error_lines(stderr: str) -> list[str]:
    text = stderr[stderr.index("error:") :]
    return [line for line in text.splitlines() if line.strip() and "  | " not in line]


def containers(daemon: PrivateDaemon, deployment: str | None = None) -> list[Any]:
    label = f"{LABEL}={deployment}" if deployment else LABEL
    with contextlib.closing(daemon.client()) as cli:
        return cli.containers.list(all=True, filters={"label": label})


def wait_until(condition: Callable[[], Any], what: str, within_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s} s")
        time.sleep(0.1)


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def stop(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run("stop", name, env=env)


# ---------------------------------------------------------------------------------------------
# serve -> ready -> smoke -> stop, every vLLM profile


@pytest.mark.parametrize(("profile", "scenario", "image", "extra"), VLLM_PROFILES)
def test_profile_serves_through_the_real_daemon(
    dockerd: PrivateDaemon, free_port: int, profile: str, scenario: str, image: str, extra: list
) -> None:
    env = env_for(dockerd, scenario, HF_TOKEN=SECRET)
    result = run(*serve_args(profile, free_port, "--check", "--json", *extra), env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["image"] == image
    assert report["base_url"] == f"http://127.0.0.1:{free_port}"
    assert {c["name"]: c["ok"] for c in report["smoke"]["checks"]} == {
        "chat": True, "stream": True, "tools": True, "vision": True,
    }  # fmt: skip
    assert "pulling" not in result.stderr  # the tag is on the daemon: --pull missing skips it
    assert SECRET not in result.stdout + result.stderr
    # The daemon ran the prestart hook for it, with every GPU (--gpus all).
    calls = [c for c in dockerd.hook_calls() if c["id"] == report["container_id"]]
    assert [(c["args"], c["NVIDIA_VISIBLE_DEVICES"]) for c in calls] == [(["prestart"], "all")]
    # --check stopped and removed it.
    assert containers(dockerd) == []
    assert refused("127.0.0.1", free_port)


# ---------------------------------------------------------------------------------------------
# What the daemon really made of msmall's container


def test_the_container_as_docker_inspect_shows_it(
    dockerd: PrivateDaemon, free_port: int, isolated_world: Path
) -> None:
    profile = "h100-bf16-vision"
    env = env_for(dockerd, HF_TOKEN=SECRET, OPENAI_API_KEY=OTHER_SECRET)
    started = run(*serve_args(profile, free_port, "--detach", "--json"), env=env)
    try:
        assert started.returncode == 0, started.stderr
        container_id = json.loads(started.stdout)["container_id"]
        with contextlib.closing(dockerd.client()) as cli:
            container = cli.containers.get(container_id)
            attrs = container.attrs
            raw = json.dumps(cli.api.inspect_container(container_id))
            ipc_ns = container.exec_run(["readlink", "/proc/1/ns/ipc"]).output.decode().strip()
        host_config, config = attrs["HostConfig"], attrs["Config"]

        assert attrs["Name"] == f"/msmall-{profile}"
        assert attrs["State"]["Running"] is True
        # --ipc=host: the container shares the host's IPC namespace (and so its /dev/shm).
        assert host_config["IpcMode"] == "host"
        assert host_config["Init"] is True  # docker run --init: signals reach the engine
        assert ipc_ns == os.readlink("/proc/self/ns/ipc")
        # Published on 127.0.0.1 only: the daemon's other host address does not answer.
        assert attrs["NetworkSettings"]["Ports"] == {
            "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(free_port)}]
        }
        assert not refused("127.0.0.1", free_port)
        gateway = dockerd.gateway.split("/")[0]
        assert refused(gateway, free_port), f"port {free_port} answers on {gateway}"
        # The host's HF cache, bind-mounted read-write: what the container writes is there.
        hf_cache = isolated_world / "hf"
        mounts = [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in attrs["Mounts"]]
        assert mounts == [("bind", str(hf_cache), "/root/.cache/huggingface", True)]
        note = hf_cache / "stand-in-vllm-was-here"
        assert note.read_text().split() == [container_id[:12]]
        # Labels: msmall's two (the image's own labels are merged in by the daemon).
        assert config["Labels"][LABEL] == profile
        assert config["Labels"]["msmall.profile"] == profile
        # The GPUs: one request for all of them, served by the NVIDIA driver.
        (request,) = host_config["DeviceRequests"]
        assert (request["Driver"], request["Count"], request["Capabilities"]) == (
            "", -1, [["gpu"]],
        )  # fmt: skip
        assert not request["DeviceIDs"]
        log = (isolated_world / "state" / "logs" / f"{profile}.log").read_text()
        assert "stand-in: NVIDIA_VISIBLE_DEVICES=all" in log
        # Secrets: the token the user gave reaches the container's env, once, and nothing else
        # from msmall's environment does; the command line carries none.
        assert f"HF_TOKEN={SECRET}" in config["Env"]
        assert raw.count(SECRET) == 1
        assert OTHER_SECRET not in raw
        assert not any(SECRET in arg for arg in config["Cmd"])
        assert config["Entrypoint"] == ["vllm", "serve"]  # the image's, untouched
        assert config["Cmd"][:2] == ["--model", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    finally:
        stopped = stop(profile, env)
    assert stopped.returncode == 0, stopped.stderr
    assert containers(dockerd) == []


@pytest.mark.parametrize(("gpu_ids", "visible"), [("[1]", "1"), ("[0,1]", "0,1")])
def test_gpu_ids_become_the_device_ids_docker_hands_over(
    dockerd: PrivateDaemon, free_port: int, isolated_world: Path, gpu_ids: str, visible: str
) -> None:
    env = env_for(dockerd, "2x4090")
    args = serve_args("4090-q4", free_port, "--set", f"gpu_ids={gpu_ids}", "--check", "--json")
    result = run(*args, env=env)
    assert result.returncode == 0, result.stderr
    container_id = json.loads(result.stdout)["container_id"]
    calls = [c for c in dockerd.hook_calls() if c["id"] == container_id]
    assert [c["NVIDIA_VISIBLE_DEVICES"] for c in calls] == [visible]
    log = (isolated_world / "state" / "logs" / "4090-q4.log").read_text()
    assert f"stand-in: NVIDIA_VISIBLE_DEVICES={visible}\n" in log
    assert containers(dockerd) == []


# ---------------------------------------------------------------------------------------------
# Ctrl-C, --detach / ps / logs -f / stop, a wiped state directory


@pytest.mark.parametrize("when", ["loading", "ready"])
def test_ctrl_c_stops_and_removes_the_container(
    dockerd: PrivateDaemon, live, free_port: int, when: str
) -> None:
    extra = ["--set", "serving.env.FAKE_VLLM_STARTUP_DELAY=120"] if when == "loading" else []
    env = env_for(dockerd)
    lp = live(serve_args("h100-bf16-vision", free_port, *extra), env)
    if when == "loading":
        lp.wait_for("waiting for", WAIT_S)
        # Right after the start, before the engine has a SIGTERM handler: with msmall's --init
        # (tini as PID 1) SIGTERM still reaches it; without, a PID 1 with no handler ignores it
        # and docker stop waits out the 15 s grace before SIGKILL (exit 137).
        wait_until(
            lambda: [c for c in containers(dockerd) if c.status == "running"], "container runs"
        )
    else:
        lp.wait_for("ready at", WAIT_S)
    (container,) = containers(dockerd)
    interrupted = time.monotonic()
    lp.proc.send_signal(signal.SIGINT)
    assert lp.finish(WAIT_S) == 130, "".join(lp.seen)
    # Stopped by SIGTERM, not by docker's SIGKILL after the grace period.
    assert time.monotonic() - interrupted < 10
    assert any("interrupted" in line for line in lp.seen), "".join(lp.seen)
    assert "Traceback" not in "".join(lp.seen)
    with contextlib.closing(dockerd.client()) as cli, pytest.raises(docker.errors.NotFound):
        cli.containers.get(container.id)
    assert refused("127.0.0.1", free_port)


def test_detach_ps_logs_follow_stop(dockerd: PrivateDaemon, free_port: int) -> None:
    profile = "h100-bf16-vision"
    env = env_for(dockerd)
    started = run(*serve_args(profile, free_port, "--detach", "--json"), env=env)
    follow = None
    try:
        assert started.returncode == 0, started.stderr
        container_id = json.loads(started.stdout)["container_id"]
        ps = json.loads(run("ps", "--json", env=env).stdout)
        assert [(d["name"], d["container_id"], d["running"], d["health"]) for d in ps] == [
            (profile, container_id, True, "ready")
        ]

        follow = LiveServe(["logs", profile, "-f"], env)  # reads stderr; stdout is the log
        follow_out: list[str] = []
        reader = _drain(follow.proc.stdout, follow_out)
        # A request made now shows up in the followed log.
        chat_url = f"http://127.0.0.1:{free_port}/v1/chat/completions"
        with new_client(chat_url, timeout=30) as http:
            reply = http.post(
                chat_url,
                json={
                    "model": "mistral-small-3.1",
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        assert reply.status_code == 200
        wait_until(
            lambda: any("POST /v1/chat/completions" in line for line in follow_out),
            "the request in `logs -f`",
        )
    finally:
        stopped = stop(profile, env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"{profile}: stopped and removed container" in stopped.stdout
    # The container is gone, so `logs -f` ends by itself.
    assert follow is not None
    assert follow.proc.wait(timeout=WAIT_S) == 0
    reader.join(timeout=10)
    assert json.loads(run("ps", "--json", env=env).stdout) == []
    assert containers(dockerd) == []


def _drain(stream, into: list[str]):
    import threading

    def pump() -> None:
        for line in stream:
            into.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def test_container_found_by_label_after_the_state_is_wiped(
    dockerd: PrivateDaemon, free_port: int, isolated_world: Path
) -> None:
    profile = "h100-bf16-vision"
    env = env_for(dockerd)
    started = run(*serve_args(profile, free_port, "--detach", "--json", "--no-smoke"), env=env)
    try:
        assert started.returncode == 0, started.stderr
        container_id = json.loads(started.stdout)["container_id"]
        shutil.rmtree(isolated_world / "state")

        (found,) = json.loads(run("ps", "--json", env=env).stdout)
        assert (found["name"], found["container_id"]) == (profile, container_id)
        assert (found["running"], found["health"]) == (True, "ready")
        assert found["base_url"] == f"http://127.0.0.1:{free_port}"
        assert "found by label" in found["status"]
        logs = run("logs", profile, "-n", "5", env=env)
        assert logs.returncode == 0, logs.stderr
        assert len(logs.stdout.splitlines()) == 5
    finally:
        stopped = stop(profile, env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped container found by label" in stopped.stdout
    assert containers(dockerd) == []


# ---------------------------------------------------------------------------------------------
# Failures: out of memory while loading, no NVIDIA toolkit, --pull never, the name taken


def test_container_dying_of_oom_is_diagnosed_then_removed(
    dockerd: PrivateDaemon, free_port: int, isolated_world: Path
) -> None:
    args = serve_args(
        "h100-bf16-vision", free_port, "--set", "serving.env.FAKE_VLLM_FAIL=oom-on-load"
    )
    result = run(*args, env=env_for(dockerd))
    assert result.returncode == 4, result.stderr
    message, fix = error_lines(result.stderr)[:2]
    assert "the container exited with code 1 before it was ready" in message
    assert "out of memory" in message.lower()
    assert "--profile" in fix
    tail = [line for line in result.stderr.splitlines() if "  | " in line]
    assert tail and any("memory" in line.lower() for line in tail)
    assert "Traceback" not in result.stderr.split("  | ")[0]
    log = (isolated_world / "state" / "logs" / "h100-bf16-vision.log").read_text()
    assert "out of memory" in log.lower()
    assert containers(dockerd) == []


def test_daemon_without_the_toolkit_gives_the_toolkit_fix(
    dockerd_without_hook: PrivateDaemon, free_port: int
) -> None:
    daemon = dockerd_without_hook
    env = env_for(daemon)
    with contextlib.closing(daemon.client()) as cli:
        assert "nvidia" not in cli.info()["Runtimes"]

    plain = run(*serve_args("h100-bf16-vision", free_port, "--check"), env=env)
    assert plain.returncode == 3, plain.stderr
    message, fix = error_lines(plain.stderr)
    assert "Docker has no NVIDIA runtime" in message
    assert "NVIDIA Container Toolkit" in fix and "nvidia-ctk runtime configure" in fix
    assert "Traceback" not in plain.stderr
    assert containers(daemon) == []

    # --force: the daemon itself refuses the GPU request when the container starts.
    forced = run(*serve_args("h100-bf16-vision", free_port, "--check", "--force"), env=env)
    assert forced.returncode == 3, forced.stderr
    message, fix = error_lines(forced.stderr)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in message
    assert "NVIDIA Container Toolkit" in fix
    assert "Traceback" not in forced.stderr
    daemon.note_containers()
    assert containers(daemon) == []  # created, failed to start, removed


def test_toolkit_installed_but_not_registered_is_not_refused(free_port: int) -> None:
    """`--gpus` needs the hook, not the runtime: with the toolkit installed and never registered
    (`nvidia-ctk runtime configure` not run), `docker info` lists no nvidia runtime, yet Docker
    gives the container its GPUs. msmall must not refuse that machine."""
    reason = why_not_runnable()
    if reason:
        pytest.skip(f"no private Docker Engine here: {reason}")
    daemon = _start(PrivateDaemon(nvidia="hook"))
    try:
        tiny_vllm_image(daemon)  # enough to reach the GPU request; it has no vllm to run
        with contextlib.closing(daemon.client()) as cli:
            assert "nvidia" not in cli.info()["Runtimes"]
        # The toolkit's package puts the hook in /usr/bin, on msmall's PATH as on dockerd's.
        path = f"{daemon.bindir}{os.pathsep}{FAKES_DIR}{os.pathsep}{os.environ['PATH']}"
        args = serve_args("h100-bf16-vision", free_port, "--check", "--pull", "never")
        result = run(*args, env=env_for(daemon, PATH=path))
        assert "no NVIDIA runtime" not in result.stderr
        # Docker gave it every GPU (the prestart hook ran); then the tiny image had nothing to
        # exec: the init process (msmall runs containers with --init) exits 127, "command not
        # found", which msmall reports as the engine dying before it was ready.
        assert [c["NVIDIA_VISIBLE_DEVICES"] for c in daemon.hook_calls()] == ["all"], result.stderr
        assert result.returncode == 4, result.stderr
        (message,) = error_lines(result.stderr)[:1]
        assert message == "error: the container exited with code 127 before it was ready"
        assert "Traceback" not in result.stderr
        daemon.note_containers()
        assert containers(daemon) == []
    finally:
        _teardown(daemon)


def test_a_pull_that_cannot_reach_the_registry(dockerd: PrivateDaemon, free_port: int) -> None:
    # The private daemon's registry traffic goes to a closed port: dockerd 20.10 answers the
    # pull with HTTP 500 before any progress stream (the fake's broken pull fails in the stream).
    args = serve_args("h100-bf16-vision", free_port, "--vllm-version", "0.32.0", "--check")
    result = run(*args, env=env_for(dockerd))
    assert result.returncode == 4, result.stderr
    assert "msmall: pulling vllm/vllm-openai:v0.32.0" in result.stderr
    message, fix = error_lines(result.stderr)
    assert message.startswith("error: pulling vllm/vllm-openai:v0.32.0 failed: ")
    assert "connection refused" in message
    assert "network" in fix
    assert "Traceback" not in result.stderr
    assert containers(dockerd) == []


def test_pull_never_with_the_image_missing(dockerd: PrivateDaemon, free_port: int) -> None:
    with contextlib.closing(dockerd.client()) as cli:
        images_before = sorted(t for i in cli.images.list() for t in i.tags)
    args = serve_args("h100-bf16-vision", free_port, "--vllm-version", "0.32.0", "--pull", "never")
    result = run(*args, "--check", env=env_for(dockerd))
    assert result.returncode == 3, result.stderr
    message, fix = error_lines(result.stderr)
    assert "vllm/vllm-openai:v0.32.0 is not on this machine and --pull never was given" in message
    assert "docker pull vllm/vllm-openai:v0.32.0" in fix
    assert "pulling" not in result.stderr and "Traceback" not in result.stderr
    with contextlib.closing(dockerd.client()) as cli:
        assert sorted(t for i in cli.images.list() for t in i.tags) == images_before
    assert containers(dockerd) == []


def _leftover(daemon: PrivateDaemon, name: str, labels: dict[str, str], running: bool):
    """A container of that name from an earlier run (or from someone else): running (a
    `sleep`, nothing needs to serve) or exited."""
    with contextlib.closing(daemon.client()) as cli:
        container = cli.containers.create(
            VLLM_TAGS[0], ["infinity" if running else "0"], name=name, labels=labels,
            entrypoint=["sleep"],
        )  # fmt: skip
        if running:
            container.start()
            container.reload()
            assert container.status == "running"
            return container
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        container.reload()
        return container


def test_a_stale_container_with_the_name(dockerd: PrivateDaemon, free_port: int) -> None:
    profile, name = "h100-bf16-vision", "msmall-h100-bf16-vision"
    env = env_for(dockerd)

    # Ours, exited: replaced.
    old = _leftover(dockerd, name, {LABEL: profile}, running=False)
    assert old.status == "exited"
    replaced = run(*serve_args(profile, free_port, "--check", "--json"), env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["container_id"] != old.id
    assert containers(dockerd) == []

    # Ours, running: refused, untouched.
    running = _leftover(dockerd, name, {LABEL: profile}, running=True)
    refused_run = run(*serve_args(profile, free_port, "--check"), env=env)
    assert refused_run.returncode == 2, refused_run.stderr
    message, fix = error_lines(refused_run.stderr)
    assert f"already has a running container ({name})" in message
    assert f"msmall stop {profile}" in fix
    running.reload()
    assert running.status == "running"
    running.remove(force=True)

    # Someone else's, even exited: not ours to remove.
    foreign = _leftover(dockerd, name, {}, running=False)
    refused_foreign = run(*serve_args(profile, free_port, "--check"), env=env)
    assert refused_foreign.returncode == 2, refused_foreign.stderr
    assert f"docker rm -f {name}" in refused_foreign.stderr
    assert "Traceback" not in refused_foreign.stderr
    foreign.reload()
    assert foreign.status == "exited"
    foreign.remove()


# ---------------------------------------------------------------------------------------------
# Nothing is left in the daemons between tests (and on the machine at their teardown)


def test_nothing_is_left_behind(
    nvidia_dockerd: PrivateDaemon, plain_dockerd: PrivateDaemon
) -> None:
    daemons = (nvidia_dockerd, plain_dockerd)
    for daemon in daemons:
        with contextlib.closing(daemon.client()) as cli:
            assert cli.containers.list(all=True) == []
            assert {n.name for n in cli.networks.list()} == DEFAULT_NETWORKS
        assert daemon.leftover_processes()  # dockerd and its containerd, still up now
    # What each daemon leaves on the machine is checked at its teardown: plain_dockerd's above,
    # the shared toolkit daemon's in its session teardown (tests/conftest.py, teardown_checked).
