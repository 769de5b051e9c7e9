"""`msmall logs` blanks the secrets an engine wrote into its own log.

vLLM logs its non-default args, api_key and hf_token included (vllm/entrypoints/utils.py
log_non_default_args), so the log file on disk holds them; what `msmall logs` prints goes through
msmall.plan.redact_text with every secret the engine could know: its own command line and
environment while it runs, and the shell's (which a host process inherits).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msmall import deployments, state
from msmall.cli.app import app
from msmall.plan import REDACTED
from msmall.runtimes.process import process_identity

ARG_KEY = "s3cr3t-argv-api-key"
ENV_KEY = "s3cr3t-engine-env-vllm-api-key"
SHELL_TOKEN = "s3cr3t-shell-hf-token"


def _engine(log: Path) -> subprocess.Popen:
    """A stand-in engine: a real process whose argv and environment hold secrets, alive until
    killed (it reads stdin, which the test never writes)."""
    env = {**os.environ, "VLLM_API_KEY": ENV_KEY}
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "--api-key", ARG_KEY],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a group leader, as msmall starts engines
    )


def _record(tmp_path: Path, pid: int | None) -> Path:
    log = tmp_path / "engine.log"
    log.write_text(
        "INFO starting\n"
        f"INFO utils.py:326 non-default args: {{'api_key': '{ARG_KEY}', 'hf_token': "
        f"'{SHELL_TOKEN}'}}\n"
        f"DEBUG envs.py:1 environment: VLLM_API_KEY={ENV_KEY}\n"
        "INFO ready\n",
        encoding="utf-8",
    )
    created, sha = process_identity(pid) if pid else (0.0, None)
    state.save(
        state.Deployment(
            name="leaky",
            profile="demo",
            backend="vllm",
            base_url="http://127.0.0.1:9",
            served_model_name="m",
            log_path=str(log),
            pid=pid,
            pid_create_time=created,
            pid_cmdline_sha=sha,
        )
    )
    return log


@pytest.fixture
def engine(tmp_path: Path):
    # Popen returns once exec has succeeded, so /proc already shows the engine's argv.
    proc = _engine(tmp_path / "engine.log")
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_running_engine_secrets_are_blanked(isolated_world, tmp_path: Path, engine, monkeypatch):
    """The argv key and the engine-env key come from the live process, the HF token from the
    shell; the file keeps them (it is the engine's), the output does not."""
    monkeypatch.setenv("HF_TOKEN", SHELL_TOKEN)
    log = _record(tmp_path, engine.pid)
    lines = deployments.log_lines("leaky", 50)
    text = "\n".join(lines)
    for value in (ARG_KEY, ENV_KEY, SHELL_TOKEN):
        assert value not in text
        assert value in log.read_text(encoding="utf-8")
    assert f"'api_key': '{REDACTED}'" in text
    assert f"VLLM_API_KEY={REDACTED}" in text
    assert lines[0] == "INFO starting" and lines[-1] == "INFO ready"


def test_cli_logs_output_is_redacted(isolated_world, tmp_path: Path, engine, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SHELL_TOKEN)
    _record(tmp_path, engine.pid)
    result = CliRunner().invoke(app, ["logs", "leaky", "-n", "10"])
    assert result.exit_code == 0, result.output
    assert "non-default args" in result.output
    for value in (ARG_KEY, ENV_KEY, SHELL_TOKEN):
        assert value not in result.output


def test_follow_redacts_new_lines(isolated_world, tmp_path: Path, engine, monkeypatch):
    """--follow: a line the engine appends later is blanked too."""
    monkeypatch.setenv("HF_TOKEN", SHELL_TOKEN)
    log = _record(tmp_path, engine.pid)
    seen: list[str] = []
    appended = False

    def stop_when() -> bool:
        nonlocal appended
        if not appended:
            with log.open("a", encoding="utf-8") as f:
                f.write(f"ERROR hub.py:88 Invalid credentials {SHELL_TOKEN} key {ARG_KEY}\n")
            appended = True
            return False
        return bool(seen)

    deployments.follow("leaky", seen.append, stop_when)
    assert seen == [f"ERROR hub.py:88 Invalid credentials {REDACTED} key {REDACTED}"]


def test_exited_engine_still_redacts_the_shell_secrets(isolated_world, tmp_path: Path, monkeypatch):
    """No live process to read: the shell's HF_TOKEN is still known and blanked; the argv key is
    no longer knowable (records hold no secrets), which is why the live process is asked first."""
    monkeypatch.setenv("HF_TOKEN", SHELL_TOKEN)
    _record(tmp_path, None)
    text = "\n".join(deployments.log_lines("leaky", 50))
    assert SHELL_TOKEN not in text
    assert f"'hf_token': '{REDACTED}'" in text


def test_another_process_on_the_pid_is_not_read(
    isolated_world, tmp_path: Path, engine, monkeypatch
):
    """A record whose pid now belongs to a different process (its create time differs) is not
    the engine: its command line and environment are not read, the shell's secrets still are."""
    monkeypatch.setenv("HF_TOKEN", SHELL_TOKEN)
    _record(tmp_path, engine.pid)
    dep = state.load("leaky")
    assert deployments._own_pid(dep) == engine.pid
    dep.pid_create_time += 1000
    state.save(dep)
    assert deployments._own_pid(state.load("leaky")) is None
    assert SHELL_TOKEN not in "\n".join(deployments.log_lines("leaky", 50))
