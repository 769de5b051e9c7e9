"""`msmall serve` end to end on the built-in simulator: real subprocesses, real HTTP on 127.0.0.1.

Each test starts the real CLI; the demo profile's server is the simulator, whose --fail modes
stand in for the engine failures a GPU machine would produce.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import SIGINT_DISPOSITIONS, msmall_cmd
from helpers import WAIT_S, LiveServe, http_get


def run(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None):
    return subprocess.run(
        msmall_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def fail_args(*modes: str) -> list[str]:
    knobs: list[str] = []
    for mode in modes:
        knobs += ["--fail", mode]
    return ["--set", f"extra_args={json.dumps(knobs)}"]


def simulators_on(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "msmall.simulator" in cmd and str(port) in cmd:
            found.append(proc)
    return found


def assert_nothing_left(port: int) -> None:
    deadline = time.monotonic() + 10
    while simulators_on(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert simulators_on(port) == [], "a simulator process was left running"


@pytest.fixture
def live():
    started: list[LiveServe] = []

    def start(*args: str, sigint: str = "default") -> LiveServe:
        lp = LiveServe(list(args), sigint=sigint)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        children = lp.server_children()
        lp.kill()
        for child in children:
            if child.is_running():
                child.kill()


def test_check_runs_every_smoke_check_and_stops(free_port: int) -> None:
    result = run("serve", "--profile", "demo", "--port", str(free_port), "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["base_url"] == f"http://127.0.0.1:{free_port}"
    checks = {c["name"]: c for c in report["smoke"]["checks"]}
    assert set(checks) == {"chat", "stream", "tools", "vision"}
    assert all(c["ok"] for c in checks.values())
    assert "get_weather" in checks["tools"]["detail"]
    assert report["ready_after_s"] < 20
    assert_nothing_left(free_port)


def test_tool_calls_as_text_fail_with_the_fix(free_port: int) -> None:
    result = run(
        "serve", "-p", "demo", "--port", str(free_port), "--check", *fail_args("tools-as-text")
    )
    assert result.returncode == 5, result.stderr
    assert "tool call came back as text" in result.stderr
    assert "--tool-call-parser mistral --enable-auto-tool-choice" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(free_port)


def test_missing_vision_fails(free_port: int) -> None:
    result = run(
        "serve", "-p", "demo", "--port", str(free_port), "--check", *fail_args("no-vision")
    )
    assert result.returncode == 5, result.stderr
    assert "vision: HTTP 400" in result.stderr
    assert "--set vision=true" in result.stderr
    assert_nothing_left(free_port)


def test_vision_off_skips_the_image_check(free_port: int) -> None:
    result = run(
        "serve",
        "-p",
        "demo",
        "--port",
        str(free_port),
        "--check",
        "--json",
        "--set",
        "vision=false",
    )
    assert result.returncode == 0, result.stderr
    vision = next(c for c in json.loads(result.stdout)["smoke"]["checks"] if c["name"] == "vision")
    assert vision["skipped"] is True


@pytest.mark.parametrize(
    ("mode", "cause", "fix"),
    [
        ("oom-on-load", "out of memory", "--profile"),
        ("low-free-memory", "is free on cuda:0", "Stop the other processes"),
        ("kv-too-small", "KV cache", "--set max_model_len="),
    ],
)
def test_engine_dying_while_loading_is_diagnosed(
    free_port: int, mode: str, cause: str, fix: str
) -> None:
    result = run("serve", "-p", "demo", "--port", str(free_port), *fail_args(mode))
    assert result.returncode == 4, result.stderr
    first_lines = result.stderr.split("error:", 1)[1].splitlines()
    assert "exited with code 1 before it was ready" in first_lines[0]
    assert cause.lower() in first_lines[0].lower()
    assert fix in first_lines[1]
    assert "last " in result.stderr and "| " in result.stderr  # the log tail follows
    assert "Traceback (most recent call last)" not in result.stderr.split("| ", 1)[0]
    assert_nothing_left(free_port)


def test_detach_ps_logs_health_stop(free_port: int) -> None:
    started = run("serve", "-p", "demo", "--port", str(free_port), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    pid = info["pid"]
    assert psutil.pid_exists(pid)
    try:
        ps = json.loads(run("ps", "--json").stdout)
        assert [(d["name"], d["running"], d["health"]) for d in ps] == [("demo", True, "ready")]

        logs = run("logs", "demo", "-n", "200")
        assert logs.returncode == 0
        assert "Application startup complete." in logs.stdout

        health = run("health", info["openai_base_url"], "--json")
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["ok"] is True

        again = run(
            "serve",
            "-p",
            "demo",
            "--port",
            str(free_port + 1 if free_port < 65535 else 1025),
            "--detach",
        )
        assert again.returncode == 2
        assert "already running" in again.stderr
    finally:
        stopped = run("stop", "demo")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert json.loads(run("ps", "--json").stdout) == []
    assert_nothing_left(free_port)


def test_stale_record_is_shown_and_cleaned(free_port: int) -> None:
    started = run("serve", "-p", "demo", "--port", str(free_port), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=10) if psutil.pid_exists(pid) else None
    ps = json.loads(run("ps", "--json").stdout)
    assert ps[0]["running"] is False and ps[0]["status"].startswith("stale")
    stopped = run("stop", "demo")
    assert stopped.returncode == 0
    assert "stale" in stopped.stdout
    assert json.loads(run("ps", "--json").stdout) == []


def test_stop_unknown_name_lists_nothing_and_exits_2() -> None:
    result = run("stop", "nope")
    assert result.returncode == 2
    assert "no deployment named 'nope'" in result.stderr


def test_port_taken_is_refused_before_starting(free_port: int) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port))
        busy.listen()
        result = run("serve", "-p", "demo", "--port", str(free_port), "--check")
    assert result.returncode == 3
    assert f"port {free_port}" in result.stderr and "--port" in result.stderr
    assert simulators_on(free_port) == []


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_loading_leaves_nothing(live, free_port: int, sig: int, sigint: str):
    """Also when msmall starts with SIGINT ignored (a script's background job, some CI)."""
    lp = live(
        "serve", "-p", "demo", "--port", str(free_port),
        "--set", 'extra_args=["--startup-delay", "60"]', sigint=sigint,
    )  # fmt: skip
    lp.wait_for("waiting for")
    deadline = time.monotonic() + WAIT_S
    while not lp.server_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = lp.server_children()
    assert children, "the simulator never started"
    lp.proc.send_signal(sig)
    assert lp.finish() == 130, "".join(lp.seen)
    assert any("interrupted" in line for line in lp.seen)
    assert "Traceback" not in "".join(lp.seen)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert_nothing_left(free_port)


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
def test_interrupt_after_ready_stops_the_server(live, free_port: int, sigint: str) -> None:
    lp = live("serve", "-p", "demo", "--port", str(free_port), sigint=sigint)
    lp.wait_for("ready at")
    children = lp.server_children()
    assert children
    ps = json.loads(run("ps", "--json").stdout)
    assert [d["name"] for d in ps] == ["demo"]  # a foreground serve is visible to `msmall ps`
    lp.proc.send_signal(signal.SIGINT)
    assert lp.finish() == 130
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert json.loads(run("ps", "--json").stdout) == []


def test_server_exiting_after_ready_is_reported(live, free_port: int) -> None:
    lp = live(
        "serve",
        "-p",
        "demo",
        "--port",
        str(free_port),
        "--no-smoke",
        *fail_args("exit-after-ready"),
    )
    assert lp.finish() == 4
    text = "".join(lp.seen)
    assert "exited with code" in text
    assert_nothing_left(free_port)


def test_api_key_is_used_and_never_shown(free_port: int, isolated_world: Path) -> None:
    secret = "sk-msmall-test-secret-123"
    env = {**os.environ, "MSMALL_API_KEY": secret}
    result = run(
        "serve", "-p", "demo", "--port", str(free_port), "--host", "0.0.0.0", "--detach", "--json",
        env=env,
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        assert secret not in result.stdout + result.stderr
        state_text = "".join(
            p.read_text() for p in (isolated_world / "state").rglob("*") if p.is_file()
        )
        assert secret not in state_text
        # The key is really enforced on /v1.
        denied = run("health", f"http://127.0.0.1:{free_port}")
        assert denied.returncode == 5
        allowed = run("health", f"http://127.0.0.1:{free_port}", "--api-key", secret)
        assert allowed.returncode == 0, allowed.stderr
        assert secret not in allowed.stdout + allowed.stderr
    finally:
        run("stop", "--all")
    assert_nothing_left(free_port)


def test_simulate_command_runs_the_simulator_in_the_foreground(free_port: int) -> None:
    import httpx

    proc = subprocess.Popen(
        msmall_cmd("simulate", "--flavor", "ollama", "--port", str(free_port), "--quiet"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = http_get(f"http://127.0.0.1:{free_port}/", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert answer is not None and answer.text == "Ollama is running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_simulate_rejects_an_unknown_flavor() -> None:
    result = run("simulate", "--flavor", "tgi")
    assert result.returncode == 2
    assert "--flavor must be vllm or ollama" in result.stderr


def test_logs_follow_prints_new_lines_and_ends_with_the_server(free_port: int) -> None:

    started = run("serve", "-p", "demo", "--port", str(free_port), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    follow = subprocess.Popen(
        msmall_cmd("logs", "demo", "-f", "-n", "0"), stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in follow.stdout], daemon=True
    ).start()
    try:
        # A request after `logs -f` started must show up in its output.
        deadline = time.monotonic() + WAIT_S
        seen = ""
        while '"GET /v1/models HTTP/1.1" 200' not in seen and time.monotonic() < deadline:
            http_get(f"http://127.0.0.1:{free_port}/v1/models", timeout=2)
            try:
                seen += lines.get(timeout=0.2)
            except queue.Empty:
                continue
        assert '"GET /v1/models HTTP/1.1" 200' in seen
        assert "Application startup complete" not in seen  # -n 0: no old lines first
        # Stopping the server ends the follow by itself.
        assert run("stop", "demo").returncode == 0
        assert follow.wait(timeout=WAIT_S) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(timeout=10)
        run("stop", "--all")
    assert_nothing_left(free_port)


def test_live_view_on_a_terminal(free_port: int) -> None:
    """On a terminal, serve draws the live panel (rich) instead of plain lines; same outcome."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        msmall_cmd("serve", "-p", "demo", "--port", str(free_port), "--check"),
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    output = b""
    deadline = time.monotonic() + WAIT_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            # A bounded wait: a hung child must fail the test, not block os.read for ever.
            ready, _, _ = select.select([leader], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = output.decode("utf-8", "replace")
    assert "\x1b[?25l" in text  # rich Live hides the cursor: the live panel, not plain lines
    assert "all checks passed" in text
    assert "ok    tools" in text
    assert_nothing_left(free_port)
