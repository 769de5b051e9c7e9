"""What `serve --dry-run --json` prints is what `serve` records and runs: real CLI subprocesses,
real engines' fakes (vllm argv checks, the simulator), fake GPUs from the fake nvidia-smi."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import msmall_cmd
from helpers import http_get
from test_serve_e2e import assert_nothing_left


def cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        msmall_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture
def env(fakes_on_path, isolated_world) -> dict[str, str]:
    return {**os.environ, "MSMALL_GPU_SOURCE": "nvidia-smi"}


CASES = [
    # profile, backend, GPUs, --set
    ("demo", "simulator", "none", []),
    ("4090-q4", "vllm", "1x4090", ["max_model_len=auto"]),
    ("h100-bf16-vision-3.2", "vllm", "h100", []),
    ("h100-bf16-vision-3.2", "simulator", "none", []),
]


@pytest.mark.parametrize(("profile", "backend", "scenario", "sets"), CASES)
def test_dry_run_json_is_the_recorded_plan(
    env, free_port: int, isolated_world, profile: str, backend: str, scenario: str, sets
) -> None:
    env = {**env, "FAKE_NVIDIA_SMI_SCENARIO": scenario}
    args = ["serve", "-p", profile, "-b", backend, "--port", str(free_port), "--name", "same"]
    for item in sets:
        args += ["--set", item]
    dry = cli(env, *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    served = cli(env, *args, "--detach", "--json")
    try:
        assert served.returncode == 0, served.stderr
        record = json.loads((isolated_world / "state" / "deployments" / "same.json").read_text())
        assert record["plan"] == planned
        if "max_model_len=auto" in sets:
            assert isinstance(planned["max_model_len"], int)
            argv = planned["argv"]
            assert argv[argv.index("--max-model-len") + 1] == str(planned["max_model_len"])
        # The engine really serves the planned model name.
        models = http_get(f"{planned['base_url']}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == [planned["served_model_name"]]
    finally:
        stopped = cli(env, "stop", "same")
    assert stopped.returncode == 0, stopped.stderr
    assert_nothing_left(free_port)


def test_mistral_small_3_2_serves_with_its_own_name_and_repo(env, free_port: int) -> None:
    env = {**env, "FAKE_NVIDIA_SMI_SCENARIO": "h100"}
    result = cli(
        env, "serve", "-p", "h100-bf16-vision-3.2", "--port", str(free_port), "--check", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "mistral-small-3.2" and data["model_id"] == "mistral-small-3.2"
    assert all(c["ok"] for c in data["smoke"]["checks"])
    assert_nothing_left(free_port)


def test_mistral_small_3_2_needs_vllm_0_9_1(env) -> None:
    result = cli(env, "serve", "-p", "h100-bf16-vision-3.2", "--vllm-version", "0.9.0", "--dry-run")
    assert result.returncode == 2
    assert "vLLM 0.9.0 cannot serve Mistral Small 3.2 (support arrived in 0.9.1)" in result.stderr
