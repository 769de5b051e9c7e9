"""`msmall export` in process: goldens for every target x shipped profile, the helm values against
the chart's own schema and defaults, and the choices each target must keep (GPU counts, probes,
shm, secrets by name only, atomic writes, refusals).

Regenerate the goldens with ``MSMALL_UPDATE_GOLDEN=1 pytest tests/unit/test_export.py`` and read
the diff before accepting it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from conftest import DATA_DIR
from export_cases import CASES, SHIPPED, expected_error, export_args
from msmall.backends.base import PlanOptions
from msmall.errors import ConfigError
from msmall.export import (
    DOWNLOAD_BYTES_PER_S,
    LOAD_S,
    TARGETS,
    ExportOptions,
    build,
    shm_gib,
    stream,
    weights_bytes,
    write_files,
)

GOLDEN_DIR = DATA_DIR / "golden" / "export"
UPDATE_GOLDEN = os.environ.get("MSMALL_UPDATE_GOLDEN") == "1"
CHART_DIR = DATA_DIR / "production-stack-0.1.12"
HF_SECRET = "hf_ExportSecretValue123"
API_SECRET = "sk-msmall-ExportKey-987"


@pytest.fixture(autouse=True)
def fixed_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Goldens must not depend on where they are made: the HF cache path and what is on PATH.
    monkeypatch.setenv("HF_HOME", "/golden/hf-home")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def run_cli(*args: str) -> tuple[int, str, str]:
    from msmall.cli.app import app

    result = CliRunner().invoke(app, ["export", *args])
    if isinstance(result.exception, ConfigError):
        exc = result.exception
        return 2, result.stdout, "\n".join(filter(None, [f"error: {exc.message}", exc.fix]))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def export(target: str, profile: str, *extra: str) -> dict[str, str]:
    """The files of one export, parsed back from the CLI's -o output directory."""
    from msmall.cli.app import app

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        result = CliRunner().invoke(app, ["export", target, "-p", profile, *extra, "-o", str(out)])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert result.stdout.split() == [str(p) for p in sorted(out.iterdir(), key=_order(result))]
        return {p.name: p.read_text() for p in sorted(out.iterdir())}


def _order(result):
    listed = result.stdout.split()
    return lambda p: listed.index(str(p)) if str(p) in listed else -1


@pytest.mark.parametrize(("target", "profile"), CASES)
def test_golden_export(target: str, profile: str) -> None:
    code, out, err = run_cli(target, "--profile", profile, *export_args(target, profile))
    if expected_error(target, profile):
        assert code == 2
        text = err.strip() + "\n"
        assert 1 <= len(text.splitlines()) <= 2
    else:
        assert code == 0, err
        text = out.replace(sys.executable, "{python}")
    golden = GOLDEN_DIR / target / f"{profile}.txt"
    if UPDATE_GOLDEN or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        if not UPDATE_GOLDEN:
            pytest.fail(f"wrote missing golden {golden}; review it and rerun")
    assert text == golden.read_text()


def test_every_target_has_goldens() -> None:
    assert set(TARGETS) == {p.name for p in GOLDEN_DIR.iterdir()}
    for target in TARGETS:
        assert {p.stem for p in (GOLDEN_DIR / target).glob("*.txt")} == set(SHIPPED)


# ---------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize(("target", "profile"), [c for c in CASES if not expected_error(*c)])
def test_no_secret_in_any_file(target: str, profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    extra = export_args(target, profile)
    if load_backend(profile, extra) == "ollama":
        # Ollama has no authentication: beyond loopback only when the user says so.
        extra = [*extra, "--allow-unauthenticated"]
    files = export(target, profile, *extra, "--api-key", API_SECRET, "--host", "0.0.0.0")
    for name, text in files.items():
        assert HF_SECRET not in text, name
        assert API_SECRET not in text, name
    joined = "\n".join(files.values())
    if load_backend(profile, extra) not in ("ollama", "simulator"):
        assert "VLLM_API_KEY" in joined  # referenced by name, so the key is really required
        assert "HF_TOKEN" in joined


def load_backend(profile: str, extra: list[str]) -> str:
    from msmall.profiles import load_profile

    return (
        extra[extra.index("--backend") + 1]
        if "--backend" in extra
        else load_profile(profile).backend
    )


# ---------------------------------------------------------------------------------------------
# compose


def test_compose_gpu_ids_and_exposure() -> None:
    doc = yaml.safe_load(
        export("compose", "2x4090-fp8-vision", "--set", "hardware.gpu_ids=2,3")["compose.yaml"]
    )
    (svc,) = doc["services"].values()
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "device_ids": ["2", "3"], "capabilities": ["gpu"]}
    assert svc["ipc"] == "host" and svc["restart"] == "unless-stopped"
    assert svc["ports"] == ["127.0.0.1:8000:8000"]
    assert "HF_TOKEN" in svc["environment"]
    code, _, err = run_cli("compose", "-p", "h100-bf16-vision", "--host", "0.0.0.0")
    assert code == 2 and "without an API key" in err


