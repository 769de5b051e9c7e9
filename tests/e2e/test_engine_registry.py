"""An engine is one registry entry: a throwaway engine, registered here in one place, is
planned, validated in a profile, served end to end (start, readiness, smoke checks, stop) and
diagnosed when it fails, by the same pipeline as vLLM and Ollama."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from msmall import backends, launcher
from msmall.backends.base import PlanOptions, common_fields, endpoint
from msmall.backends.engine import Engine
from msmall.backends.vllm import logs as vllm_logs
from msmall.errors import ConfigError, EngineUnavailable
from msmall.plan import LaunchPlan


def plan_toy(profile, options: PlanOptions, engine: Engine) -> LaunchPlan:
    """A 'llama-server'-like engine: here the simulator under another name and argv."""
    ep = endpoint(profile, options, engine)
    argv = [
        sys.executable, "-m", "msmall.simulator", "--flavor", "vllm",
        "--host", ep.host, "--port", str(ep.port),
        "--served-model-name", profile.serving.served_model_name,
        *profile.serving.extra_args,
    ]  # fmt: skip
    return LaunchPlan(
        **common_fields(profile, options, ep, engine, "process"),
        argv=argv,
        served_model_name=profile.serving.served_model_name,
    )


TOY = Engine(
    name="toy",
    label="Toy server",
    flavor="vllm",
    default_port=8000,
    plan=plan_toy,
    load_log_rules=lambda: vllm_logs.LOG_RULES,  # it logs like vLLM
    needs_gpu=False,
)


@pytest.fixture
def toy_engine():
    backends.register(TOY)
    yield TOY
    backends.unregister("toy")


def _profile(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(
        "backend: toy\nhardware:\n  gpu_count: 0\n"
        f"serving:\n  port: {port}\n  max_model_len: 8192\n{extra}",
        encoding="utf-8",
    )
    return str(path)


def test_registered_engine_is_a_backend_everywhere(toy_engine, tmp_path: Path) -> None:
    assert "toy" in backends.backend_names()
    plan = launcher.final_plan(_profile(tmp_path, 8123))
    assert (plan.engine, plan.runtime, plan.backend) == ("toy", "process", "toy")
    assert plan.argv[1:3] == ["-m", "msmall.simulator"]
    assert plan.preflight == {
        "verdict": "skipped",
        "reason": "Toy server needs no GPU",
        "forced": False,
    }
    # A profile of another engine can be served by this one with --backend, like any other.
    other = launcher.final_plan("demo", options=PlanOptions(backend="toy"))
    assert other.engine == "toy" and other.base_url == "http://127.0.0.1:8090"


def test_unregistered_engine_is_an_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'backend' must be one of"):
        launcher.final_plan(_profile(tmp_path, 8125))


def test_throwaway_engine_serves_end_to_end(toy_engine, tmp_path: Path, free_port: int) -> None:
    request = launcher.ServeRequest(profile=_profile(tmp_path, free_port), check_only=True)
    result = launcher.serve(request)
    assert result["backend"] == "toy" and result["base_url"] == f"http://127.0.0.1:{free_port}"
    assert result["smoke"]["ok"] and {c["name"] for c in result["smoke"]["checks"]} >= {
        "chat",
        "tools",
        "vision",
    }
    # --check stopped it: nothing listens on the port, no child is left.
    assert not any(
        c.laddr and c.laddr.port == free_port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


def test_throwaway_engine_failure_is_diagnosed_by_its_log_rules(
    toy_engine, tmp_path: Path, free_port: int
) -> None:
    profile = _profile(tmp_path, free_port, '  extra_args: ["--fail", "oom-on-load"]\n')
    with pytest.raises(EngineUnavailable) as failed:
        launcher.serve(launcher.ServeRequest(profile=profile))
    assert failed.value.message.startswith("Toy server exited with code 1 before it was ready")
    assert "out of memory" in failed.value.message.lower() or "GPU memory" in failed.value.message
