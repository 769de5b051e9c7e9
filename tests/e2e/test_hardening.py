"""Hardening (issue 9): the real CLI in subprocesses against hostile records, profiles, options,
state dirs and races. Each class of the issue has its section below."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import msmall_cmd


def run(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None, **kw):
    return subprocess.run(
        msmall_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        **kw,
    )


def state_dir() -> Path:
    return Path(os.environ["MSMALL_STATE_DIR"])


def write_record(name: str, **fields) -> Path:
    folder = state_dir() / "deployments"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "profile": "demo",
        "backend": "simulator",
        "base_url": "http://127.0.0.1:9",
        "served_model_name": "m",
        "log_path": str(state_dir() / "logs" / f"{name}.log"),
        **fields,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def identity(pid: int) -> dict:
    from msmall.runtimes.process import process_identity

    create_time, sha = process_identity(pid)
    return {"pid": pid, "pid_create_time": create_time, "pid_cmdline_sha": sha}


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# ---------------------------------------------------------------------------------------------
# 1. Never signal a process msmall did not start


@pytest.fixture
def sacrificial():
    """Sleeping processes that a wrong `stop` would kill; all reaped afterwards."""
    started: list[subprocess.Popen] = []

    def start(leader: bool = True) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "120"], start_new_session=leader)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def test_a_matching_record_is_stopped(sacrificial) -> None:
    # The control: the same check that refuses the cases below accepts msmall's own engine.
    victim = sacrificial()
    write_record("own", **identity(victim.pid))
    result = run("stop", "own")
    assert result.returncode == 0, result.stderr
    assert "own: stopped" in result.stdout
    assert victim.wait(timeout=20) is not None


@pytest.mark.parametrize(
    "case",
    ["other-command", "no-create-time", "old-record", "other-create-time", "not-group-leader"],
)
def test_stop_never_signals_a_process_it_did_not_start(sacrificial, case: str) -> None:
    victim = sacrificial(leader=case != "not-group-leader")
    ids = identity(victim.pid)
    if case == "other-command":
        ids["pid_cmdline_sha"] = "0" * 64
    elif case == "no-create-time":
        ids["pid_create_time"] = 0.0
    elif case == "old-record":
        ids = {"pid": victim.pid}  # written before records carried an identity
    elif case == "other-create-time":
        ids["pid_create_time"] -= 30
    write_record("foreign", **ids)

    listing = run("ps")
    assert "stale record" in listing.stdout, listing.stdout
    result = run("stop", "foreign")
    assert result.returncode == 0, result.stderr
    assert "nothing signalled" in result.stdout, result.stdout
    assert victim.poll() is None, "stop signalled a process msmall did not start"
    assert not (state_dir() / "deployments" / "foreign.json").exists()


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)
def test_pid_1_record_is_never_signalled_inside_a_pid_namespace(tmp_path: Path) -> None:
    # In a fresh PID namespace kill(-1) could only reach the namespace, so a regression would
    # kill the sleeper there, not this test run. The record even carries pid 1's true identity.
    script = tmp_path / "inside.py"
    script.write_text(
        "import json, os, subprocess, sys\n"
        "from msmall.runtimes.process import process_identity\n"
        "sleeper = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "ct, sha = process_identity(1)\n"
        "d = os.path.join(os.environ['MSMALL_STATE_DIR'], 'deployments')\n"
        "os.makedirs(d, exist_ok=True)\n"
        "rec = dict(name='init', profile='demo', backend='simulator', base_url='http://127.0.0.1:9',\n"
        "           served_model_name='m', log_path='/nonexistent', pid=1, pid_create_time=ct,\n"
        "           pid_cmdline_sha=sha)\n"
        "open(os.path.join(d, 'init.json'), 'w').write(json.dumps(rec))\n"
        "r = subprocess.run([sys.executable, '-m', 'msmall', 'stop', '--all'], capture_output=True, text=True)\n"
        "print(r.stdout.strip())\n"
        "print('SURVIVED' if sleeper.poll() is None else 'KILLED')\n"
        "sleeper.kill()\n"
    )
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip(f"no PID namespace here: {result.stderr.strip()}")
    assert "SURVIVED" in result.stdout, result.stdout + result.stderr
    assert "nothing signalled" in result.stdout


# ---------------------------------------------------------------------------------------------
# 2. Profiles cannot hang or exhaust msmall


def user_profiles() -> Path:
    folder = Path(os.environ["MSMALL_CONFIG_DIR"]) / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_broken_user_profiles_are_listed_not_fatal() -> None:
    from hostile_yaml import BOMB

    folder = user_profiles()
    (folder / "bomb.yaml").write_text(BOMB)
    (folder / "dup.yaml").write_text("name: dup\nbackend: vllm\nbackend: ollama\n")
    (folder / "loop.yaml").write_text("name: loop\nserving:\n  extra_args: &x [*x]\n")
    (folder / "markup.yaml").write_text("name: markup\n[bold]: 1\n")
    os.mkfifo(folder / "fifo.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    started = time.monotonic()
    listing = run("profiles", "list", "--json", timeout=60)
    assert time.monotonic() - started < 30
    assert listing.returncode == 0, listing.stderr
    assert_no_traceback(listing)
    rows = json.loads(listing.stdout)
    errors = " ".join(r["error"] for r in rows if "error" in r)
    for text in (
        "more than 20000 values",
        "duplicate key 'backend'",
        "recursive",
        "not a regular file",
    ):
        assert text in errors, errors
    assert any(r.get("name") == "demo" for r in rows), "the good profiles vanished"
    table = run("profiles", "list")
    assert table.returncode == 0 and "broken" in table.stdout
    assert_no_traceback(table)
    doctor = run("doctor", "--json", timeout=120)
    assert_no_traceback(doctor)
    report = json.loads(doctor.stdout)
    profile_check = next(c for c in report["checks"] if c["name"] == "profiles")
    assert profile_check["status"] == "warn" and "not a regular file" in profile_check["detail"]


def test_serve_with_a_fifo_profile_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    result = run("serve", "--profile", str(fifo), "--dry-run", timeout=30)
    assert result.returncode == 2
    assert "not a regular file" in result.stderr
    assert_no_traceback(result)


# ---------------------------------------------------------------------------------------------
# 3. No way around the exposure rule


@pytest.mark.parametrize(
    "args",
    [
        ["--set", 'extra_args=["--host", "0.0.0.0"]'],
        ["--set", 'extra_args=["--port=1"]'],
        ["--host", "127.0.0.1.nip.io"],
        ["--backend", "ollama", "--set", "serving.env.OLLAMA_HOST=0.0.0.0"],
        ["--backend", "ollama", "--host", "0.0.0.0"],
    ],
)
def test_exposure_routes_are_refused_before_anything_starts(
    args: list[str], free_port: int
) -> None:
    result = run("serve", "--profile", "demo", "--port", str(free_port), "--check", *args)
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert not (state_dir() / "logs").exists(), "something started"


@pytest.mark.parametrize(
    ("key", "how"), [("", "flag"), ("   ", "env"), ("bad key", "env"), ("ключ", "flag")]
)
def test_unusable_api_keys_are_refused(key: str, how: str, free_port: int) -> None:
    # An empty MSMALL_API_KEY is "unset" (Typer's reading of an empty variable); `--api-key ""`
    # is a choice, and refused.
    env = {**os.environ, "MSMALL_API_KEY": key} if how == "env" else None
    flag = ["--api-key", key] if how == "flag" else []
    result = run("serve", "--profile", "demo", "--port", str(free_port), "--check", *flag, env=env)
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert "API key" in result.stderr
    if key.strip():
        assert key not in result.stderr


# ---------------------------------------------------------------------------------------------
# 4. State and logs private and robust


def one_plain_error(result, code: int | None = None) -> None:
    assert result.returncode != 0 if code is None else result.returncode == code, result
    assert_no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), result.stderr


@pytest.mark.parametrize("kind", ["file", "dangling-symlink"])
def test_unusable_state_dir_is_one_plain_line(kind: str, tmp_path: Path, free_port: int) -> None:
    target = tmp_path / "statefile"
    if kind == "file":
        target.write_text("not a dir")
    else:
        target.symlink_to(tmp_path / "nowhere")
    env = {**os.environ, "MSMALL_STATE_DIR": str(target)}
    for args in (
        ["ps"],
        ["stop", "--all"],
        ["serve", "--profile", "demo", "--port", str(free_port), "--check"],
    ):
        one_plain_error(run(*args, env=env))


def test_bad_records_never_hide_the_others(sacrificial) -> None:
    folder = state_dir() / "deployments"
    good = sacrificial()
    write_record("good", **identity(good.pid))
    (folder / "garbage.json").write_text("{not json")
    (folder / "types.json").write_text(json.dumps({"name": "types", "pid": "one", "profile": []}))
    (folder / "adir.json").mkdir()
    (folder / "huge.json").write_bytes(b" " * (2 << 20))
    listing = run("ps", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert set(rows) == {"good", "garbage", "types", "adir", "huge"}
    assert rows["good"]["status"] == "running"
    for name in ("garbage", "types", "adir", "huge"):
        assert rows[name]["status"].startswith("broken record"), rows[name]
    logs = run("logs", "garbage")
    one_plain_error(logs)
    stopped = run("stop", "--all")
    assert_no_traceback(stopped)
    assert good.wait(timeout=20) is not None, "stop --all skipped the good record"
    # The directory cannot be removed as a record: reported, exit non-zero, others done.
    assert stopped.returncode == 1
    assert "adir: failed" in stopped.stdout
    assert not (folder / "garbage.json").exists() and not (folder / "good.json").exists()


def test_records_and_logs_are_private_and_state_dir_absolute(
    tmp_path: Path, free_port: int
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "MSMALL_STATE_DIR": "rel-state"}
    started = run(
        "serve",
        "--profile",
        "demo",
        "--port",
        str(free_port),
        "--detach",
        "--json",
        env=env,
        cwd=work,
    )
    try:
        assert started.returncode == 0, started.stderr
        base = work / "rel-state"
        record = json.loads((base / "deployments" / "demo.json").read_text())
        assert Path(record["log_path"]).is_absolute()
        for d in (base, base / "deployments", base / "logs"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        for f in (base / "deployments" / "demo.json", base / "logs" / "demo.log"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        # Found again from another directory with the absolute path.
        env2 = {**os.environ, "MSMALL_STATE_DIR": str(base)}
        assert "demo" in run("ps", env=env2).stdout
    finally:
        stopped = run("stop", "demo", env=env, cwd=work)
        assert stopped.returncode == 0, stopped.stderr


# ---------------------------------------------------------------------------------------------
# 5. No orphan engines (the random-moment trials are in test_chaos.py)

DELAY = ["--set", 'extra_args=["--startup-delay", "3"]']


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        msmall_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_record(name: str, key: str, timeout: float = 30.0, equals: object = None) -> dict:
    path = state_dir() / "deployments" / f"{name}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(path.read_text())
            if record.get(key) if equals is None else record.get(key) == equals:
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no record of {name} with {key}")


def test_killed_during_loading_the_engine_is_shown_and_stopped(free_port: int) -> None:
    serve = spawn("serve", "--profile", "demo", "--port", str(free_port), "--detach", *DELAY)
    record = wait_record("demo", "pid")
    serve.kill()
    serve.wait(timeout=10)
    engine = psutil.Process(record["pid"])
    assert engine.is_running()
    rows = json.loads(run("ps", "--json").stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("demo", "starting")]
    stopped = run("stop", "demo")
    assert stopped.returncode == 0, stopped.stderr
    assert "demo: stopped" in stopped.stdout
    engine.wait(timeout=20)


def test_stop_during_a_start_stops_that_start(free_port: int) -> None:
    serve = spawn("serve", "--profile", "demo", "--port", str(free_port), *DELAY)
    record = wait_record("demo", "pid")
    stopped = run("stop", "demo")
    assert stopped.returncode == 0, stopped.stderr
    assert serve.wait(timeout=30) == 130  # the start was interrupted, not left to finish
    assert (
        not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == "zombie"
    )
    assert not (state_dir() / "deployments" / "demo.json").exists()


def test_stop_of_a_foreground_serve_goes_through_its_msmall(free_port: int) -> None:
    """`msmall stop` from another terminal: the foreground serve stops its engine as on Ctrl-C
    (exit 130), rather than reporting an engine that died by itself (exit 4, a diagnosis)."""
    serve = spawn("serve", "--profile", "demo", "--port", str(free_port))
    record = wait_record("demo", "status", timeout=60, equals="ready")
    stopped = run("stop", "demo")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped (by its msmall serve)" in stopped.stdout, (stopped.stdout, serve.poll(), record)
    assert serve.wait(timeout=30) == 130, serve.stderr.read()
    assert "died" not in serve.stderr.read()
    assert (
        not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == "zombie"
    )
    assert not (state_dir() / "deployments" / "demo.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_hangup_stops_the_engine_like_ctrl_c(sig: int, free_port: int) -> None:
    serve = spawn("serve", "--profile", "demo", "--port", str(free_port), *DELAY)
    record = wait_record("demo", "pid")
    engine = psutil.Process(record["pid"])
    serve.send_signal(sig)
    code = serve.wait(timeout=30)
    assert code == 130, serve.stderr.read()
    engine.wait(timeout=10)
    assert not (state_dir() / "deployments" / "demo.json").exists()


# ---------------------------------------------------------------------------------------------
# 6. One deployment per name, one server per port

# Each trial is two real starts racing (about 4 s on a quiet 2-core machine). Three keep the
# suite's share small; `MSMALL_RACE_TRIALS=30` for a deeper search after touching the locks.
RACES = int(os.environ.get("MSMALL_RACE_TRIALS", "3"))
SHORT = ["--set", 'extra_args=["--startup-delay", "0.5"]']


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def racing(argvs: list[tuple[str, ...]]) -> Iterator[list[tuple[int, str, str]]]:
    """Start the msmalls at once; yield each one's (exit code, stdout, stderr). Afterwards
    nothing is left, even when a racer did not finish in time: each one still running is
    stopped as Ctrl-C would (it stops the engine it started), then `stop --all`."""
    racers = [spawn(*argv) for argv in argvs]
    try:
        yield [(r.wait(timeout=60), r.stdout.read(), r.stderr.read()) for r in racers]
    finally:
        for r in racers:
            if r.poll() is None:
                r.send_signal(signal.SIGINT)
        for r in racers:
            try:
                r.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait(timeout=10)
        run("stop", "--all")


def test_same_name_at_once_exactly_one_proceeds() -> None:
    for trial in range(RACES):
        ports = free_ports(2)
        argvs = [
            ("serve", "--profile", "demo", "--name", "same", "--port", str(p), "--detach", *SHORT)
            for p in ports
        ]
        with racing(argvs) as results:
            outcomes = [(code, err) for code, _, err in results]
            codes = sorted(code for code, _ in outcomes)
            assert codes == [0, 2], f"trial {trial}: {outcomes}"
            loser = next(err for code, err in outcomes if code == 2)
            assert "Traceback" not in loser
            assert "already" in loser, loser
        for p in ports:
            assert not [
                c
                for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == p and c.status == "LISTEN"
            ]


def test_same_port_at_once_the_loser_never_reports_ready() -> None:
    for trial in range(RACES):
        (port,) = free_ports(1)
        argvs = [
            ("serve", "--profile", "demo", "--name", f"r{i}", "--port", str(port), "--detach",
             "--json", *SHORT)
            for i in range(2)
        ]  # fmt: skip
        with racing(argvs) as outcomes:
            winners = [o for o in outcomes if o[0] == 0]
            assert len(winners) == 1, f"trial {trial}: {[(c, e[-300:]) for c, _, e in outcomes]}"
            won = json.loads(winners[0][1])
            listeners = {
                c.pid for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == "LISTEN"
            }  # fmt: skip
            assert listeners == {won["pid"]}, f"trial {trial}: ready reported on another engine"
            rows = json.loads(run("ps", "--json").stdout)
            assert [r["name"] for r in rows] == [won["deployment"]]


def test_port_held_by_a_loading_engine_is_seen(free_port: int) -> None:
    first = spawn("serve", "--profile", "demo", "--port", str(free_port), *DELAY)
    try:
        wait_record("demo", "pid")
        second = run(
            "serve", "--profile", "demo", "--name", "other", "--port", str(free_port), "--check"
        )
        assert second.returncode == 3, second.stderr
        assert_no_traceback(second)
        assert f"port {free_port}" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# 8. Secrets redacted everywhere; `ps` probes a keyed deployment with its key

SECRET = "sk-hardening-0123456789"


@pytest.mark.parametrize("route", ["cli-key", "key-in-extra-args"])
def test_secret_quoted_by_the_engine_is_redacted(route: str, fakes_on_path, free_port: int) -> None:
    extra = ["--no-such-flag", SECRET]
    args = ["--api-key", SECRET] if route == "cli-key" else []
    if route == "key-in-extra-args":
        extra = ["--api-key", SECRET, *extra]
    result = run(
        "serve", "-p", "4090-q4", "-b", "vllm", "--port", str(free_port), *args,
        "--set", f"extra_args={json.dumps(extra)}", "--json",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "unrecognized arguments" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_ps_probes_a_keyed_deployment_with_the_key(free_port: int) -> None:
    started = run(
        "serve", "--profile", "demo", "--port", str(free_port), "--api-key", SECRET, "--detach"
    )
    try:
        assert started.returncode == 0, started.stderr
        record = (state_dir() / "deployments" / "demo.json").read_text()
        assert SECRET not in record
        without = json.loads(run("ps", "--json").stdout)
        assert without[0]["health"] == "unhealthy"
        env = {**os.environ, "MSMALL_API_KEY": SECRET}
        with_key = json.loads(run("ps", "--json", env=env).stdout)
        assert with_key[0]["health"] == "ready"
        # 9. In a pipe `ps` prints whole names and URLs.
        listing = run("ps", env=env).stdout
        assert f"http://127.0.0.1:{free_port}" in listing and "…" not in listing
    finally:
        run("stop", "--all")


# ---------------------------------------------------------------------------------------------
# 9. --json on a failed serve prints a JSON error object


def test_failed_serve_json_prints_an_error_object(free_port: int) -> None:
    result = run("serve", "--profile", "demo", "--port", str(free_port), "--json",
                 "--set", 'extra_args=["--fail", "oom"]')  # fmt: skip
    assert result.returncode != 0
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["error"]["exit_code"] == result.returncode
    assert report["error"]["message"]
    refused = run("serve", "--profile", "no-such-profile", "--json")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["error"]["kind"] == "ConfigError"


def test_ps_in_a_pipe_does_not_truncate_long_names(sacrificial) -> None:
    name = "a-very-long-deployment-name-" + "x" * 60
    victim = sacrificial()
    write_record(
        name, **identity(victim.pid), base_url="http://127.0.0.1:65000/some/very/long/path"
    )
    listing = run("ps", env={**os.environ, "COLUMNS": "40"})
    assert name in listing.stdout
    assert "http://127.0.0.1:65000/some/very/long/path" in listing.stdout
