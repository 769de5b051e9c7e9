"""The Docker plan for vLLM, field by field: what `docker run` gets is what the user sees in
`--dry-run` and what the container really runs with (vllm/vllm-openai image, port 8000 inside,
the host's Hugging Face cache mounted, the token passed by name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall.backends import PlanOptions, build_plan
from msmall.backends.vllm.container import container_name, host_hf_cache
from msmall.profiles import load_profile, parse_set


@pytest.fixture(autouse=True)
def _shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HF_TOKEN", "HF_HOME", "VLLM_API_KEY", "MSMALL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _plan(*sets: str, **options):
    prof = load_profile("h100-bf16-vision", parse_set(list(sets)))
    return build_plan(
        prof,
        PlanOptions(backend="docker", vllm_version="0.33.0", detect_installed=False, **options),
    )


def test_container_spec(tmp_path: Path) -> None:
    plan = _plan(deployment="my demo/1", port=8123)
    spec = plan.container
    assert spec is not None
    assert spec.name == "msmall-my-demo-1"
    assert spec.image.startswith("vllm/vllm-openai:")
    assert spec.command[:2] == ["--model", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    i = spec.command.index("--host")
    assert spec.command[i : i + 4] == ["--host", "0.0.0.0", "--port", "8000"]
    assert spec.ports == {"8000/tcp": ("127.0.0.1", 8123)}
    cache = str(tmp_path / "home" / ".cache" / "huggingface")
    assert spec.volumes == {cache: {"bind": "/root/.cache/huggingface", "mode": "rw"}}
    assert (spec.gpu_count, spec.gpu_device_ids, spec.ipc_mode) == (-1, None, "host")
    assert spec.labels == {"msmall.deployment": "my demo/1", "msmall.profile": "h100-bf16-vision"}
    assert spec.environment == {}
    assert plan.env == {}
    assert plan.runtime == "container"


def test_hf_home_and_token_come_from_the_shell(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3t_value")
    assert host_hf_cache() == str(tmp_path / "hf")
    plan = _plan(api_key="k3y-value")
    assert plan.container.volumes == {
        str(tmp_path / "hf"): {"bind": "/root/.cache/huggingface", "mode": "rw"}
    }
    assert plan.container.environment == {
        "HF_TOKEN": "hf_s3cr3t_value",
        "VLLM_API_KEY": "k3y-value",
    }
    # Passed by name on the docker run line, never by value.
    assert "hf_s3cr3t_value" not in " ".join(plan.argv)
    assert "k3y-value" not in " ".join(plan.argv)


def test_gpu_ids_become_device_ids() -> None:
    plan = _plan("hardware.gpu_ids=[2, 3]")
    assert plan.container.gpu_device_ids == ["2", "3"]


@pytest.mark.parametrize(
    ("deployment", "name"),
    [("demo", "msmall-demo"), ("a_b.c-d", "msmall-a_b.c-d"), ("x y/z:1", "msmall-x-y-z-1")],
)
def test_container_name(deployment: str, name: str) -> None:
    assert container_name(deployment) == name
