"""The Docker backend end to end: the real docker SDK over HTTP against the fake Engine API.

`tests/fakes/docker_engine.py` answers the Engine API on a unix socket and runs each
vllm/vllm-openai container as the simulator on the published host port, so the whole
serve -> ready -> smoke -> stop path runs: through the CLI as real subprocesses (DOCKER_HOST in
their environment) where exit codes, stderr and signals matter, in-process through
`launcher.serve` for the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from conftest import SIGINT_DISPOSITIONS, msmall_cmd
from fakes.docker_engine import FakeDocker, running_fake_docker
from helpers import LiveServe, path_without_nvidia_hook
from msmall.backends import PlanOptions, build_plan
from msmall.errors import ConfigError, EngineUnavailable
from msmall.launcher import ServeRequest, serve
from msmall.profiles import load_profile

WAIT_S = 30.0
CONTAINER = "msmall-demo"
SECRET = "hf_msmall_docker_test_secret_42"


# ---------------------------------------------------------------------------------------------
# Helpers


def demo_plan(port: int):
    """The plan msmall builds for `serve -p demo -b docker --port PORT` in this environment."""
    return build_plan(load_profile("demo"), PlanOptions(backend="docker", port=port))


def demo_image() -> str:
    image = demo_plan(8000).image
    assert image is not None
    return image


def serve_args(port: int, *extra: str) -> list[str]:
    return ["serve", "--profile", "demo", "--backend", "docker", "--port", str(port), *extra]


def env_for(fake: FakeDocker | str, **extra: str) -> dict[str, str]:
    host = fake if isinstance(fake, str) else fake.docker_host
    return {**os.environ, "DOCKER_HOST": host, **extra}


def run(*args: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        msmall_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def error_lines(stderr: str) -> list[str]:
    """The error message and its fix: what the CLI prints from `error:` on, log tail excluded."""
    text = stderr[stderr.index("error:") :]
    return [line for line in text.splitlines() if line.strip() and "  | " not in line]


def simulators_on(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "msmall.simulator" in cmd and str(port) in cmd:
            found.append(proc)
    return found


def wait_until(condition: Callable[[], Any], what: str, within_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s} s")
        time.sleep(0.05)


def assert_nothing_left(fake: FakeDocker, port: int) -> None:
    """No container (running or not) in the daemon, no container process, no simulator."""
    with contextlib.closing(fake.client()) as client:
        assert client.containers.list(all=True) == []
    wait_until(lambda: fake.live_pids() == [], "container processes gone", 10)
    wait_until(lambda: simulators_on(port) == [], "no simulator left", 10)


def stage_texts(recorder: Recorder) -> list[str]:
    return [text for kind, text, *_ in recorder.events if kind == "stage"]


class Recorder:
    """A Reporter that keeps everything, for in-process runs."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, text: str) -> None:
        self.events.append(("stage", text))

    def info(self, text: str) -> None:
        self.events.append(("info", text))

    def warn(self, text: str) -> None:
        self.events.append(("warn", text))

    def log_lines(self, lines: list[str]) -> None:
        pass

    def activity(self, text: str) -> None:
        self.events.append(("activity", text))

    def progress(self, label: str, completed: int | None, total: int | None) -> None:
        self.events.append(("progress", label, completed, total))

    def check(self, result: Any) -> None:
        self.events.append(("check", result.name, result.ok))

    def close(self) -> None:
        pass


@pytest.fixture
def fake_docker(tmp_path: Path) -> Iterator[Callable[..., FakeDocker]]:
    """Start fake daemons; each one is closed after the test with every container process."""
    with contextlib.ExitStack() as stack:
        count = itertools.count()

        def start(scenario: str = "default", **knobs: Any) -> FakeDocker:
            workdir = tmp_path / f"docker{next(count)}"
            return stack.enter_context(running_fake_docker(workdir, scenario, **knobs))

        yield start


