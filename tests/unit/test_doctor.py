"""msmall doctor and the serve preflight, on every fake nvidia-smi scenario.

GPUs come from tests/fakes/nvidia-smi (MSMALL_GPU_SOURCE=nvidia-smi); NVML is never needed.
Engines (ollama, vllm) are tiny scripts written per test; Docker is either a socket that does
not exist or the fake Docker Engine API from tests/fakes/docker_engine.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import msmall_cmd
from msmall import doctor, launcher, preflight, weights
from msmall.backends import build_plan
from msmall.backends.base import PlanOptions
from msmall.errors import ConfigError, EnvironmentProblem
from msmall.hardware import Disk, Inventory, read_inventory
from msmall.profiles import load_profile, parse_set
from msmall.progress import RecordingReporter

SCENARIOS = ("none", "1x4090", "2x4090", "4090-8gb-used", "h100", "3090", "old-470")
RECOMMENDED = {
    "none": None,
    "1x4090": "4090-q4",
    "2x4090": "2x4090-fp8-vision",
    "4090-8gb-used": "4090-q4",
    "h100": "h100-bf16-vision",
    "3090": "4090-q4",
    "old-470": "4090-q4",
}
# Which GPU profiles fit each machine (by its GPUs' total memory).
FITTING = {
    "none": set(),
    "1x4090": {"4090-q4"},
    "2x4090": {"2x4090-fp8-vision", "4090-q4"},
    "4090-8gb-used": {"4090-q4"},
    "h100": {"h100-bf16-vision", "4090-q4"},
    "3090": {"4090-q4"},
    "old-470": {"4090-q4"},
}
SECRET = "hf_doctorTestSecret0123456789"


# Each Mistral Small 3.2 profile fits where its 3.1 counterpart does (same architecture; the FP8
# and Q4_K_M builds are the same size).
for _fitting in FITTING.values():
    _fitting |= {f"{name}-3.2" for name in _fitting}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH (ahead of the fakes) for per-test engine scripts."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


@pytest.fixture
def gpus(fakes_on_path: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Select a fake nvidia-smi scenario; Docker points at a socket that does not exist."""
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "nvidia-smi")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")

    def select(scenario: str) -> None:
        monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", scenario)

    return select


@pytest.fixture
def engines(bin_dir: Path) -> Path:
    """Ollama 0.33.0 and vLLM 0.33.0 'installed' (scripts that answer --version)."""
    _script(bin_dir, "ollama", 'echo "ollama version is 0.33.0"')
    _script(bin_dir, "vllm", 'echo "0.33.0"')
    return bin_dir


def _roomy(inv: Inventory) -> Inventory:
    """The same GPUs with plenty of RAM and disk, so that only what a test is about can fail."""
    inv.ram_total_gib, inv.ram_available_gib = 256.0, 200.0
    inv.disks = [Disk(purpose=d.purpose, path=d.path, free_gib=500.0) for d in inv.disks] or [
        Disk(purpose="huggingface-cache", path="/hf", free_gib=500.0)
    ]
    return inv


