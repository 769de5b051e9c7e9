"""The fake Docker daemon, driven by the real docker SDK over a unix socket."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import psutil
import pytest

from conftest import DATA_DIR, FAKES_DIR
from fakes.docker_engine import (
    FakeDocker,
    normalize_image,
    parse_vllm_cmd,
    running_fake_docker,
)
from helpers import http_get

SAMPLES = DATA_DIR / "docker"
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
PYTHON_IMAGE = "python:3.11-slim"  # any image the fake does not emulate runs Cmd on the host


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDocker]:
    with running_fake_docker(tmp_path) as fake_docker:
        yield fake_docker


@pytest.fixture
def client(fake: FakeDocker) -> Iterator[docker.DockerClient]:
    docker_client = docker.DockerClient(base_url=fake.docker_host)
    yield docker_client
    docker_client.close()


def _wait_http_ok(url: str, within_s: float) -> httpx.Response:
    """Poll until the URL answers 200; connection refused means still loading."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            response = http_get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not 200 within {within_s}s")
        time.sleep(0.05)


def _read_log_until(container, needle: bytes, within_s: float) -> list[bytes]:
    """Chunks of a followed log until needle appears; the stream is closed at the deadline."""
    stream = container.logs(stream=True, follow=True)
    watchdog = threading.Timer(within_s, stream.close)
    watchdog.start()
    chunks: list[bytes] = []
    try:
        for chunk in stream:
            chunks.append(chunk)
            if needle in b"".join(chunks):
                break
    except Exception:  # the watchdog closing the socket mid-read
        pass
    finally:
        watchdog.cancel()
        stream.close()
    assert needle in b"".join(chunks), f"{needle!r} not in the log within {within_s}s"
    return chunks


def _vllm_run(client: docker.DockerClient, port: int, **kwargs):
    command = [
        "--model",
        "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        "--port",
        "8000",
        "--host",
        "0.0.0.0",
        "--served-model-name",
        "mistral-small-3.1",
        "--max-model-len",
        "32k",
        "--limit-mm-per-prompt",
        '{"image":4}',
        "--tool-call-parser",
        "mistral",
        "--enable-auto-tool-choice",
    ]
    return client.containers.run(
        VLLM_IMAGE,
        command,
        detach=True,
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
        ipc_mode="host",
        ports={"8000/tcp": ("127.0.0.1", port)},
        **kwargs,
    )


# ----------------------------------------------------------------------------- daemon


def test_ping_version_info_negotiate_like_a_real_daemon(fake, client):
    assert client.ping() is True
    version = client.version()
    assert tuple(map(int, version["ApiVersion"].split("."))) >= (1, 41)
    # DockerClient(version=None) asks /version and then prefixes every path with it.
    assert client.api._version == version["ApiVersion"]
    info = client.info()
    assert "nvidia" in info["Runtimes"]
    assert info["CDISpecDirs"] == ["/etc/cdi", "/var/run/cdi"]


@pytest.mark.parametrize(
    ("scenario", "runtimes", "cdi"),
    [("no-nvidia", {"runc", "io.containerd.runc.v2"}, ["/etc/cdi", "/var/run/cdi"]),
     ("no-cdi", {"runc", "io.containerd.runc.v2", "nvidia"}, [])],
)  # fmt: skip
def test_info_reflects_the_scenario(tmp_path, scenario, runtimes, cdi):
    with running_fake_docker(tmp_path, scenario) as fake:
        info = docker.DockerClient(base_url=fake.docker_host).info()
    assert set(info["Runtimes"]) == runtimes
    assert info["CDISpecDirs"] == cdi


def test_paths_with_and_without_the_version_prefix(fake):
    transport = httpx.HTTPTransport(uds=str(fake.socket_path))
    with httpx.Client(transport=transport, base_url="http://docker", trust_env=False) as http:
        for path in ("/_ping", "/v1.41/_ping", "/v1.47/_ping"):
            response = http.get(path)
            assert (response.status_code, response.text) == (200, "OK")
            assert response.headers["api-version"] == "1.47"
        too_new = http.get("/v1.99/info")
        assert too_new.status_code == 400
        assert "client version 1.99 is too new" in too_new.json()["message"]
        missing = http.get("/v1.47/containers/nope/json")
        assert (missing.status_code, missing.json()) == (
            404,
            {"message": "No such container: nope"},
        )