def test_compose_start_period_covers_a_cold_download() -> None:
    doc = yaml.safe_load(export("compose", "h100-bf16-vision")["compose.yaml"])
    (svc,) = doc["services"].values()
    start = int(svc["healthcheck"]["start_period"].rstrip("s"))
    assert start >= 48e9 / DOWNLOAD_BYTES_PER_S
    assert "/health" in " ".join(svc["healthcheck"]["test"])


def test_compose_ollama_pulls_the_tag() -> None:
    doc = yaml.safe_load(export("compose", "4090-q4")["compose.yaml"])
    server, pull = doc["services"].values()
    assert server["image"].startswith("ollama/ollama")
    assert pull["command"] == ["pull", "mistral-small3.1:24b-instruct-2503-q4_K_M"]
    assert list(pull["depends_on"].values()) == [{"condition": "service_healthy"}]


# ---------------------------------------------------------------------------------------------
# k8s


def _k8s(profile: str, *extra: str) -> dict[str, dict]:
    docs = yaml.safe_load_all(export("k8s", profile, *extra)["k8s.yaml"])
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("profile", ["h100-bf16-vision", "2x4090-fp8-vision"])
def test_k8s_gpus_shm_probes(profile: str) -> None:
    from msmall.profiles import load_profile

    tp = load_profile(profile).serving.tensor_parallel_size
    docs = _k8s(profile, "--replicas", "3", "--api-key", API_SECRET)
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == tp
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{shm_gib(tp)}Gi"}
    # /health, never /v1/*: with the API key on, /v1/models answers 401.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    start = c["startupProbe"]
    download_s = weights_bytes(load_profile(profile)) / DOWNLOAD_BYTES_PER_S
    assert start["periodSeconds"] * start["failureThreshold"] >= download_s + LOAD_S
    if profile == "h100-bf16-vision":
        assert download_s >= 48e9 / DOWNLOAD_BYTES_PER_S  # BF16: the 48 GB the budget names
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "msmall-secrets"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert docs["Service"]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_k8s_download_init_container_shortens_the_startup_budget() -> None:
    plain = _k8s("h100-bf16-vision")["Deployment"]["spec"]["template"]["spec"]
    init = _k8s("h100-bf16-vision", "--download-init")["Deployment"]["spec"]["template"]["spec"]
    (container,) = init["initContainers"]
    assert "mistralai/Mistral-Small-3.1-24B-Instruct-2503" in container["command"]
    assert "initContainers" not in plain
    threshold = lambda spec: spec["containers"][0]["startupProbe"]["failureThreshold"]  # noqa: E731
    assert threshold(init) < threshold(plain)


# ---------------------------------------------------------------------------------------------
# helm: against the chart's own schema and default values


def _known(value: object, default: object, where: str) -> list[str]:
    """Key paths in value that the chart's default values do not have."""
    if isinstance(value, dict):
        if not isinstance(default, dict):
            return []
        unknown = []
        for key, sub in value.items():
            if key not in default:
                unknown.append(f"{where}.{key}")
            else:
                unknown += _known(sub, default[key], f"{where}.{key}")
        return unknown
    if isinstance(value, list) and isinstance(default, list) and default and value:  # noqa: SIM102
        if isinstance(default[0], dict):
            return [u for item in value for u in _known(item, default[0], where + "[]")]
    return []


@pytest.mark.parametrize("profile", [p for p in SHIPPED if not expected_error("helm", p)])
def test_helm_values_fit_the_chart(profile: str) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    values = yaml.safe_load(export("helm", profile, *export_args("helm", profile))["values.yaml"])
    jsonschema.validate(values, schema)
    assert _known(values, defaults, "") == []
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    assert "--host" not in spec["vllmConfig"]["extraArgs"]  # the chart sets it
    assert spec["requestGPU"] == spec["vllmConfig"]["tensorParallelSize"]


def test_helm_refuses_a_key_the_chart_does_not_know() -> None:
    # The check above really catches an invented key.
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    bad = {"servingEngineSpec": {"modelSpec": [{"name": "x", "gpuCount": 1}]}}
    assert _known(bad, defaults, "") == [".servingEngineSpec.modelSpec[].gpuCount"]