def _port(free_port: int) -> list[str]:
    return [f"port={free_port}"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        msmall_cmd(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# The doctor, in process, on every scenario


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_doctor_on_every_scenario(scenario: str, gpus) -> None:
    gpus(scenario)
    report = doctor.run_doctor()

    assert report.recommended_profile == RECOMMENDED[scenario]
    fitting = {p.name for p in report.profiles if p.fits and p.gpus_needed}
    assert fitting == FITTING[scenario]
    by_name = {p.name: p for p in report.profiles}
    assert by_name["demo"].fits and by_name["demo"].verdict == "fits"
    assert not by_name["2x4090-bf16-vision"].fits
    for row in report.profiles:
        assert row.fits == (row.verdict != "does_not_fit")
        assert (row.max_context > 0) == row.fits
    # Without --profile only a broken driver fails: no GPU is a normal answer.
    assert report.exit_code == 0 and report.ok
    assert all(c.status != "fail" for c in report.checks)
    # Docker absent is a warning, not a hang or an error.
    assert report.check("docker").status == "warn"

    gpu = report.check("gpu")
    if scenario == "none":
        assert report.gpus == [] and report.driver_version is None
        assert gpu.status == "warn"
        assert "msmall serve --profile demo" in gpu.fix
        assert report.check("cuda").status == "skip"
        assert report.recommended_reason.startswith("no NVIDIA GPU found")
    else:
        assert gpu.status == "ok"
        assert report.recommended_reason.startswith("it fits")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_recommend_for_this_machine(scenario: str, gpus) -> None:
    gpus(scenario)
    name, why = preflight.recommend_for(read_inventory(), preflight.known_profiles())
    assert name == RECOMMENDED[scenario]
    if name is None:
        assert why.startswith("no NVIDIA GPU found: ")
        assert "NVIDIA driver" in why
    else:
        assert "fits" in why and "tokens" in why


def test_recommend_without_gpu_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest's default: MSMALL_GPU_SOURCE=none.
    name, why = preflight.recommend_for(read_inventory(), preflight.known_profiles())
    assert name is None
    assert why == "no NVIDIA GPU found: GPU detection is turned off (MSMALL_GPU_SOURCE=none)"


def test_json_shape(gpus) -> None:
    gpus("2x4090")
    data = doctor.run_doctor().to_dict()
    json.dumps(data)  # JSON-ready
    for key in ("gpus", "driver_version", "cuda_version", "checks", "profiles"):
        assert key in data
    assert data["recommended_profile"] == "2x4090-fp8-vision"
    assert data["driver_version"] == "550.127.05" and data["cuda_version"] == "12.4"
    for gpu in data["gpus"]:
        assert {
            "index",
            "name",
            "memory_total_mib",
            "memory_free_mib",
            "compute_capability",
        } <= set(gpu)
    assert [g["index"] for g in data["gpus"]] == [0, 1]
    assert data["gpus"][0]["memory_total_mib"] == 24564
    assert data["gpus"][0]["compute_capability"] == "8.9"
    for check in data["checks"]:
        assert set(check) >= {"name", "status", "detail", "fix"}
        assert check["status"] in ("ok", "warn", "fail", "skip")
    for row in data["profiles"]:
        assert set(row) >= {"name", "fits", "max_context", "verdict", "reason"}
    fp8 = next(r for r in data["profiles"] if r["name"] == "2x4090-fp8-vision")
    assert fp8["fits"] is True and fp8["max_context"] > 32768


def test_busy_gpu_is_a_warning_with_the_figure(gpus) -> None:
    gpus("4090-8gb-used")
    report = doctor.run_doctor()
    check = report.check("gpu-memory")
    assert check.status == "warn"
    assert "8,194 MiB in use" in check.detail
    assert "16,018 MiB free of 24,564 MiB" in check.detail
    assert "nvidia-smi" in check.fix
    row = next(p for p in report.profiles if p.name == "4090-q4")
    # The machine can hold it; the memory free right now cannot.
    assert row.fits and row.verdict_now == "does_not_fit"
    assert report.check("memory-fit").status == "warn"  # recommended, not named: a warning


def test_old_driver_fails_the_profiles_min_cuda(gpus, engines: Path, free_port: int) -> None:
    gpus("old-470")
    inv = _roomy(read_inventory())
    assert inv.cuda_version == "11.4"
    assert inv.gpus[0].compute_capability is None  # R470 rejects the compute_cap field
    report = doctor.run_doctor("4090-q4", overrides=_port(free_port), inventory=inv)
    cuda = report.check("cuda")
    assert cuda.status == "fail"
    assert "CUDA 11.4" in cuda.detail and "needs CUDA 12.0" in cuda.detail
    assert "R525" in cuda.fix
    assert report.exit_code == 3
    # Without --profile the same driver is only a warning against the recommended profile.
    assert doctor.run_doctor(inventory=inv).exit_code == 0
    assert doctor.run_doctor(inventory=inv).check("cuda").status == "warn"


def test_named_profile_that_does_not_fit_exits_3(gpus) -> None:
    gpus("2x4090")
    report = doctor.run_doctor("2x4090-bf16-vision")
    assert report.exit_code == 3 and not report.ok
    assert report.profile == "2x4090-bf16-vision"
    fit_check = report.check("memory-fit")
    assert fit_check.status == "fail"
    assert "44.7 GiB" in fit_check.detail
    assert "2x4090-fp8-vision" in fit_check.fix


def test_named_profile_that_fits_exits_0(
    gpus, engines: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus("h100")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    report = doctor.run_doctor(
        "h100-bf16-vision", overrides=_port(free_port), inventory=_roomy(read_inventory())
    )
    assert report.exit_code == 0, [c for c in report.checks if c.status == "fail"]
    assert report.check("cuda").status == "ok"  # CUDA 13.1 >= 12.0
    assert report.check("memory-fit").status == "ok"
    assert report.check("vllm").detail == "vllm 0.33.0"
    assert report.check("ollama").detail == "ollama 0.33.0"
    assert report.engines == {"ollama": "0.33.0", "vllm": "0.33.0", "docker": None}
    hf = report.check("hf-token")
    assert hf.status == "ok" and "HF_TOKEN is set" in hf.detail
    assert SECRET not in json.dumps(report.to_dict())


def test_named_gpu_profile_without_gpu_fails(gpus, engines: Path, free_port: int) -> None:
    gpus("none")
    report = doctor.run_doctor("4090-q4", overrides=_port(free_port))
    assert report.check("gpu").status == "fail"
    assert report.exit_code == 3
    demo = doctor.run_doctor("demo")
    assert demo.check("gpu").status == "warn"
    assert demo.exit_code == 0


def test_gated_repo_without_token_fails_only_when_named(gpus, engines: Path, free_port) -> None:
    gpus("h100")
    inv = _roomy(read_inventory())
    named = doctor.run_doctor("h100-bf16-vision", overrides=_port(free_port), inventory=inv)
    check = named.check("hf-token")
    assert check.status == "fail" and "gated" in check.detail
    assert "HF_TOKEN" in check.fix
    assert named.exit_code == 3
    recommended = doctor.run_doctor(inventory=inv)
    assert recommended.check("hf-token").status == "warn"
    assert recommended.exit_code == 0


def test_hf_token_from_the_token_file(tmp_path: Path) -> None:
    # conftest sets HF_HOME=tmp/hf; `hf auth login` stores the token there.
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text(SECRET + "\n")
    source = weights.hf_token_source()
    assert source is not None and "token" in source and SECRET not in source


def test_ollama_profile_needs_ollama(
    gpus, bin_dir: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus("1x4090")
    inv = _roomy(read_inventory())
    # The GPUs are read; now hide the fake engines (tests/fakes has an `ollama`).
    monkeypatch.setenv("PATH", str(bin_dir))
    missing = doctor.run_doctor("4090-q4", overrides=_port(free_port), inventory=inv)
    assert missing.check("ollama").status == "fail"
    assert missing.exit_code == 3
    # With no server running, `ollama --version` warns first and names only the client.
    _script(
        bin_dir,
        "ollama",
        'echo "Warning: could not connect to a running Ollama instance"\n'
        'echo "Warning: client version is 0.6.8"',
    )
    present = doctor.run_doctor("4090-q4", overrides=_port(free_port), inventory=inv)
    assert present.check("ollama").status == "ok"
    assert present.engines["ollama"] == "0.6.8"
    # 4090-q4 on one 4090: the vision encoder goes to CPU, so it is tight, not a failure.
    assert present.check("memory-fit").status == "warn"
    assert present.exit_code == 0
    _script(bin_dir, "ollama", 'echo "ollama version is 0.6.2"')
    old = doctor.run_doctor("4090-q4", overrides=_port(free_port), inventory=inv)
    assert old.check("ollama").status == "fail" and "0.6.5" in old.check("ollama").detail


def test_port_in_use(gpus, engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus("h100")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        report = doctor.run_doctor(
            "h100-bf16-vision", overrides=[f"port={port}"], inventory=_roomy(read_inventory())
        )
    check = report.check("port")
    assert check.status == "fail" and f"127.0.0.1:{port}" in check.detail
    assert f"--port {port + 1}" in check.fix
    assert report.exit_code == 3


def test_broken_driver_fails_without_a_profile() -> None:
    inv = Inventory(
        source="none",
        problem="NVIDIA driver and library versions differ (driver updated without a reboot?)",
    )
    assert doctor.driver_broken(inv)
    report = doctor.run_doctor(inventory=inv)
    assert report.check("gpu").status == "fail"
    assert report.exit_code == 3
    for absent in (
        "nvidia-smi is not on PATH",
        "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is installed; "
        "nvidia-smi is not on PATH",
        "GPU detection is turned off (MSMALL_GPU_SOURCE=none)",
        "nvidia-smi could not talk to the NVIDIA driver (not installed or not loaded)",
    ):
        assert not doctor.driver_broken(Inventory(problem=absent)), absent


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        doctor.run_doctor("no-such-profile")


# ---------------------------------------------------------------------------------------------
# Docker


def test_docker_socket_missing_is_a_fast_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nowhere/docker.sock")
    started = time.monotonic()
    report = doctor.run_doctor()
    assert time.monotonic() - started < 5
    check = report.check("docker")
    assert check.status == "warn" and "does not exist" in check.detail
    assert report.check("docker-gpu") is None


def test_docker_tcp_host_that_does_not_answer(monkeypatch, free_port: int) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port}")
    started = time.monotonic()
    status = doctor.docker_status()
    assert time.monotonic() - started < 5
    assert status.version is None and status.unreachable
    assert f"DOCKER_HOST=tcp://127.0.0.1:{free_port}" in status.unreachable


def test_docker_reachable_with_and_without_nvidia(gpus, tmp_path: Path, monkeypatch) -> None:
    from fakes.docker_engine import running_fake_docker

    gpus("2x4090")
    with running_fake_docker(tmp_path) as fake:
        monkeypatch.setenv("DOCKER_HOST", fake.docker_host)
        report = doctor.run_doctor()
        assert report.check("docker").status == "ok"
        assert "27.5.1" in report.check("docker").detail
        assert report.check("docker-gpu").status == "ok"
        # Driver 550 is older than R580: the CUDA 13 images need the -cu129 tag.
        cuda13 = report.check("docker-cuda13")
        assert cuda13.status == "warn" and "-cu129" in cuda13.fix
        fake.engine.settings.nvidia = False
        fake.engine.settings.cdi_spec_dirs = []
        no_toolkit = doctor.run_doctor()
        check = no_toolkit.check("docker-gpu")
        assert check.status == "warn" and "no NVIDIA runtime" in check.detail
        assert "nvidia-ctk" in check.fix
        named = doctor.run_doctor("2x4090-fp8-vision", backend="docker")
        assert named.check("docker-gpu").status == "fail"
        assert named.exit_code == 3


def test_docker_cuda13_ok_on_a_new_driver(gpus) -> None:
    gpus("h100")
    report = doctor.run_doctor("h100-bf16-vision", backend="docker")
    assert report.check("docker").status == "fail"  # named docker backend, no daemon
    assert report.check("docker-cuda13").status == "ok"


# ---------------------------------------------------------------------------------------------
# Preflight (msmall serve)


def _plan(prof, backend: str | None = None):
    return build_plan(prof, PlanOptions(backend=backend, vllm_version="0.33.0"))


def run_preflight(prof, plan, *, force=False, reporter=None, inventory=None):
    """The preflight on this machine's inventory; the (possibly resolved) profile it returns."""
    inv = inventory if inventory is not None else read_inventory()
    return preflight.preflight(prof, plan, inv, force=force, reporter=reporter).profile


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_preflight_on_every_scenario(scenario: str, gpus) -> None:
    """What `msmall serve --profile P` decides for each shipped GPU profile on each machine."""
    gpus(scenario)
    inv = read_inventory()
    decisions = {}
    for name in ("2x4090-bf16-vision", "2x4090-fp8-vision", "4090-q4", "h100-bf16-vision"):
        prof = load_profile(name)
        reporter = RecordingReporter()
        try:
            run_preflight(prof, _plan(prof), force=False, reporter=reporter, inventory=inv)
        except EnvironmentProblem as exc:
            assert exc.exit_code == 3 and exc.fix
            decisions[name] = "refused"
        else:
            decisions[name] = "ok"
    expected = {
        "none": {"2x4090-bf16-vision": "ok", "2x4090-fp8-vision": "ok", "4090-q4": "ok",
                 "h100-bf16-vision": "ok"},  # no GPU readable: nothing to check against
        "1x4090": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "refused",
                   "4090-q4": "ok", "h100-bf16-vision": "refused"},
        # fp8 fits two 4090s (CUDA 12.x builds run on the fake's R550 / CUDA 12.4 driver).
        "2x4090": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "ok",
                   "4090-q4": "ok", "h100-bf16-vision": "refused"},
        "4090-8gb-used": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "refused",
                          "4090-q4": "refused", "h100-bf16-vision": "refused"},
        "h100": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "refused",
                 "4090-q4": "ok", "h100-bf16-vision": "ok"},
        "3090": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "refused",
                 "4090-q4": "ok", "h100-bf16-vision": "refused"},
        "old-470": {"2x4090-bf16-vision": "refused", "2x4090-fp8-vision": "refused",
                    "4090-q4": "refused", "h100-bf16-vision": "refused"},
    }[scenario]  # fmt: skip
    assert decisions == expected


