"""Launch plans: golden files for every shipped profile x backend, the vLLM version rules, removed
flags, exposure and secrets, and property tests for `--set` combinations.

Regenerate the goldens with ``MSMALL_UPDATE_GOLDEN=1 pytest tests/unit/test_plans.py`` and read the
diff against shared/FACTS.md before accepting it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA_DIR
from msmall import paths
from msmall.backends import backend_names, build_plan
from msmall.backends.base import PlanOptions
from msmall.backends.vllm import versions as engines
from msmall.errors import ConfigError
from msmall.models import get_model
from msmall.plan import LaunchPlan, redact_argv, render_command
from msmall.profiles import Profile, load_profile, parse_set

GOLDEN_DIR = DATA_DIR / "golden"
UPDATE_GOLDEN = os.environ.get("MSMALL_UPDATE_GOLDEN") == "1"
SHIPPED = sorted(p.stem for p in paths.builtin_profiles_dir().glob("*.yaml"))
BACKENDS = backend_names()
# Fixed stand-ins so the goldens do not depend on the machine.
GOLDEN_HF_HOME = "/golden/hf-home"
HF_SECRET = "hf_GoldenSecretValue123"
API_SECRET = "sk-msmall-SecretKey-987"

BF16_REPO = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
W4A16_REPO = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16"
MISTRAL_FORMAT_FLAGS = ("--tokenizer-mode", "--config-format", "--load-format")


def plan(ref: str, *sets: str, **opts) -> LaunchPlan:
    opts.setdefault("detect_installed", False)
    return build_plan(load_profile(ref, parse_set(list(sets))), PlanOptions(**opts))


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def vllm_flag_names(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


# ---------------------------------------------------------------------------------------------
# Golden files


def golden_view(launch_plan: LaunchPlan) -> dict:
    """What a golden holds: the public (redacted) plan and the dry-run text, machine-independent."""
    data = launch_plan.to_public_dict()
    data["dry_run"] = (
        launch_plan.docker_run()
        if launch_plan.container
        else render_command(launch_plan.argv, launch_plan.env)
    ).splitlines()
    text = json.dumps(data, indent=2)
    return json.loads(text.replace(json.dumps(sys.executable)[1:-1], "{python}"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("profile", SHIPPED)
def test_golden_plan(profile: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", GOLDEN_HF_HOME)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    launch_plan = plan(profile, backend=backend)
    data = golden_view(launch_plan)
    text = json.dumps(data, indent=2) + "\n"
    assert HF_SECRET not in text
    golden = GOLDEN_DIR / f"{profile}--{backend}.json"
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"missing {golden}: run with MSMALL_UPDATE_GOLDEN=1 and review it"
    assert json.loads(golden.read_text(encoding="utf-8")) == data


def test_every_golden_belongs_to_a_shipped_profile_and_backend() -> None:
    expected = {f"{p}--{b}.json" for p in SHIPPED for b in BACKENDS}
    assert {p.name for p in GOLDEN_DIR.glob("*.json")} == expected


@pytest.mark.parametrize("profile", SHIPPED)
def test_mistral_format_flags_only_for_mistral_native_repos(profile: str) -> None:
    prof = load_profile(profile)
    for backend in ("vllm", "docker"):
        argv = plan(profile, backend=backend).argv
        present = [f for f in MISTRAL_FORMAT_FLAGS if f in argv]
        if prof.model.hf_format == "mistral":
            assert present == list(MISTRAL_FORMAT_FLAGS)
            assert all(flag_value(argv, f) == "mistral" for f in present)
        else:
            # RedHatAI repos ship HF shards only: vLLM would find no weights with these.
            assert present == [], (profile, backend)
            assert not prof.model.hf_repo.startswith("mistralai/")


def test_docker_container_spec_holds_what_the_image_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    p = plan("h100-bf16-vision", backend="docker", api_key=API_SECRET)
    spec = p.container
    assert spec is not None
    assert spec.image == p.image == "vllm/vllm-openai:v0.33.0"
    # The entrypoint is already `vllm serve`: the model goes as --model, never a `serve` word.
    assert spec.command[:2] == ["--model", BF16_REPO]
    assert "serve" not in spec.command
    assert spec.gpu_count == -1 and spec.gpu_device_ids is None
    assert spec.ipc_mode == "host"
    assert spec.ports == {"8000/tcp": ("127.0.0.1", 8000)}
    assert spec.volumes == {
        os.environ["HF_HOME"]: {"bind": "/root/.cache/huggingface", "mode": "rw"}
    }
    # The real values reach the container; every rendering hides them.
    assert spec.environment["HF_TOKEN"] == HF_SECRET
    assert spec.environment["VLLM_API_KEY"] == API_SECRET
    assert spec.labels == {
        "msmall.deployment": "h100-bf16-vision",
        "msmall.profile": "h100-bf16-vision",
    }
    # The `docker run` line passes secrets by name only.
    assert "-e" in p.argv and "HF_TOKEN" in p.argv and "VLLM_API_KEY" in p.argv
    run_line = p.docker_run() or ""
    assert run_line.startswith("docker run")
    assert "--gpus all" in run_line and "--ipc=host" in run_line
    assert "-p 127.0.0.1:8000:8000" in run_line
    for text in (run_line, json.dumps(p.to_public_dict())):
        assert HF_SECRET not in text and API_SECRET not in text


def test_docker_without_hf_token_passes_none() -> None:
    spec = plan("4090-q4", backend="docker").container
    assert spec is not None
    assert "HF_TOKEN" not in spec.environment


def test_docker_port_and_host_map_onto_the_host_side_only() -> None:
    p = plan("4090-q4", backend="docker", port=9001, host="0.0.0.0", api_key=API_SECRET)
    assert p.container is not None
    assert p.container.ports == {"8000/tcp": ("0.0.0.0", 9001)}
    assert flag_value(p.container.command, "--port") == "8000"
    assert flag_value(p.container.command, "--host") == "0.0.0.0"
    assert p.base_url == "http://127.0.0.1:9001"


def test_docker_image_follows_target_version_and_driver() -> None:
    assert plan("4090-q4", backend="docker", vllm_version="0.9.2").image == (
        "vllm/vllm-openai:v0.9.2"
    )
    # From v0.20 the default images are CUDA 13 (driver R580+); older drivers get -cu129.
    old_driver = plan("4090-q4", backend="docker", driver_major=570)
    assert old_driver.image == "vllm/vllm-openai:v0.33.0-cu129"
    assert plan("4090-q4", backend="docker", driver_major=580).image == "vllm/vllm-openai:v0.33.0"
    assert engines.docker_image_tag("0.19.1", driver_major=535) == "v0.19.1"


def test_ollama_plan_is_env_plus_model_to_pull() -> None:
    p = plan("4090-q4", "max_model_len=16384", "kv_cache_dtype=fp8", "ollama_num_parallel=2")
    assert p.argv == ["ollama", "serve"]
    assert p.env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert p.env["OLLAMA_CONTEXT_LENGTH"] == "16384"
    assert p.env["OLLAMA_KV_CACHE_TYPE"] == "q8_0"
    assert p.env["OLLAMA_FLASH_ATTENTION"] == "1"
    assert p.env["OLLAMA_NUM_PARALLEL"] == "2"
    assert p.pull_model == p.served_model_name == "mistral-small3.1:24b-instruct-2503-q4_K_M"
    assert p.flavor == "ollama"
    # auto: leave the context to Ollama rather than send a non-number.
    assert "OLLAMA_CONTEXT_LENGTH" not in plan("4090-q4", "max_model_len=auto").env


def test_default_host_is_loopback_for_every_backend() -> None:
    for backend in ("vllm", "simulator"):
        assert flag_value(plan("4090-q4", backend=backend).argv, "--host") == "127.0.0.1"
    assert plan("4090-q4", backend="ollama").env["OLLAMA_HOST"].startswith("127.0.0.1:")
    docker = plan("4090-q4", backend="docker").container
    assert docker is not None and docker.ports["8000/tcp"][0] == "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# vLLM versions


@pytest.mark.parametrize(
    ("version", "limit"),
    [
        ("0.8.0", "image=8"),
        ("0.8.5", "image=8"),
        ("0.9.2", "image=8"),
        ("0.10.0", '{"image":8}'),
        ("v0.10.1.post1", '{"image":8}'),
        ("0.12.0", '{"image":8}'),
        ("0.33.0", '{"image":8}'),
    ],
)
def test_limit_mm_per_prompt_format_follows_version(version: str, limit: str) -> None:
    p = plan("h100-bf16-vision", backend="vllm", vllm_version=version)
    assert flag_value(p.argv, "--limit-mm-per-prompt") == limit
    assert p.engine_version == engines.normalize_version(version)


def test_vllm_argv_for_0_8_and_0_33_differ_only_in_limit_format() -> None:
    old = plan("h100-bf16-vision", backend="vllm", vllm_version="0.8.5").argv
    new = plan("h100-bf16-vision", backend="vllm", vllm_version="0.33.0").argv
    assert [a for a in old if a != "image=8"] == [a for a in new if a != '{"image":8}']
    assert new == [
        "vllm", "serve", BF16_REPO,
        "--served-model-name", "mistral-small-3.1",
        "--host", "127.0.0.1",
        "--port", "8000",
        "--tokenizer-mode", "mistral",
        "--config-format", "mistral",
        "--load-format", "mistral",
        "--max-model-len", "65536",
        "--gpu-memory-utilization", "0.92",
        "--tensor-parallel-size", "1",
        "--max-num-seqs", "32",
        "--limit-mm-per-prompt", '{"image":8}',
        "--tool-call-parser", "mistral",
        "--enable-auto-tool-choice",
    ]  # fmt: skip


def test_vision_off_is_a_text_only_server_in_both_formats() -> None:
    for version, limit in (("0.9.2", "image=0"), ("0.33.0", '{"image":0}')):
        p = plan("4090-q4", "serving.vision=false", backend="vllm", vllm_version=version)
        assert flag_value(p.argv, "--limit-mm-per-prompt") == limit
        assert p.images_per_prompt == 0 and p.vision is False


def test_tools_off_drops_both_tool_flags() -> None:
    argv = plan("4090-q4", "tools=false", backend="vllm").argv
    assert "--tool-call-parser" not in argv and "--enable-auto-tool-choice" not in argv


@pytest.mark.parametrize("version", ["0.7.3", "0.6.0"])
def test_vllm_older_than_the_model_is_refused(version: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot serve Mistral Small 3\.1"):
        plan("4090-q4", backend="vllm", vllm_version=version)


def test_garbage_vllm_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="is not a vLLM version"):
        plan("4090-q4", backend="vllm", vllm_version="latest-ish")


def test_max_model_len_auto_needs_0_33() -> None:
    assert flag_value(plan("4090-q4", "max_model_len=auto", backend="vllm").argv, "--max-model-len") == "auto"  # fmt: skip
    with pytest.raises(ConfigError, match=r"max_model_len=auto needs vLLM 0\.33\.0"):
        plan("4090-q4", "max_model_len=-1", backend="vllm", vllm_version="0.32.1")


REMOVED = "--disable-mm-preprocessor-cache"


@pytest.mark.parametrize(
    "extra",
    [[REMOVED], ["--disable_mm_preprocessor_cache"], [f"{REMOVED}=true"]],
)
@pytest.mark.parametrize("backend", ["vllm", "docker"])
def test_removed_flag_in_extra_args_is_refused_for_0_33(extra: list[str], backend: str) -> None:
    sets = [f"extra_args={json.dumps(extra)}"]
    with pytest.raises(ConfigError, match=r"was removed in vLLM 0\.33\.0") as info:
        plan("4090-q4", *sets, backend=backend, vllm_version="0.33.0")
    assert "--mm-processor-cache-gb 0" in (info.value.fix or "")
    # The same flag is fine for a vLLM that still has it.
    argv = plan("4090-q4", *sets, backend=backend, vllm_version="0.32.0").argv
    assert argv[-1] == extra[0]


def test_old_limit_mm_spelling_in_extra_args_is_refused_from_0_10() -> None:
    for extra in (["--limit-mm-per-prompt", "image=2"], ["--limit_mm_per_prompt=image=2"]):
        sets = [f"extra_args={json.dumps(extra)}"]
        with pytest.raises(ConfigError, match=r"pre-0\.10 format"):
            plan("4090-q4", *sets, backend="vllm", vllm_version="0.10.0")
        assert plan("4090-q4", *sets, backend="vllm", vllm_version="0.9.2").argv[-1] == extra[-1]
    json_form = ["--limit-mm-per-prompt", '{"image":2}']
    ok = plan("4090-q4", f"extra_args={json.dumps(json_form)}", backend="vllm")
    assert ok.argv[-2:] == json_form


def test_mistral_load_format_in_extra_args_refused_on_hf_repos() -> None:
    for extra in (["--load-format", "mistral"], ["--config_format=mistral"]):
        with pytest.raises(ConfigError, match="ships HF shards only"):
            plan("4090-q4", f"extra_args={json.dumps(extra)}", backend="vllm")
    # On a Mistral-native repo they are merely redundant.
    extra = ["--load-format", "mistral"]
    argv = plan("h100-bf16-vision", f"extra_args={json.dumps(extra)}", backend="vllm").argv
    assert argv[-2:] == extra


def test_extra_args_go_last_and_unchanged() -> None:
    extra = ["--max-num-batched-tokens", "8192", "--enable-prefix-caching"]
    argv = plan("2x4090-fp8-vision", f"extra_args={json.dumps(extra)}").argv
    assert argv[-3:] == extra


def _fake_vllm(folder: Path, stdout: str, exit_code: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "vllm"
    body = "".join(f"echo '{line}'\n" for line in stdout.splitlines())
    exe.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then\n{body}fi\nexit {exit_code}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


@pytest.fixture
def vllm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def install(stdout: str, exit_code: int = 0) -> Path:
        exe = _fake_vllm(tmp_path / "bin", stdout, exit_code)
        monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        return exe

    return install


def test_installed_vllm_is_the_default_target(vllm_on_path) -> None:
    # Importing vllm logs to stdout before the version line; only the version counts.
    vllm_on_path(
        "INFO 07-01 12:00:00 [__init__.py:244] Automatically detected platform cuda.\n0.9.2"
    )
    assert engines.installed_vllm_version() == "0.9.2"
    p = plan("h100-bf16-vision", backend="vllm", detect_installed=True)
    assert p.engine_version == "0.9.2"
    assert flag_value(p.argv, "--limit-mm-per-prompt") == "image=8"
    # --vllm-version wins over the installed one.
    p = plan("h100-bf16-vision", backend="vllm", detect_installed=True, vllm_version="0.33.0")
    assert p.engine_version == "0.33.0"
    # The Docker image brings its own vLLM: the host's says nothing about it.
    docker = plan("h100-bf16-vision", backend="docker", detect_installed=True)
    assert docker.engine_version == "0.33.0"
    assert docker.image == "vllm/vllm-openai:v0.33.0"


def test_installed_vllm_too_old_is_refused(vllm_on_path) -> None:
    vllm_on_path("0.7.3")
    with pytest.raises(ConfigError, match="cannot serve"):
        plan("4090-q4", backend="vllm", detect_installed=True)


def test_broken_or_missing_vllm_falls_back_to_latest(vllm_on_path, monkeypatch) -> None:
    vllm_on_path("Traceback: no torch", exit_code=1)
    assert engines.installed_vllm_version() is None
    assert plan("4090-q4", backend="vllm", detect_installed=True).engine_version == "0.33.0"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert engines.installed_vllm_version() is None
    assert plan("4090-q4", backend="vllm", detect_installed=True).engine_version == (
        engines.VLLM_LATEST
    )


# ---------------------------------------------------------------------------------------------
# Exposure and secrets


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_binding_beyond_loopback_needs_a_key(backend: str, host: str) -> None:
    with pytest.raises(ConfigError, match="without an API key"):
        plan("4090-q4", backend=backend, host=host)
    p = plan("4090-q4", backend=backend, host=host, api_key=API_SECRET)
    assert p.api_key == API_SECRET
    assert p.warnings == []


def test_ollama_beyond_loopback_warns_because_it_has_no_auth() -> None:
    with pytest.raises(ConfigError, match="no authentication"):
        plan("4090-q4", backend="ollama", host="0.0.0.0")
    p = plan("4090-q4", backend="ollama", host="0.0.0.0", allow_unauthenticated=True)
    assert p.env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert any("no authentication" in w for w in p.warnings)
    assert p.base_url == "http://127.0.0.1:11434"


def test_api_key_travels_in_env_never_in_argv() -> None:
    p = plan("4090-q4", backend="vllm", host="0.0.0.0", api_key=API_SECRET)
    assert p.env["VLLM_API_KEY"] == API_SECRET
    assert API_SECRET not in p.argv
    shown = render_command(p.argv, p.env) + json.dumps(p.to_public_dict())
    assert API_SECRET not in shown
    assert "VLLM_API_KEY='***'" in shown or "VLLM_API_KEY=***" in shown
    assert p.to_public_dict()["api_key"] == "***"


def test_secrets_in_profile_extra_args_and_env_are_redacted() -> None:
    extra = ["--api-key", "sk-inline-1", "--api-key=sk-inline-2"]
    sets = [f"extra_args={json.dumps(extra)}", "serving.env.HF_TOKEN=hf_inline_3"]
    for backend in ("vllm", "docker", "simulator"):
        p = plan("h100-bf16-vision", *sets, backend=backend)
        shown = json.dumps(p.to_public_dict()) + render_command(p.argv, p.env)
        if p.container:
            shown += p.docker_run() or ""
        for secret in ("sk-inline-1", "sk-inline-2", "hf_inline_3"):
            assert secret not in shown, (backend, secret)
        assert "***" in shown


def test_redact_argv_handles_both_spellings_and_a_trailing_flag() -> None:
    assert redact_argv(["--api-key", "k", "--port", "1"]) == ["--api-key", "***", "--port", "1"]
    assert redact_argv(["--api_key=k"]) == ["--api_key=***"]
    assert redact_argv(["x", "--api-key"]) == ["x", "--api-key"]


def test_port_must_be_a_tcp_port() -> None:
    for port in (0, 70000, -1):
        with pytest.raises(ConfigError, match="not a TCP port"):
            plan("4090-q4", backend="vllm", port=port)
    assert flag_value(plan("4090-q4", backend="vllm", port=9000).argv, "--port") == "9000"


def test_unknown_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'tgi'") as info:
        plan("4090-q4", backend="tgi")
    assert "ollama, vllm, docker, simulator" in (info.value.fix or "")


def test_simulator_plan_runs_this_python() -> None:
    p = plan("demo", "serving.vision=false")
    assert p.argv[:3] == [sys.executable, "-m", "msmall.simulator"]
    assert flag_value(p.argv, "--port") == "8090"
    assert "--no-vision" in p.argv


# ---------------------------------------------------------------------------------------------
# Property tests: --set combinations

VERSIONS = ("0.8.5", "0.9.2", "0.10.0", "0.12.0", "0.33.0")


def _yaml_plain(text: str) -> bool:
    """Strings YAML reads back as the same string (not null, a bool or a number)."""
    return yaml.safe_load(text) == text


max_len_values = st.one_of(
    st.integers(256, 131072).map(str),
    st.integers(1, 131).map(lambda k: f"{k}k"),
    st.integers(1, 128).map(lambda k: f"{k}K"),
    st.sampled_from(["auto", "-1"]),
)


@st.composite
def valid_overrides(draw: st.DrawFn) -> dict[str, str]:
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    values = {
        "max_model_len": draw(max_len_values),
        "gpu_memory_utilization": repr(draw(st.floats(0.01, 1.0))),
        "tensor_parallel_size": str(tp),
        "hardware.gpu_count": str(draw(st.integers(tp, 16))),
        "max_num_seqs": str(draw(st.integers(1, 4096))),
        "images_per_prompt": str(draw(st.integers(0, 64))),
        "serving.vision": draw(st.sampled_from(["true", "false"])),
        "tools": draw(st.sampled_from(["true", "false", "yes", "no"])),
        "kv_cache_dtype": draw(st.sampled_from(["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])),
        "served_model_name": draw(
            st.from_regex(r"[a-z][a-z0-9._-]{0,24}", fullmatch=True).filter(_yaml_plain)
        ),
        "port": str(draw(st.integers(1024, 65535))),
    }
    keys = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
    chosen = {k: values[k] for k in keys}
    # gpu_count and tensor_parallel_size only make sense together (tp <= gpu_count).
    if "tensor_parallel_size" in chosen or "hardware.gpu_count" in chosen:
        chosen["hardware.gpu_count"] = values["hardware.gpu_count"]
        chosen["tensor_parallel_size"] = values["tensor_parallel_size"]
    return chosen


def _expected_len(raw: str) -> int | str:
    if raw in ("auto", "-1"):
        return "auto"
    if raw[-1] in "kK":
        return int(raw[:-1]) * (1000 if raw[-1] == "k" else 1024)
    return int(raw)


def _check_vllm_flags(flags: list[str], prof: Profile, version: str) -> None:
    sv = prof.serving
    names = vllm_flag_names(flags)
    assert len(names) == len(set(names)), f"duplicate flag in {flags}"
    assert flag_value(flags, "--served-model-name") == sv.served_model_name
    assert flag_value(flags, "--max-model-len") == str(sv.max_model_len)
    assert float(flag_value(flags, "--gpu-memory-utilization")) == sv.gpu_memory_utilization
    assert flag_value(flags, "--tensor-parallel-size") == str(sv.tensor_parallel_size)
    assert flag_value(flags, "--max-num-seqs") == str(sv.max_num_seqs)
    images = sv.images_per_prompt if sv.vision else 0
    limit = flag_value(flags, "--limit-mm-per-prompt")
    if engines.at_least(version, "0.10.0"):
        assert json.loads(limit) == {"image": images}
    else:
        assert limit == f"image={images}"
    assert ("--enable-auto-tool-choice" in flags) is sv.tools
    assert ("--tool-call-parser" in flags) is sv.tools
    if sv.kv_cache_dtype == "auto":
        assert "--kv-cache-dtype" not in flags
    else:
        assert flag_value(flags, "--kv-cache-dtype") == sv.kv_cache_dtype
    for removed in engines.VLLM_REMOVED_FLAGS:
        assert removed not in flags


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    overrides=valid_overrides(),
    profile=st.sampled_from(SHIPPED),
    backend=st.sampled_from(BACKENDS),
    version=st.sampled_from(VERSIONS),
)
def test_valid_set_combinations_reach_the_argv(
    overrides: dict[str, str], profile: str, backend: str, version: str
) -> None:
    sets = [f"{k}={v}" for k, v in overrides.items()]
    prof = load_profile(profile, parse_set(sets))
    # What was set is what the profile now says.
    if "max_model_len" in overrides:
        assert prof.serving.max_model_len == _expected_len(overrides["max_model_len"])
    if "served_model_name" in overrides:
        assert prof.serving.served_model_name == overrides["served_model_name"]
    if "tensor_parallel_size" in overrides:
        assert prof.serving.tensor_parallel_size == int(overrides["tensor_parallel_size"])
    if "serving.vision" in overrides:
        assert prof.serving.vision is (overrides["serving.vision"] == "true")

    options = PlanOptions(backend=backend, vllm_version=version, detect_installed=False)
    too_old = not engines.at_least(version, get_model(prof.model.id).vllm_min_version)
    if too_old and backend in ("vllm", "docker"):
        with pytest.raises(ConfigError, match="cannot serve Mistral Small"):
            build_plan(prof, options)
        return
    needs_033 = prof.serving.max_model_len == "auto" and not engines.at_least(version, "0.33.0")
    if needs_033 and backend in ("vllm", "docker"):
        with pytest.raises(ConfigError, match="auto needs vLLM"):
            build_plan(prof, options)
        return
    p = build_plan(prof, options)
    port = str(prof.port_for(backend))
    if backend == "vllm":
        assert p.argv[:3] == ["vllm", "serve", prof.model.hf_repo]
        _check_vllm_flags(p.argv[3:], prof, version)
        assert flag_value(p.argv, "--port") == port
        assert flag_value(p.argv, "--host") == "127.0.0.1"
    elif backend == "docker":
        assert p.container is not None
        assert p.container.command[:2] == ["--model", prof.model.hf_repo]
        _check_vllm_flags(p.container.command[2:], prof, version)
        assert p.container.ports == {"8000/tcp": ("127.0.0.1", int(port))}
    elif backend == "ollama":
        assert p.env["OLLAMA_HOST"] == f"127.0.0.1:{port}"
        if prof.serving.max_model_len == "auto":
            assert "OLLAMA_CONTEXT_LENGTH" not in p.env
        else:
            assert p.env["OLLAMA_CONTEXT_LENGTH"] == str(prof.serving.max_model_len)
    else:
        assert flag_value(p.argv, "--port") == port
        assert flag_value(p.argv, "--served-model-name") == prof.serving.served_model_name
        assert ("--no-vision" in p.argv) is (not prof.serving.vision)
    assert p.base_url.endswith(f":{port}")
    assert p.tools is prof.serving.tools


SETTING_KEYS = (
    "max_model_len",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "max_num_seqs",
    "images_per_prompt",
    "vision",
    "tools",
    "kv_cache_dtype",
    "served_model_name",
    "port",
    "host",
    "extra_args",
    "backend",
    "name",
    "hardware.gpu_count",
    "hardware.min_cuda",
    "model.hf_format",
    "model.weights",
    "serving.env",
    "serving.nope",
    "nope",
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(SETTING_KEYS), st.text(max_size=12)).map("=".join),
            st.text(max_size=20),
        ),
        max_size=4,
    ),
    backend=st.sampled_from(BACKENDS),
)
def test_any_set_input_is_a_plan_or_a_config_error(items: list[str], backend: str) -> None:
    try:
        prof = load_profile("2x4090-fp8-vision", parse_set(items))
        build_plan(prof, PlanOptions(backend=backend, detect_installed=False))
    except ConfigError as exc:
        assert exc.message.strip()


invalid_setting = st.one_of(
    st.integers(-64, 64)
    .filter(lambda n: n not in (1, 2, 4, 8))
    .map(lambda n: f"tensor_parallel_size={n}"),
    st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True)).map(
        lambda f: f"gpu_memory_utilization={f!r}"
    ),
    st.sampled_from(["nan", "inf", "-inf", "lots", "[]"]).map(
        lambda v: f"gpu_memory_utilization={v}"
    ),
    st.integers(131073, 10**9).map(lambda n: f"max_model_len={n}"),
    st.integers(-(10**6), 255).filter(lambda n: n != -1).map(lambda n: f"max_model_len={n}"),
    st.integers(129, 10**4).map(lambda k: f"max_model_len={k}K"),
    st.integers(-(10**6), -1).map(lambda n: f"images_per_prompt={n}"),
    st.one_of(st.integers(max_value=0), st.integers(min_value=4097)).map(
        lambda n: f"max_num_seqs={n}"
    ),
    st.one_of(st.integers(max_value=0), st.integers(min_value=65536)).map(lambda n: f"port={n}"),
    st.text(min_size=1, max_size=8)
    .filter(lambda t: t not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"))
    .map(lambda t: f"kv_cache_dtype={t}"),
    st.text(min_size=1, max_size=8)
    .filter(lambda t: t not in ("ollama", "vllm", "docker", "simulator"))
    .map(lambda t: f"backend={t}"),
    st.sampled_from(["1", "2", "0.5", "true"]).map(lambda v: f"extends={v}"),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad=invalid_setting,
    good=st.lists(st.sampled_from(["max_num_seqs=4", "tools=false", "vision=false"]), max_size=2),
    profile=st.sampled_from(SHIPPED),
)
def test_invalid_values_always_raise_config_error(bad: str, good: list[str], profile: str) -> None:
    with pytest.raises(ConfigError) as info:
        prof = load_profile(profile, parse_set([*good, bad]))
        build_plan(prof, PlanOptions(detect_installed=False))
    key = bad.partition("=")[0]
    assert key in info.value.message


# --- hardware.gpu_ids: which GPUs a deployment uses ---------------------------------------------


def test_gpu_ids_reach_every_backend() -> None:
    from msmall.backends import PlanOptions, build_plan
    from msmall.profiles import load_profile, parse_set

    prof = load_profile("2x4090-fp8-vision", parse_set(["gpu_ids=[2, 3]"]))
    assert prof.hardware.gpu_ids == ["2", "3"]
    for backend in ("vllm", "ollama", "simulator"):
        plan = build_plan(prof, PlanOptions(backend=backend, vllm_version="0.33.0"))
        assert plan.env["CUDA_VISIBLE_DEVICES"] == "2,3", backend
    docker = build_plan(prof, PlanOptions(backend="docker"))
    assert docker.container is not None
    assert docker.container.gpu_device_ids == ["2", "3"]
    assert "CUDA_VISIBLE_DEVICES" not in docker.container.environment
    assert "--gpus '\"device=2,3\"'" in docker.docker_run()


def test_gpu_ids_default_is_all_gpus() -> None:
    from msmall.backends import PlanOptions, build_plan
    from msmall.profiles import load_profile

    prof = load_profile("2x4090-fp8-vision")
    plan = build_plan(prof, PlanOptions(backend="vllm", vllm_version="0.33.0"))
    assert "CUDA_VISIBLE_DEVICES" not in plan.env
    docker = build_plan(prof, PlanOptions(backend="docker"))
    assert "--gpus all" in docker.docker_run()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0]", "lists 1 GPU(s) but serving.tensor_parallel_size is 2"),
        ("[zero, one]", "'zero' is neither a GPU index nor a GPU-/MIG- UUID"),
        ("[]", "must be a list of GPU indices or UUIDs"),
    ],
)
def test_bad_gpu_ids_are_refused(value: str, message: str) -> None:
    from msmall.errors import ConfigError
    from msmall.profiles import load_profile, parse_set

    with pytest.raises(ConfigError) as err:
        load_profile("2x4090-fp8-vision", parse_set([f"gpu_ids={value}"]))
    assert message in str(err.value)
