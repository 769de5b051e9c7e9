"""`msmall serve` with the vLLM and Ollama backends, through fake `vllm` / `ollama` executables.

The fakes parse their argv like the real CLIs (an unknown flag exits 2 with argparse's message)
and then run the simulator in the matching flavor, so every byte msmall sends is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from conftest import msmall_cmd
from helpers import http_get
from test_serve_e2e import assert_nothing_left


@pytest.fixture
def engine_env(fakes_on_path, isolated_world) -> dict[str, str]:
    env = dict(os.environ)
    env["OLLAMA_MODELS"] = str(isolated_world / "ollama-models")
    return env


def serve(env: dict[str, str], *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        msmall_cmd("serve", *args), capture_output=True, text=True, env=env, timeout=timeout,
        check=False,
    )  # fmt: skip


def test_vllm_backend_passes_the_real_argv_check(engine_env, free_port: int) -> None:
    result = serve(
        engine_env, "-p", "4090-q4", "-b", "vllm", "--port", str(free_port), "--check", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert all(c["ok"] for c in json.loads(result.stdout)["smoke"]["checks"])
    assert "KV cache:" in result.stderr  # engine activity picked out of the log
    assert_nothing_left(free_port)


def test_installed_old_vllm_gets_the_old_limit_format(engine_env, free_port: int) -> None:
    env = {**engine_env, "FAKE_VLLM_VERSION": "0.9.2"}
    dry = subprocess.run(
        msmall_cmd("serve", "-p", "h100-bf16-vision", "--dry-run", "--json"),
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    argv = json.loads(dry.stdout)["argv"]
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == "image=8"
    result = serve(env, "-p", "h100-bf16-vision", "--port", str(free_port), "--check")
    assert result.returncode == 0, result.stderr


def test_flags_for_the_wrong_vllm_version_are_diagnosed(engine_env, free_port: int) -> None:
    # Installed vLLM is 0.33 (the fake's default) but the flags were generated for 0.9.
    result = serve(
        engine_env,
        "-p",
        "4090-q4",
        "-b",
        "vllm",
        "--port",
        str(free_port),
        "--vllm-version",
        "0.9.2",
    )
    assert result.returncode == 4, result.stderr
    assert "exited with code 2" in result.stderr
    assert "--limit-mm-per-prompt" in result.stderr
    assert "--vllm-version" in result.stderr.split("error:", 1)[1].splitlines()[1]
    assert_nothing_left(free_port)


def test_unknown_extra_flag_is_rejected_by_the_engine_and_explained(
    engine_env, free_port: int
) -> None:
    result = serve(
        engine_env, "-p", "4090-q4", "-b", "vllm", "--port", str(free_port),
        "--set", 'extra_args=["--no-such-flag"]',
    )  # fmt: skip
    assert result.returncode == 4
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_vllm_without_tool_flags_returns_text_and_fails(engine_env, free_port: int) -> None:
    result = serve(
        engine_env,
        "-p",
        "h100-bf16-vision",
        "--port",
        str(free_port),
        "--check",
        "--set",
        "tools=false",
    )
    # tools=false skips the check: it passes, and the argv carries no tool flags.
    assert result.returncode == 0, result.stderr
    dry = subprocess.run(
        msmall_cmd("serve", "-p", "h100-bf16-vision", "--set", "tools=false", "--dry-run", "--json"),
        capture_output=True, text=True, env=engine_env, check=True,
    )  # fmt: skip
    argv = json.loads(dry.stdout)["argv"]
    assert "--enable-auto-tool-choice" not in argv and "--tool-call-parser" not in argv
    assert "skip  tools   not requested" in result.stderr
    env = {**engine_env, "FAKE_VLLM_FAIL": "tools-as-text"}
    result = serve(env, "-p", "h100-bf16-vision", "--port", str(free_port), "--check")
    assert result.returncode == 5
    assert "--tool-call-parser mistral --enable-auto-tool-choice" in result.stderr


def test_vllm_dying_of_oom_is_diagnosed(engine_env, free_port: int) -> None:
    env = {**engine_env, "FAKE_VLLM_FAIL": "oom-on-load"}
    result = serve(env, "-p", "h100-bf16-vision", "--port", str(free_port))
    assert result.returncode == 4
    assert "out of memory" in result.stderr.lower()
    assert_nothing_left(free_port)


def test_missing_engine_says_how_to_install(isolated_world, free_port: int) -> None:
    # A PATH with python but without vllm/ollama.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    for profile, backend, name in (("4090-q4", "vllm", "vllm"), ("4090-q4", "ollama", "ollama")):
        result = serve(env, "-p", profile, "-b", backend, "--port", str(free_port))
        assert result.returncode == 4, result.stderr
        assert f"'{name}' is not installed" in result.stderr
        error_part = result.stderr.split("error:", 1)[1]
        assert len(error_part.strip().splitlines()) == 2
        assert "Traceback" not in result.stderr


def test_ollama_pulls_preloads_and_checks(engine_env, free_port: int) -> None:
    result = serve(engine_env, "-p", "4090-q4", "--port", str(free_port), "--check", "--json")
    assert result.returncode == 0, result.stderr
    assert "pull: pulling manifest" in result.stderr
    assert "loading mistral-small3.1:24b-instruct-2503-q4_K_M" in result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "mistral-small3.1:24b-instruct-2503-q4_K_M"
    assert report["base_url"] == f"http://127.0.0.1:{free_port}"
    assert_nothing_left(free_port)


def test_ollama_pull_error_after_200_fails(engine_env, free_port: int) -> None:
    env = {**engine_env, "FAKE_OLLAMA_FAIL": "pull-error"}
    result = serve(env, "-p", "4090-q4", "--port", str(free_port), "--check")
    assert result.returncode == 4
    assert "pull" in result.stderr and "file does not exist" in result.stderr
    assert_nothing_left(free_port)


def test_ollama_cpu_offload_is_a_loud_warning(engine_env, free_port: int) -> None:
    env = {**engine_env, "FAKE_OLLAMA_FAIL": "cpu-offload"}
    result = serve(env, "-p", "4090-q4", "--port", str(free_port), "--check")
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning: only"))
    assert "runs on the CPU" in warning and "GiB" in warning


def test_ollama_without_tools_capability_fails(engine_env, free_port: int) -> None:
    env = {**engine_env, "FAKE_OLLAMA_FAIL": "no-tools"}
    result = serve(env, "-p", "4090-q4", "--port", str(free_port), "--check")
    assert result.returncode == 5
    assert "lacks the tools capability" in result.stderr


def test_running_ollama_daemon_is_reused_and_left_running(engine_env, free_port: int) -> None:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "msmall.simulator", "--flavor", "ollama", "--port", str(free_port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{free_port}/", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        result = serve(engine_env, "-p", "4090-q4", "--port", str(free_port), "--check")
        assert result.returncode == 0, result.stderr
        assert "reusing the Ollama daemon" in result.stderr
        assert daemon.poll() is None, "msmall stopped a daemon it did not start"
        assert psutil.Process(daemon.pid).is_running()
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_port_held_by_something_else_is_refused_for_ollama(engine_env, free_port: int) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port))
        busy.listen()
        result = serve(engine_env, "-p", "4090-q4", "--port", str(free_port), "--check")
    assert result.returncode == 3
    assert "already in use" in result.stderr


def test_serve_without_profile_uses_the_recommended_one(engine_env, free_port: int) -> None:
    env = {**engine_env, "MSMALL_GPU_SOURCE": "nvidia-smi", "FAKE_NVIDIA_SMI_SCENARIO": "1x4090"}
    result = serve(env, "--port", str(free_port), "--check", "--json")
    assert result.returncode == 0, result.stderr
    assert "using profile 4090-q4" in result.stderr
    assert json.loads(result.stdout)["profile"] == "4090-q4"
    assert_nothing_left(free_port)


def test_serve_without_profile_and_without_gpu_points_to_the_demo(engine_env) -> None:
    result = serve(engine_env)
    assert result.returncode == 3
    assert "no shipped profile fits this machine" in result.stderr
    assert "--profile demo" in result.stderr


def test_gated_repo_without_token_is_warned_before_loading(engine_env, free_port: int) -> None:
    result = serve(engine_env, "-p", "h100-bf16-vision", "--port", str(free_port), "--check")
    assert result.returncode == 0, result.stderr  # the fake vllm needs no token
    assert "is gated on Hugging Face and no token was found" in result.stderr
    with_token = serve(
        {**engine_env, "HF_TOKEN": "hf_test_token_value"},
        "-p", "h100-bf16-vision", "--port", str(free_port), "--check",
    )  # fmt: skip
    assert with_token.returncode == 0, with_token.stderr
    assert "is gated" not in with_token.stderr
    assert "hf_test_token_value" not in with_token.stderr + with_token.stdout