def test_preflight_refuses_bf16_on_two_4090s_pointing_to_fp8(gpus) -> None:
    gpus("2x4090")
    prof = load_profile("2x4090-bf16-vision")
    with pytest.raises(EnvironmentProblem) as caught:
        run_preflight(prof, _plan(prof), force=False, reporter=RecordingReporter())
    assert "does not fit 2x NVIDIA GeForce RTX 4090" in caught.value.message
    assert "44.7 GiB" in caught.value.message and "21.6 GiB per GPU" in caught.value.message
    assert "2x4090-fp8-vision" in caught.value.fix
    assert "--force" in caught.value.fix


def test_preflight_force_warns_and_continues(gpus) -> None:
    gpus("2x4090")
    prof = load_profile("2x4090-bf16-vision")
    reporter = RecordingReporter()
    assert run_preflight(prof, _plan(prof), force=True, reporter=reporter) is prof
    assert any("does not fit" in w and "--force" in w for w in reporter.warnings)


def test_preflight_force_warns_about_an_old_driver(gpus) -> None:
    gpus("old-470")
    prof = load_profile("4090-q4")
    reporter = RecordingReporter()
    assert run_preflight(prof, _plan(prof), force=True, reporter=reporter) is prof
    assert any("CUDA 11.4" in w for w in reporter.warnings)