def test_tcp_mode_for_clients_that_cannot_use_a_socket(tmp_path):
    with running_fake_docker(tmp_path, tcp=True) as fake:
        assert fake.docker_host.startswith("tcp://127.0.0.1:")
        assert docker.DockerClient(base_url=fake.docker_host).ping() is True


def test_daemon_down_is_a_missing_socket(tmp_path):
    with running_fake_docker(tmp_path) as fake:
        docker_host = fake.docker_host
    assert not Path(docker_host.removeprefix("unix://")).exists()
    with pytest.raises(docker.errors.DockerException):
        docker.DockerClient(base_url=docker_host)


# ----------------------------------------------------------------------------- images


def test_pull_streams_progress_like_the_real_daemon(fake, client):
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(VLLM_IMAGE)
    events = list(client.api.pull("vllm/vllm-openai", tag="v0.33.0", stream=True, decode=True))
    assert events[0] == {"status": "Pulling from vllm/vllm-openai", "id": "v0.33.0"}
    statuses = [e.get("status", "") for e in events]
    assert "Pulling fs layer" in statuses and "Pull complete" in statuses
    downloading = [e for e in events if e.get("status") == "Downloading"]
    assert downloading
    assert all(
        0 < e["progressDetail"]["current"] <= e["progressDetail"]["total"] for e in downloading
    )
    assert statuses[-2].startswith("Digest: sha256:")
    assert statuses[-1] == "Status: Downloaded newer image for vllm/vllm-openai:v0.33.0"
    assert not any("error" in e for e in events)
    assert client.images.get(VLLM_IMAGE).tags == [VLLM_IMAGE]
    again = list(client.api.pull(VLLM_IMAGE, stream=True, decode=True))
    assert again[-1] == {"status": "Status: Image is up to date for vllm/vllm-openai:v0.33.0"}


def test_pull_stream_has_the_shape_of_the_captured_samples(fake):
    """Key order, CRLF framing and the \\u003e-escaped bar, compared with real captures."""
    sample = (SAMPLES / "images-create-pull-stream-docker19.txt").read_text().splitlines()
    real_downloading = next(line for line in sample if '"Downloading"' in line)
    real_layer = next(line for line in sample if '"Pulling fs layer"' in line)
    transport = httpx.HTTPTransport(uds=str(fake.socket_path))
    with httpx.Client(transport=transport, base_url="http://docker", trust_env=False) as http:
        raw = http.post("/v1.47/images/create", params={"fromImage": "alpine", "tag": "latest"})
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/json"
    lines = raw.text.split("\r\n")
    assert lines[-1] == ""
    first = (SAMPLES / "images-create-pull-stream-api141.txt").read_text().splitlines()
    assert lines[0] == next(line for line in first if line.startswith("{"))
    ours = next(line for line in lines if '"Downloading"' in line)
    assert list(json.loads(ours)) == list(json.loads(real_downloading))
    bar = r'"progress":"\[=*\\u003e *\] [\d.]+ [kMG]?B/[\d.]+ [kMG]?B"'
    assert re.search(bar, real_downloading) and re.search(bar, ours)
    assert list(json.loads(next(x for x in lines if "fs layer" in x))) == list(
        json.loads(real_layer)
    )


def test_missing_repository_or_tag_is_a_404_before_any_stream(tmp_path):
    missing = ["nosuch/image", "vllm/vllm-openai:v9.9.9"]
    with running_fake_docker(tmp_path, missing_images=missing) as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        with pytest.raises(docker.errors.ImageNotFound, match="repository does not exist"):
            client.images.pull("nosuch/image")
        with pytest.raises(docker.errors.NotFound, match="manifest unknown"):
            list(client.api.pull("vllm/vllm-openai", tag="v9.9.9", stream=True, decode=True))


def test_pull_error_arrives_in_band_after_http_200(tmp_path):
    with running_fake_docker(tmp_path, "pull-error") as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        # docker-py does not raise here: the error is one of the decoded entries.
        events = list(client.api.pull("vllm/vllm-openai", tag="v0.33.0", stream=True, decode=True))
        errors = [e for e in events if "error" in e]
        assert errors == [{"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"}]
        assert errors[0] is events[-1]
        assert any(e.get("status") == "Downloading" for e in events)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(VLLM_IMAGE)