# ---------------------------------------------------------------------------------------------
# multinode, data parallel on one box


def test_multinode_layout_and_refusals() -> None:
    opts = PlanOptions(backend="vllm")
    result, _ = build(
        "multinode",
        "2x4090-fp8-vision",
        ["serving.data_parallel_size=3"],
        opts,
        ExportOptions(head_address="10.0.0.1"),
    )
    assert {"node-0.sh", "node-1.sh", "node-2.sh", "ray-serve.sh"} <= set(result.files)
    assert "--data-parallel-start-rank 2" in result.files["node-2.sh"]
    assert "--headless" not in result.files["node-0.sh"]
    with pytest.raises(ConfigError, match="fits one node"):
        build("multinode", "h100-bf16-vision", ["serving.data_parallel_size=2",
              "hardware.gpu_count=2"], opts)  # fmt: skip
    with pytest.raises(ConfigError, match="does not fit"):
        build("multinode", "4090-q4", ["serving.data_parallel_size=2", "model.weights=bf16",
              "model.hf_repo=mistralai/Mistral-Small-3.1-24B-Instruct-2503"], opts)  # fmt: skip


def test_data_parallel_on_one_box_is_in_the_plan_and_the_gpu_count() -> None:
    from msmall.backends import build_plan
    from msmall.preflight import gpus_needed
    from msmall.profiles import load_profile, parse_set

    prof = load_profile("h100-bf16-vision", parse_set(["serving.data_parallel_size=2"]))
    plan = build_plan(prof, PlanOptions(detect_installed=False))
    assert plan.argv[plan.argv.index("--data-parallel-size") + 1] == "2"
    assert gpus_needed(prof) == 2
    assert (
        "--data-parallel-size"
        not in build_plan(
            load_profile("h100-bf16-vision"), PlanOptions(detect_installed=False)
        ).argv
    )


# ---------------------------------------------------------------------------------------------
# Output


def test_write_files_is_atomic_and_lists(tmp_path: Path) -> None:
    written = write_files(tmp_path / "d", {"a.yaml": "x: 1\n", "run.sh": "#!/bin/sh\n"})
    assert [p.name for p in written] == ["a.yaml", "run.sh"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a.yaml", "run.sh"]
    assert os.access(tmp_path / "d" / "run.sh", os.X_OK)


def test_stream_is_one_yaml_stream() -> None:
    text = stream({"a.yaml": "x: 1\n", "b.yaml": "y: 2\n---\nz: 3\n"})
    assert list(yaml.safe_load_all(text)) == [{"x": 1}, {"y": 2}, {"z": 3}]


def test_unknown_target_is_two_plain_lines() -> None:
    code, _, err = run_cli("kustomize", "-p", "demo")
    assert code == 2
    assert err.splitlines() == [
        "error: unknown export target 'kustomize'",
        "Choose one of: compose, k8s, helm, systemd, multinode",
    ]


def test_serve_preflight_counts_data_parallel_gpus() -> None:
    from msmall import launcher
    from msmall.errors import EnvironmentProblem
    from msmall.hardware import GpuInfo, Inventory

    one_h100 = Inventory(
        gpus=[GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559,
                      memory_used_mib=0, memory_free_mib=81559)],
        driver_version="580.65", cuda_version="13.0", source="nvidia-smi",
    )  # fmt: skip
    with pytest.raises(EnvironmentProblem, match="data parallel 2 and needs 2 GPUs"):
        launcher.final_plan(
            "h100-bf16-vision",
            ["serving.data_parallel_size=2"],
            PlanOptions(detect_installed=False),
            inventory=one_h100,
        )
    two = Inventory(
        gpus=[*one_h100.gpus, GpuInfo(index=1, name="NVIDIA H100 80GB HBM3",
              memory_total_mib=81559, memory_used_mib=0, memory_free_mib=81559)],
        driver_version="580.65", cuda_version="13.0", source="nvidia-smi",
    )  # fmt: skip
    plan = launcher.final_plan(
        "h100-bf16-vision",
        ["serving.data_parallel_size=2"],
        PlanOptions(detect_installed=False),
        inventory=two,
    )
    assert plan.preflight["verdict"] in ("fits", "tight")
    assert "--data-parallel-size" in plan.argv


def test_replicas_below_one_is_refused() -> None:
    code, _, err = run_cli("k8s", "-p", "h100-bf16-vision", "--replicas", "0")
    assert code == 2 and "--replicas 0" in err