@pytest.fixture
def live() -> Iterator[Callable[..., LiveServe]]:
    started: list[LiveServe] = []

    def start(args: list[str], env: dict[str, str], sigint: str = "default") -> LiveServe:
        lp = LiveServe(args, env, sigint=sigint)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        lp.kill()


# ---------------------------------------------------------------------------------------------
# 1. --check: pull, the planned container, smoke, stop and remove


def test_check_runs_the_planned_container_and_removes_it(
    fake_docker, free_port: int, isolated_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    fake = fake_docker()
    plan = demo_plan(free_port)
    spec = plan.container
    assert spec is not None and "HF_TOKEN" in spec.environment

    result = run(*serve_args(free_port, "--check", "--json"), env=env_for(fake))
    assert result.returncode == 0, result.stderr

    # The pull, with its progress, on stderr.
    assert f"msmall: pulling {plan.image}" in result.stderr
    assert "pull: pulling" in result.stderr and "layers" in result.stderr
    assert plan.image in fake.images

    # Exactly the plan's spec reached the daemon.
    created = fake.containers
    assert len(created) == 1
    sent = created[0]
    assert sent["Name"] == spec.name == CONTAINER
    assert sent["Image"] == spec.image == plan.image
    assert sent["Cmd"] == spec.command
    assert sent["Cmd"][:2] == ["--model", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    assert "serve" not in sent["Cmd"]
    assert sent["Entrypoint"] is None  # the image's own `vllm serve`
    host_config = sent["HostConfig"]
    assert host_config["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host_config["IpcMode"] == "host"
    assert host_config["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(free_port)}]
    }
    hf_cache = isolated_world / "hf"
    assert host_config["Binds"] == [f"{hf_cache}:/root/.cache/huggingface:rw"]
    assert hf_cache.is_dir()  # made by msmall, not left for the daemon to create as root
    assert sent["Labels"] == {"msmall.deployment": "demo", "msmall.profile": "demo"}
    assert f"HF_TOKEN={SECRET}" in sent["Env"]
    assert sorted(sent["Env"]) == sorted(f"{k}={v}" for k, v in spec.environment.items())

    # Smoke checks passed through the published port.
    report = json.loads(result.stdout)
    assert report["backend"] == "docker" and report["container_id"] == sent["Id"]
    assert report["base_url"] == f"http://127.0.0.1:{free_port}"
    assert {c["name"]: c["ok"] for c in report["smoke"]["checks"]} == {
        "chat": True, "stream": True, "tools": True, "vision": True,
    }  # fmt: skip
    assert "all checks passed" in result.stderr

    # The token went to the container only: never printed, never written down.
    assert SECRET not in result.stdout + result.stderr
    written = "".join(
        p.read_text(errors="replace") for p in (isolated_world / "state").rglob("*") if p.is_file()
    )
    assert SECRET not in written
    assert "Application startup complete." in written  # the container's log was captured

    assert_nothing_left(fake, free_port)


# ---------------------------------------------------------------------------------------------
# 2. --pull never | missing | always


def test_pull_never_with_the_image_missing_refuses(fake_docker, free_port: int) -> None:
    fake = fake_docker()
    result = run(*serve_args(free_port, "--pull", "never", "--check"), env=env_for(fake))
    assert result.returncode == 3, result.stderr
    message, fix = error_lines(result.stderr)
    assert "is not on this machine and --pull never was given" in message
    assert f"docker pull {demo_image()}" in fix
    assert "pulling" not in result.stderr
    assert fake.containers == [] and fake.images == []


def test_pull_missing_skips_a_present_image_and_always_pulls(
    fake_docker, free_port: int, monkeypatch: pytest.MonkeyPatch, isolated_world: Path
) -> None:
    image = demo_image()
    fake = fake_docker(images=[image])
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)

    def check(pull: str) -> Recorder:
        recorder = Recorder()
        request = ServeRequest(
            profile="demo", options=PlanOptions(backend="docker", port=free_port),
            smoke=False, check_only=True, pull=pull,
        )  # fmt: skip
        result = serve(request, recorder)
        assert result["container_id"] == fake.containers[-1]["Id"]
        return recorder

    present = check("missing")
    assert not any(text.startswith("pulling") for text in stage_texts(present))
    assert not any(kind == "progress" for kind, *_ in present.events)

    # Asked for even though present: the daemon answers "Image is up to date" (no layers).
    always = check("always")
    assert f"pulling {image}" in stage_texts(always)

    # One run per log file: the earlier run's lines are kept aside, not replayed.
    log = isolated_world / "state" / "logs" / "demo.log"
    assert log.read_text().count("--- msmall: starting") == 1
    assert log.with_name("demo.log.1").read_text().count("--- msmall: starting") == 1
    assert_nothing_left(fake, free_port)


# ---------------------------------------------------------------------------------------------
# 3-6. Failures: no daemon, no NVIDIA runtime, a broken pull, an engine that dies


def test_daemon_unreachable_is_one_plain_error(free_port: int) -> None:
    result = run(*serve_args(free_port, "--check"), env=env_for("unix:///nonexistent.sock"))
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert 1 <= len(lines) <= 2, result.stderr
    assert (
        "cannot reach the Docker daemon at unix:///nonexistent.sock (no socket there)" in lines[0]
    )
    assert "Start Docker" in result.stderr
    assert simulators_on(free_port) == []


def test_no_nvidia_runtime_refused_then_forced_start_fails(fake_docker, free_port: int) -> None:
    fake = fake_docker("no-nvidia", images=[demo_image()])
    env = env_for(fake, PATH=path_without_nvidia_hook())
    refused = run(*serve_args(free_port, "--check"), env=env)
    assert refused.returncode == 3, refused.stderr
    message, fix = error_lines(refused.stderr)
    assert "Docker has no NVIDIA runtime" in message
    assert "NVIDIA Container Toolkit" in fix and "nvidia-ctk runtime configure" in fix
    assert fake.containers == []  # refused before anything was created

    forced = run(*serve_args(free_port, "--check", "--force"), env=env)
    assert forced.returncode == 3, forced.stderr
    assert "--force: trying anyway" in forced.stderr
    message, fix = error_lines(forced.stderr)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in message
    assert "NVIDIA Container Toolkit" in fix
    assert "Traceback" not in forced.stderr
    assert len(fake.containers) == 1  # created, failed to start, removed
    assert_nothing_left(fake, free_port)


def test_error_mid_pull_creates_nothing(fake_docker, free_port: int) -> None:
    fake = fake_docker("pull-error")
    result = run(*serve_args(free_port, "--check"), env=env_for(fake))
    assert result.returncode == 4, result.stderr
    message, *_ = error_lines(result.stderr)
    assert f"pulling {demo_image()} failed: unexpected EOF" in message
    assert "Traceback" not in result.stderr
    assert fake.containers == [] and fake.images == []


def test_container_dying_of_oom_is_diagnosed_then_removed(
    fake_docker, free_port: int, isolated_world: Path
) -> None:
    fake = fake_docker("oom", images=[demo_image()])
    result = run(*serve_args(free_port), env=env_for(fake))
    assert result.returncode == 4, result.stderr
    message, fix = error_lines(result.stderr)[:2]
    assert "the container exited with code 1 before it was ready" in message
    assert "out of memory" in message.lower()
    assert "--profile" in fix
    # The last lines of the container's own log follow, read before it was removed.
    tail = [line for line in result.stderr.splitlines() if "  | " in line]
    assert tail and any("memory" in line.lower() for line in tail)
    assert "Traceback" not in result.stderr.split("  | ")[0]  # only the engine's, in its log
    assert "out of memory" in (isolated_world / "state" / "logs" / "demo.log").read_text()
    assert len(fake.containers) == 1
    assert_nothing_left(fake, free_port)


# ---------------------------------------------------------------------------------------------
# 7. Ctrl-C while loading and after ready


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
@pytest.mark.parametrize("when", ["loading", "ready"])
def test_ctrl_c_stops_and_removes_the_container(
    fake_docker, live, free_port: int, when: str, sigint: str
):
    knobs = {"simulator_args": ["--startup-delay", "60"]} if when == "loading" else {}
    fake = fake_docker(images=[demo_image()], **knobs)
    env = env_for(fake)
    lp = live(serve_args(free_port), env, sigint)
    if when == "loading":
        lp.wait_for("waiting for")
        wait_until(fake.live_pids, "the container's process started")
    else:
        lp.wait_for("ready at")
        ps = json.loads(run("ps", "--json", env=env).stdout)
        # A foreground serve is visible to `msmall ps` too.
        assert [(d["name"], d["container_id"]) for d in ps] == [("demo", fake.containers[0]["Id"])]
    lp.proc.send_signal(signal.SIGINT)
    assert lp.finish() == 130
    assert any("interrupted" in line for line in lp.seen), "".join(lp.seen)
    assert "Traceback" not in "".join(lp.seen)
    assert_nothing_left(fake, free_port)
    assert json.loads(run("ps", "--json", env=env).stdout) == []


# ---------------------------------------------------------------------------------------------
# 8-9. --detach, ps / logs / stop, and finding a container by its label


def test_detach_ps_logs_stop(fake_docker, free_port: int, isolated_world: Path) -> None:
    fake = fake_docker(images=[demo_image()])
    env = env_for(fake)
    started = run(*serve_args(free_port, "--detach", "--json"), env=env)
    try:
        assert started.returncode == 0, started.stderr
        container_id = json.loads(started.stdout)["container_id"]
        assert container_id == fake.containers[0]["Id"]

        ps = json.loads(run("ps", "--json", env=env).stdout)
        assert [(d["name"], d["container_id"], d["running"], d["health"]) for d in ps] == [
            ("demo", container_id, True, "ready")
        ]

        # Once msmall has exited only the daemon has the container's log: drop the file.
        (isolated_world / "state" / "logs" / "demo.log").unlink()
        logs = run("logs", "demo", "-n", "50", env=env)
        assert logs.returncode == 0, logs.stderr
        lines = logs.stdout.splitlines()
        assert 0 < len(lines) <= 50
        assert any('"POST /v1/chat/completions HTTP/1.1" 200' in line for line in lines)

        # Daemon out of reach: the container's state is unknown, not "gone", and the record
        # survives a failed stop so the container can still be stopped later.
        away = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
        ps_away = json.loads(run("ps", "--json", env=away).stdout)
        assert [(d["name"], d["running"], d["health"]) for d in ps_away] == [
            ("demo", None, "unknown")
        ]
        stop_away = run("stop", "demo", env=away)
        assert stop_away.returncode == 4
        assert "Docker daemon" in stop_away.stderr
        assert (isolated_world / "state" / "deployments" / "demo.json").exists()
    finally:
        stopped = run("stop", "demo", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "demo: stopped and removed container" in stopped.stdout
    assert json.loads(run("ps", "--json", env=env).stdout) == []
    assert_nothing_left(fake, free_port)


def test_container_found_by_label_without_its_record(
    fake_docker, free_port: int, isolated_world: Path
) -> None:
    fake = fake_docker(images=[demo_image()])
    env = env_for(fake)
    started = run(*serve_args(free_port, "--detach", "--json", "--no-smoke"), env=env)
    try:
        assert started.returncode == 0, started.stderr
        container_id = json.loads(started.stdout)["container_id"]
        shutil.rmtree(isolated_world / "state" / "deployments")

        ps = json.loads(run("ps", "--json", env=env).stdout)
        assert len(ps) == 1
        found = ps[0]
        assert (found["name"], found["container_id"]) == ("demo", container_id)
        assert (found["running"], found["health"]) == (True, "ready")
        assert found["base_url"] == f"http://127.0.0.1:{free_port}"
        assert "found by label" in found["status"]

        logs = run("logs", "demo", "-n", "5", env=env)
        assert logs.returncode == 0, logs.stderr
        assert len(logs.stdout.splitlines()) == 5
    finally:
        stopped = run("stop", "demo", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped container found by label" in stopped.stdout
    assert json.loads(run("ps", "--json", env=env).stdout) == []
    assert_nothing_left(fake, free_port)


# ---------------------------------------------------------------------------------------------
# 10. A container already named msmall-<deployment>


def _leftover(fake: FakeDocker, port: int, labels: dict[str, str], running: bool):
    """A container of that name from an earlier run (or from someone else)."""
    client = fake.client()
    image = demo_image()
    if running:
        return client.containers.run(
            image, ["--model", "x"], name=CONTAINER, labels=labels, detach=True,
            ports={"8000/tcp": ("127.0.0.1", port)},
        )  # fmt: skip
    # Runs to completion at once: a container that has exited.
    fake.settings.simulator_cmd = [sys.executable, "-c", "pass"]
    try:
        container = client.containers.run(
            image, ["--model", "x"], name=CONTAINER, labels=labels, detach=True
        )
        assert container.wait(timeout=10)["StatusCode"] == 0
    finally:
        fake.settings.simulator_cmd = [sys.executable, "-m", "msmall.simulator"]
    return container


def test_stopped_leftover_of_the_same_deployment_is_replaced(
    fake_docker, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_docker(images=[demo_image()])
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
    old = _leftover(fake, free_port, {"msmall.deployment": "demo"}, running=False)
    request = ServeRequest(
        profile="demo", options=PlanOptions(backend="docker", port=free_port),
        smoke=False, check_only=True,
    )  # fmt: skip
    result = serve(request, Recorder())
    assert result["container_id"] != old.id
    assert [c["Name"] for c in fake.containers] == [CONTAINER, CONTAINER]
    with contextlib.closing(fake.client()) as client, pytest.raises(docker.errors.NotFound):
        client.containers.get(old.id)
    assert_nothing_left(fake, free_port)


def test_running_or_foreign_container_with_the_name_is_refused(
    fake_docker, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_docker(images=[demo_image()])
    env = env_for(fake)
    # Ours and still running, on the very port asked for: the answer is "stop it", not "port in
    # use".
    running = _leftover(fake, free_port, {"msmall.deployment": "demo"}, running=True)
    refused = run(*serve_args(free_port, "--check"), env=env)
    assert refused.returncode == 2, refused.stderr
    message, fix = error_lines(refused.stderr)
    assert f"already has a running container ({CONTAINER})" in message
    assert "msmall stop demo" in fix
    running.reload()
    assert running.status == "running"  # untouched
    running.remove(force=True)

    # Someone else's, even stopped, is not ours to remove.
    foreign = _leftover(fake, free_port, {}, running=False)
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
    request = ServeRequest(
        profile="demo", options=PlanOptions(backend="docker", port=free_port), check_only=True
    )
    with pytest.raises(ConfigError) as failure:
        serve(request, Recorder())
    assert failure.value.exit_code == 2
    assert f"docker rm -f {CONTAINER}" in (failure.value.fix or "")
    foreign.reload()
    assert foreign.status == "exited"
    assert len(fake.containers) == 2  # msmall created nothing
    foreign.remove()
    assert_nothing_left(fake, free_port)


def test_gpu_runtime_detection_reads_docker_info() -> None:
    from msmall.runtimes.container import gpu_runtime_problem

    assert gpu_runtime_problem({"Runtimes": {"runc": {}, "nvidia": {}}}) is None
    cdi_found = {"ID": "nvidia.com/gpu=all", "Source": "cdi"}
    assert gpu_runtime_problem({"Runtimes": {"runc": {}}, "DiscoveredDevices": [cdi_found]}) is None
    # The default CDI directories are listed whether or not a GPU spec is in them.
    problem = gpu_runtime_problem({"Runtimes": {"runc": {}}, "CDISpecDirs": ["/etc/cdi"]})
    assert problem and "runtimes: runc" in problem


def test_unknown_tag_is_refused_before_any_stream(
    fake_docker, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_docker(missing_images=[demo_image()])
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
    request = ServeRequest(
        profile="demo", options=PlanOptions(backend="docker", port=free_port), check_only=True
    )
    with pytest.raises(EngineUnavailable) as failure:
        serve(request, Recorder())
    assert failure.value.exit_code == 4
    assert "manifest unknown" in failure.value.message
    assert "--vllm-version" in (failure.value.fix or "")
    assert fake.containers == []


# ---------------------------------------------------------------------------------------------
# docs/docker.md shows what msmall prints


def test_docs_show_the_docker_run_line_of_every_gpu_profile(
    monkeypatch: pytest.MonkeyPatch, isolated_world: Path
) -> None:
    from conftest import REPO_ROOT
    from msmall.profiles import profile_names

    monkeypatch.setenv("HF_TOKEN", SECRET)
    docs = (REPO_ROOT / "docs" / "docker.md").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    gpu_profiles = [n for n in profile_names() if load_profile(n).hardware.gpu_count > 0]
    assert len(gpu_profiles) >= 4
    for name in gpu_profiles:
        plan = build_plan(load_profile(name), PlanOptions(backend="docker"))
        # The page shows the host side of the cache mount as ~/.cache/huggingface.
        shown = plan.docker_run().replace(
            f"-v {isolated_world / 'hf'}:", "-v ~/.cache/huggingface:"
        )
        assert f"--profile {name} --backend docker --dry-run\n" in docs, name
        assert f"# profile {name}, backend docker, vLLM {plan.engine_version}\n{shown}\n" in docs, (
            f"docs/docker.md is out of date for {name}: regenerate its block with "
            f"`HF_TOKEN=x msmall serve --profile {name} --backend docker --dry-run`"
        )
        # The README shows the default model's profiles; docs/docker.md shows every one.
        if plan.model == "mistral-small-3.1":
            assert (
                f"# profile {name}, backend docker, vLLM {plan.engine_version}\n{shown}\n" in readme
            ), f"README's Docker section is out of date for {name}"
        assert SECRET not in shown


@pytest.mark.parametrize(("scenario", "tag"), [("1x4090", "v0.33.0-cu129"), ("h100", "v0.33.0")])
def test_image_tag_follows_the_host_driver(
    fake_docker,
    fakes_on_path,
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    tag: str,
) -> None:
    # R550 cannot run the CUDA 13 images vLLM ships from 0.20 on; R590 can.
    fake = fake_docker()
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "nvidia-smi")
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", scenario)
    request = ServeRequest(
        profile="demo", options=PlanOptions(backend="docker", port=free_port),
        smoke=False, check_only=True,
    )  # fmt: skip
    result = serve(request, Recorder())
    assert result["image"] == f"vllm/vllm-openai:{tag}"
    assert fake.containers[-1]["Image"] == f"vllm/vllm-openai:{tag}"
    assert_nothing_left(fake, free_port)


def test_profile_gpu_ids_become_device_ids(
    fake_docker, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_docker(images=[demo_image()])
    monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
    request = ServeRequest(
        profile="demo", overrides=["gpu_ids=[1]"],
        options=PlanOptions(backend="docker", port=free_port), smoke=False, check_only=True,
    )  # fmt: skip
    serve(request, Recorder())
    (device_request,) = fake.containers[-1]["HostConfig"]["DeviceRequests"]
    assert device_request["DeviceIDs"] == ["1"]
    assert device_request["Capabilities"] == [["gpu"]]
    assert_nothing_left(fake, free_port)