def test_create_answers_404_for_a_missing_image_and_run_pulls_it(fake, client):
    with pytest.raises(docker.errors.ImageNotFound, match=r"No such image: alpine:3\.20"):
        client.api.create_container("alpine:3.20", ["true"])
    # containers.run catches ImageNotFound, pulls (non-streaming), and creates again.
    output = client.containers.run(
        "python:3.11", [sys.executable, "-c", "print('hi')"], remove=True
    )
    assert output == b"hi\n"
    assert "python:3.11" in fake.images


# ----------------------------------------------------------------------------- containers


def test_vllm_container_serves_on_the_published_port(fake, client, free_port):
    fake.add_image(VLLM_IMAGE)
    container = _vllm_run(
        client,
        free_port,
        name="msmall-vllm",
        labels={"msmall.deployment": "default", "msmall.backend": "docker"},
        volumes={"/srv/hf": {"bind": "/root/.cache/huggingface", "mode": "rw"}},
        environment={"HF_TOKEN": "hf_secret", "VLLM_API_KEY": "sk-local"},
    )
    # The exact spec the client sent, as recorded by the daemon.
    spec = fake.container("msmall-vllm")
    host_config = spec["HostConfig"]
    assert host_config["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host_config["IpcMode"] == "host"
    assert host_config["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(free_port)}]
    }
    assert host_config["Binds"] == ["/srv/hf:/root/.cache/huggingface:rw"]
    assert spec["Labels"] == {"msmall.deployment": "default", "msmall.backend": "docker"}
    assert spec["Env"] == ["HF_TOKEN=hf_secret", "VLLM_API_KEY=sk-local"]
    assert spec["Cmd"][:2] == ["--model", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    process = spec["Process"]
    assert process[process.index("--port") + 1] == str(free_port)
    assert process[process.index("--served-model-name") + 1] == "mistral-small-3.1"
    assert process[process.index("--max-model-len") + 1] == "32000"
    assert process[process.index("--max-images-per-prompt") + 1] == "4"

    # run(detach=True) returns the attrs read before start; reload() sees it running.
    assert container.status == "created"
    container.reload()
    state = container.attrs["State"]
    assert (state["Status"], state["Running"]) == ("running", True)
    assert psutil.pid_exists(state["Pid"])
    assert container.ports == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(free_port)}]}

    _wait_http_ok(f"http://127.0.0.1:{free_port}/health", within_s=20)
    # The container's Env reached the process: the key guards /v1/* as in vLLM.
    models_url = f"http://127.0.0.1:{free_port}/v1/models"
    assert http_get(models_url, timeout=5).status_code == 401
    headers = {"Authorization": "Bearer sk-local"}
    models = http_get(models_url, headers=headers, timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["mistral-small-3.1"]

    chunks = _read_log_until(container, b"Application startup complete.", within_s=10)
    # Frames are cut across lines: the client has to reassemble them.
    assert any(not chunk.endswith(b"\n") for chunk in chunks)
    streamed = b"".join(chunks)
    assert container.logs().startswith(streamed)
    assert any(b"Starting vLLM server on" in line for line in streamed.splitlines())

    listed = client.containers.list(filters={"label": "msmall.deployment"})
    assert [c.name for c in listed] == ["msmall-vllm"]
    assert client.containers.list(filters={"label": "msmall.deployment=default"})
    assert not client.containers.list(filters={"label": "msmall.deployment=other"})

    with pytest.raises(docker.errors.APIError) as conflict:
        client.containers.create(VLLM_IMAGE, ["--model", "x"], name="msmall-vllm")
    assert conflict.value.status_code == 409

    container.stop(timeout=5)
    container.reload()
    assert container.status == "exited"
    assert container.attrs["State"]["Running"] is False
    assert container.wait(timeout=5)["StatusCode"] == container.attrs["State"]["ExitCode"]
    assert not client.containers.list(filters={"label": "msmall.deployment"})
    assert client.containers.list(all=True, filters={"label": "msmall.deployment"})
    container.remove()
    with pytest.raises(docker.errors.NotFound, match="No such container"):
        client.containers.get("msmall-vllm")
    assert fake.live_pids() == []


def test_no_nvidia_start_fails_with_the_daemons_500(tmp_path, free_port):
    sample = (SAMPLES / "api-http500-could-not-select-device-driver.txt").read_text().strip()
    expected = sample.removeprefix("(HTTP code 500) server error - ")
    with running_fake_docker(tmp_path, "no-nvidia", images=[VLLM_IMAGE]) as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        with pytest.raises(docker.errors.APIError) as failure:
            _vllm_run(client, free_port, name="gpu-less")
        assert failure.value.status_code == 500
        assert failure.value.explanation == expected
        state = client.containers.get("gpu-less").attrs["State"]
        assert (state["Status"], state["ExitCode"], state["Error"]) == ("created", 128, expected)
        assert fake.live_pids() == []


def test_oom_container_exits_1_and_keeps_its_log(tmp_path, free_port):
    with running_fake_docker(tmp_path, "oom", images=[VLLM_IMAGE]) as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        container = _vllm_run(client, free_port)
        assert container.wait(timeout=20)["StatusCode"] == 1
        container.reload()
        state = container.attrs["State"]
        assert (state["Status"], state["Running"], state["ExitCode"]) == ("exited", False, 1)
        assert state["Pid"] == 0
        log = container.logs().decode()
        assert re.search(r"out of memory|Free memory on device", log, re.IGNORECASE)
        assert "--fail" in fake.containers[0]["Process"]


def test_streams_env_exit_codes_and_timestamps(fake, client):
    script = (
        "import os, sys; print('to stdout'); print('to stderr', file=sys.stderr);"
        " print(os.environ['HF_TOKEN']); sys.exit(3)"
    )
    container = client.containers.run(
        PYTHON_IMAGE, [sys.executable, "-c", script], detach=True, environment={"HF_TOKEN": "t0k"}
    )
    assert container.wait(timeout=10) == {"StatusCode": 3}
    assert container.logs(stderr=False) == b"to stdout\nt0k\n"
    assert container.logs(stdout=False) == b"to stderr\n"
    stamped = container.logs(stderr=False, timestamps=True).decode().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", line) for line in stamped)
    assert container.logs(tail=1, stderr=False) == b"t0k\n"
    # The wire format: 8-byte headers (stream id, big-endian length), stderr on stream 2.
    transport = httpx.HTTPTransport(uds=str(fake.socket_path))
    with httpx.Client(transport=transport, base_url="http://docker", trust_env=False) as http:
        raw = http.get(f"/v1.47/containers/{container.id}/logs", params={"stderr": 1}).content
    streams = []
    while raw:
        stream_id, size = struct.unpack(">BxxxL", raw[:8])
        streams.append(stream_id)
        raw = raw[8 + size :]
    assert streams == [2]
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run(PYTHON_IMAGE, [sys.executable, "-c", "raise SystemExit(5)"])
    assert failed.value.exit_status == 5


def test_follow_ends_with_the_container_and_misses_no_line(fake, client):
    script = "import time\nfor i in range(300):\n    print(f'line {i:03d}', flush=True)\n"
    script += "    time.sleep(0.001) if i % 50 == 0 else None\n"
    container = client.containers.run(PYTHON_IMAGE, [sys.executable, "-c", script], detach=True)
    stream = container.logs(stream=True, follow=True)
    # The deadline only guards against a hang; the stream must end by itself at exit.
    watchdog = threading.Timer(10, stream.close)
    watchdog.start()
    try:
        chunks = list(stream)
    finally:
        watchdog.cancel()
    text = b"".join(chunks).decode()
    assert text.splitlines() == [f"line {i:03d}" for i in range(300)]
    assert container.wait(timeout=5)["StatusCode"] == 0


def test_missing_executable_fails_start_like_runc(fake, client):
    with pytest.raises(docker.errors.APIError, match="executable file not found"):
        client.containers.run(PYTHON_IMAGE, ["no-such-binary-xyz"], detach=True, name="nobin")
    assert client.containers.get("nobin").attrs["State"]["ExitCode"] == 127


def test_remove_running_needs_force_and_kill_frees_the_process(fake, client, free_port):
    fake.add_image(VLLM_IMAGE)
    first = _vllm_run(client, free_port)
    with pytest.raises(docker.errors.APIError) as busy:
        _vllm_run(client, free_port, name="same-port")
    assert busy.value.status_code == 500 and "port is already allocated" in str(busy.value)
    pid = client.containers.get(first.id).attrs["State"]["Pid"]
    with pytest.raises(docker.errors.APIError) as running:
        first.remove()
    assert running.value.status_code == 409
    first.remove(force=True)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(first.id)


def test_ollama_image_runs_the_ollama_simulator(fake, client, free_port):
    fake.add_image("ollama/ollama:0.33.0")
    container = client.containers.run(
        "ollama/ollama:0.33.0",
        detach=True,
        ports={"11434/tcp": ("127.0.0.1", free_port)},
        environment={"OLLAMA_CONTEXT_LENGTH": "32768"},
    )
    answer = _wait_http_ok(f"http://127.0.0.1:{free_port}/", within_s=20)
    assert answer.text == "Ollama is running"
    assert fake.container(container.id)["Process"][-4:] == [
        "--host", "127.0.0.1", "--port", str(free_port)
    ]  # fmt: skip
    container.stop(timeout=5)
    assert container.wait(timeout=5)["StatusCode"] == 0


def test_shutdown_leaves_no_process_behind(tmp_path, free_port):
    with running_fake_docker(tmp_path, images=[VLLM_IMAGE]) as fake:
        client = docker.DockerClient(base_url=fake.docker_host)
        container = _vllm_run(client, free_port)
        _wait_http_ok(f"http://127.0.0.1:{free_port}/health", within_s=20)
        pid = client.containers.get(container.id).attrs["State"]["Pid"]
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert fake.live_pids() == [pid]
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []
    assert len(gone) == len(family)


# ----------------------------------------------------------------------------- vLLM flags


def test_vllm_flags_are_read_like_vllm_reads_them():
    model, flags = parse_vllm_cmd(
        ["--model=m/x", "--served-model-name", "a", "b", "--enable-auto-tool-choice",
         "--max_model_len", "32K", "--limit-mm-per-prompt.image", "0"]
    )  # fmt: skip
    assert model is None
    assert flags == {
        "model": "m/x",
        "served_model_name": ["a", "b"],
        "enable_auto_tool_choice": True,
        "max_model_len": "32K",
        "limit_mm_per_prompt.image": "0",
    }
    # A stray "serve" (the entrypoint already is `vllm serve`) becomes the model positional.
    assert parse_vllm_cmd(["serve", "--model", "m/x"])[0] == "serve"
    assert normalize_image("docker.io/library/alpine") == "alpine:latest"
    assert normalize_image("vllm/vllm-openai") == "vllm/vllm-openai:latest"


@pytest.mark.parametrize(
    ("limit", "expected"),
    [('{"image":0}', "--no-vision"), ("image=5", None)],
)
def test_limit_mm_per_prompt_formats(fake, client, free_port, limit, expected):
    fake.add_image(VLLM_IMAGE)
    command = ["--model", "m/x", "--limit-mm-per-prompt", limit]
    if expected is None:
        # vLLM >= 0.10 rejects the old `image=N` form in argparse: exit 2 with its usage line.
        container = client.containers.run(VLLM_IMAGE, command, detach=True)
        assert container.wait(timeout=10)["StatusCode"] == 2
        assert b"Value image=5 cannot be converted" in container.logs()
        return
    fake.settings.simulator_cmd = [sys.executable, "-c", "pass"]
    container = client.containers.run(
        VLLM_IMAGE, command, detach=True, ports={"8000/tcp": ("127.0.0.1", free_port)}
    )
    assert container.wait(timeout=10)["StatusCode"] == 0
    assert expected in fake.container(container.id)["Process"]


# ----------------------------------------------------------------------------- as a program


def _accepts(path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def test_runs_as_a_program_on_a_socket(tmp_path):
    sock = tmp_path / "d.sock"
    program = subprocess.Popen(
        [sys.executable, str(FAKES_DIR / "docker_engine.py"), "--socket", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert program.stderr is not None
        deadline = time.monotonic() + 15
        # Bounded: a program that never prints must fail the test, not hang readline().
        ready, _, _ = select.select([program.stderr], [], [], 15)
        assert ready, "the fake daemon printed nothing"
        assert "DOCKER_HOST=unix://" in program.stderr.readline().decode()
        # The line comes before uvicorn listens, and the socket file exists a moment before
        # listen() too: only a connection that succeeds says the daemon is up.
        while not _accepts(sock):
            assert program.poll() is None, "the fake daemon exited"
            assert time.monotonic() < deadline, "the fake daemon never listened"
            time.sleep(0.02)
        client = docker.DockerClient(base_url=f"unix://{sock}")
        assert client.ping() is True
        assert client.api.get(client.api._url("/_fake/containers")).json() == []
    finally:
        program.send_signal(signal.SIGTERM)
        assert program.wait(timeout=10) == 0
    assert not sock.exists()