def test_preflight_gpu_count(gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus("1x4090")
    prof = load_profile("2x4090-fp8-vision")
    with pytest.raises(EnvironmentProblem) as caught:
        run_preflight(prof, _plan(prof), force=False, reporter=RecordingReporter())
    assert "needs 2 GPUs" in caught.value.message and "has 1" in caught.value.message
    assert "--profile 4090-q4" in caught.value.fix
    # CUDA_VISIBLE_DEVICES hides one of two GPUs from a process backend.
    gpus("2x4090")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(EnvironmentProblem, match="has 1"):
        run_preflight(prof, _plan(prof), force=False, reporter=RecordingReporter())


def test_preflight_cuda_too_old(gpus) -> None:
    gpus("old-470")
    prof = load_profile("4090-q4")
    with pytest.raises(EnvironmentProblem) as caught:
        run_preflight(prof, _plan(prof), force=False, reporter=RecordingReporter())
    assert "CUDA 11.4" in caught.value.message and "CUDA 12.0" in caught.value.message
    assert "R525" in caught.value.fix
    reporter = RecordingReporter()
    run_preflight(prof, _plan(prof), force=True, reporter=reporter)
    assert any("CUDA 11.4" in w for w in reporter.warnings)


def test_preflight_busy_gpu_refuses_with_the_free_figure(gpus) -> None:
    gpus("4090-8gb-used")
    prof = load_profile("4090-q4")
    with pytest.raises(EnvironmentProblem) as caught:
        run_preflight(prof, _plan(prof, "vllm"), force=False, reporter=RecordingReporter())
    assert "15.6 GiB free" in caught.value.message
    assert "Stop the other processes" in caught.value.fix


def test_preflight_resolves_auto_context(gpus) -> None:
    gpus("h100")
    prof = load_profile("h100-bf16-vision", {"serving": {"max_model_len": "auto"}})
    reporter = RecordingReporter()
    resolved = run_preflight(prof, _plan(prof), force=False, reporter=reporter)
    expected = preflight.largest_context(prof, [81559], "vllm", [81081])
    assert expected > 65536
    assert resolved.serving.max_model_len == expected
    assert prof.serving.max_model_len == "auto"  # the caller's profile is left alone
    assert resolved.source == prof.source
    assert any(f"{expected:,} tokens" in line for line in reporter.infos)


def test_preflight_tight_is_a_warning(gpus) -> None:
    gpus("3090")
    prof = load_profile("4090-q4")
    reporter = RecordingReporter()
    assert run_preflight(prof, _plan(prof), force=False, reporter=reporter) is prof
    assert any("vision encoder" in w for w in reporter.warnings)


def test_preflight_without_gpu_says_so(gpus) -> None:
    gpus("none")
    prof = load_profile("h100-bf16-vision")
    reporter = RecordingReporter()
    assert run_preflight(prof, _plan(prof), force=False, reporter=reporter) is prof
    assert reporter.infos and reporter.infos[0].startswith("no GPU readable")


def test_preflight_skips_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reading(*args, **kwargs):
        raise AssertionError("the simulator must not read GPUs")

    monkeypatch.setattr("msmall.hardware.read_inventory", no_reading)
    demo = load_profile("demo")
    assert run_preflight(demo, _plan(demo), force=False, reporter=RecordingReporter()) is demo
    h100 = load_profile("h100-bf16-vision")
    plan = _plan(h100, "simulator")
    assert run_preflight(h100, plan, force=False, reporter=RecordingReporter()) is h100


def test_preflight_docker_image_needs_cu129_on_old_driver(gpus) -> None:
    gpus("2x4090")
    prof = load_profile("2x4090-fp8-vision")
    reporter = RecordingReporter()
    run_preflight(prof, _plan(prof, "docker"), force=True, reporter=reporter)
    assert any("-cu129" in w for w in reporter.warnings)


def test_final_plan_uses_this_preflight(gpus) -> None:
    gpus("2x4090")
    with pytest.raises(EnvironmentProblem, match="does not fit"):
        launcher.final_plan("2x4090-bf16-vision")
    plan = launcher.final_plan(None)
    assert plan.profile == "2x4090-fp8-vision" and "2x4090-fp8-vision" in plan.notes[0]
    assert plan.preflight is not None and plan.preflight["verdict"] == "fits"


# ---------------------------------------------------------------------------------------------
# The CLI, as a real subprocess


@pytest.mark.parametrize("scenario", ["none", "2x4090", "h100"])
def test_cli_json(scenario: str, gpus) -> None:
    gpus(scenario)
    done = _run("doctor", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["recommended_profile"] == RECOMMENDED[scenario]
    assert len(data["gpus"]) == {"none": 0, "2x4090": 2, "h100": 1}[scenario]
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses["docker"] == "warn"
    assert statuses["gpu"] == ("warn" if scenario == "none" else "ok")


def test_cli_text_busy_gpu(gpus) -> None:
    gpus("4090-8gb-used")
    done = _run("doctor")
    assert done.returncode == 0, done.stderr
    assert "8,194 MiB in use" in done.stdout
    assert "Recommended: 4090-q4" in done.stdout
    assert "\x1b[" not in done.stdout  # no colour codes in a pipe


def test_cli_named_profile_that_does_not_fit_exits_3(gpus) -> None:
    gpus("2x4090")
    done = _run("doctor", "--profile", "2x4090-bf16-vision")
    assert done.returncode == 3
    assert "2x4090-fp8-vision" in done.stdout
    assert "cannot run here" in done.stderr
    as_json = _run("doctor", "--profile", "2x4090-bf16-vision", "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["exit_code"] == 3


def test_cli_never_prints_the_token(gpus, engines: Path, free_port: int) -> None:
    gpus("h100")
    env = {"HF_TOKEN": SECRET}
    for args in (["--json"], []):
        done = _run(
            "doctor", "--profile", "h100-bf16-vision", "--set", f"port={free_port}", *args, env=env
        )
        assert SECRET not in done.stdout + done.stderr
        assert "HF_TOKEN is set" in done.stdout


def test_cli_backend_needs_profile() -> None:
    done = _run("doctor", "--backend", "vllm")
    assert done.returncode == 2 and "--profile" in done.stderr


def test_serve_refuses_bf16_on_two_4090s_before_starting(gpus, bin_dir: Path, tmp_path) -> None:
    gpus("2x4090")
    started = tmp_path / "vllm-started"
    _script(bin_dir, "vllm", f'[ "$1" = "--version" ] && echo 0.33.0 && exit 0\ntouch "{started}"')
    done = _run("serve", "--profile", "2x4090-bf16-vision")
    assert done.returncode == 3, done.stderr
    assert "does not fit" in done.stderr
    assert "2x4090-fp8-vision" in done.stderr
    assert not started.exists()


def test_serve_dry_run_runs_the_serve_preflight(
    gpus, bin_dir: Path, fakes_on_path: Path, tmp_path: Path
) -> None:
    """--dry-run refuses what serve refuses, with the same exit code, and reads the GPUs once."""
    gpus("2x4090")
    calls = tmp_path / "nvidia-smi-calls"
    # Count the reads: a wrapper ahead of the fake, one line per `nvidia-smi --query-gpu` call.
    _script(
        bin_dir,
        "nvidia-smi",
        f'case "$1" in --query-gpu*) echo x >> "{calls}";; esac\n'
        f'exec "{fakes_on_path}/nvidia-smi" "$@"',
    )
    done = _run("serve", "--profile", "2x4090-bf16-vision", "--dry-run")
    assert done.returncode == 3, done.stderr
    assert "does not fit" in done.stderr and "2x4090-fp8-vision" in done.stderr
    assert done.stdout == ""
    assert calls.read_text().count("x") == 1
    forced = _run("serve", "--profile", "2x4090-bf16-vision", "--dry-run", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "vllm" in forced.stdout and "--force" in forced.stderr


def test_help_stays_light() -> None:
    code = (
        "import sys, msmall.cli.app; "
        "print(sorted(m for m in ('msmall.hardware', 'msmall.fit', 'msmall.doctor', 'docker') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"
    assert "doctor" in _run("--help").stdout


def test_gpu_ids_pick_the_gpus_the_fit_is_judged_on(gpus) -> None:
    # One 4090 has 8 GB in use; naming the other (free) card makes the launch possible.
    gpus("2x4090")
    inv = read_inventory()
    busy = inv.gpus[0]
    busy.memory_used_mib, busy.memory_free_mib = 20000, busy.memory_total_mib - 20000
    on_busy = load_profile("4090-q4", parse_set(["gpu_ids=[0]", "backend=vllm"]))
    with pytest.raises(EnvironmentProblem) as refused:
        run_preflight(on_busy, _plan(on_busy), inventory=inv)
    assert "does not fit" in refused.value.message
    on_free = load_profile("4090-q4", parse_set(["gpu_ids=[1]", "backend=vllm"]))
    assert run_preflight(on_free, _plan(on_free), inventory=inv) is on_free
