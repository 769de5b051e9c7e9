"""`msmall export` checked by the real consumers: the compose-spec schema (check-jsonschema),
the Kubernetes schemas (kubernetes-validate --strict, pinned version), `systemd-analyze verify`,
and the fake vllm's parser (vLLM 0.33's data-parallel flags) running the node scripts.

Files are generated in process (the same `msmall.export.build` the CLI calls) and written with
the CLI's writer; a few tests run the CLI itself as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FAKES_DIR, msmall_cmd
from export_cases import SHIPPED, expected_error, export_args
from msmall.backends.base import PlanOptions
from msmall.export import KUBERNETES_VERSION, ExportOptions, build, write_files
from msmall.profiles import load_profile, parse_set

TOOL_TIMEOUT_S = 120


def options_from(args: list[str]) -> tuple[PlanOptions, list[str]]:
    """PlanOptions and --set overrides from export_args()'s CLI arguments."""
    backend = args[args.index("--backend") + 1] if "--backend" in args else None
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return PlanOptions(backend=backend), sets


def export_all(target: str, directory: Path, **export_opts) -> list[Path]:
    """Every shipped profile's files for a target, one subdirectory each."""
    written = []
    for profile in SHIPPED:
        if expected_error(target, profile):
            continue
        opts, sets = options_from(export_args(target, profile))
        result, _ = build(target, profile, sets, opts, ExportOptions(**export_opts))
        written += write_files(directory / profile, result.files)
    assert written
    return written


def run_tool(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, **kw)


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' brings it)")
    return path


def test_compose_files_pass_the_compose_spec_schema(tmp_path: Path) -> None:
    files = export_all("compose", tmp_path)
    files += write_files(
        tmp_path / "with-key",
        build(
            "compose",
            "h100-bf16-vision",
            ["hardware.gpu_ids=0"],
            PlanOptions(host="0.0.0.0", api_key="sk-test-only-1234"),
        )[0].files,
    )
    proc = run_tool(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, files)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # The consumer really checks: a misspelt key fails.
    (tmp_path / "compose.yaml").write_text(
        "services:\n  x:\n    image: a\n    restart_policy: no\n"
    )
    proc = run_tool(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(tmp_path / "compose.yaml")]
    )  # fmt: skip
    assert proc.returncode != 0


def test_k8s_manifests_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    files = export_all("k8s", tmp_path / "one")
    files += export_all("k8s", tmp_path / "many", replicas=3, download_init=True)
    proc = run_tool(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *map(str, files)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # PVC, Deployment and Service for each file, all passed.
    assert proc.stdout.count("passed for resource") == 3 * len(files), proc.stdout


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    (path,) = write_files(tmp_path, build("k8s", "h100-bf16-vision", [], PlanOptions())[0].files)
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[1]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    path.write_text(yaml.safe_dump_all(docs))
    proc = run_tool([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)])
    assert proc.returncode != 0


def _stub_bin(directory: Path) -> Path:
    """vllm, ollama and docker as executables: verify checks that ExecStart's program exists."""
    directory.mkdir()
    for name in ("vllm", "ollama", "docker"):
        stub = directory / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return directory


def test_systemd_units_pass_systemd_analyze_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    stubs = _stub_bin(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    if run_tool([analyze, "verify", str(probe)]).returncode != 0:
        pytest.skip("systemd-analyze verify cannot run here (it fails on a trivial unit)")
    units = export_all("systemd", tmp_path / "out")
    units += write_files(
        tmp_path / "docker",
        build(
            "systemd", "h100-bf16-vision", [], PlanOptions(backend="docker", api_key="sk-t-1234")
        )[0].files,
    )
    for unit in units:
        assert str(stubs) in unit.read_text() or sys.executable in unit.read_text()
    proc = run_tool([analyze, "verify", *map(str, units)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_systemd_analyze_verify_rejects_a_bad_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/nonexistent/vllm serve\nRestart=sometimes\n")
    assert run_tool([analyze, "verify", str(bad)]).returncode != 0


@pytest.mark.parametrize("profile", [p for p in SHIPPED if not expected_error("multinode", p)])
def test_multinode_node_scripts_pass_the_fake_vllm_parser(
    profile: str, tmp_path: Path, fakes_on_path: Path
) -> None:
    opts, sets = options_from(export_args("multinode", profile))
    result, _ = build("multinode", profile, sets, opts)
    write_files(tmp_path, result.files)
    prof = load_profile(profile, parse_set(sets))
    dp = prof.serving.data_parallel_size
    env = {**os.environ, "FAKE_VLLM_PARSE_ONLY": "1", "HEAD_IP": "10.0.0.1"}
    scripts = [*sorted(tmp_path.glob("node-*.sh")), tmp_path / "ray-serve.sh"]
    starts = []
    for script in scripts:
        # The script itself runs: its checks, its exports, then `exec vllm ...` (the fake).
        proc = run_tool(["sh", str(script)], env=env)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
        parsed = json.loads(proc.stdout.strip().splitlines()[-1])
        assert parsed["data_parallel_size"] == dp
        assert parsed["tensor_parallel_size"] == prof.serving.tensor_parallel_size
        assert parsed["model"] == prof.model.hf_repo
        if script.name == "ray-serve.sh":
            assert parsed["data_parallel_backend"] == "ray"
            assert parsed["distributed_executor_backend"] == "ray"
            continue
        assert parsed["data_parallel_address"] == "10.0.0.1"
        assert parsed["headless"] is (script.name != "node-0.sh")
        starts.append(parsed["data_parallel_start_rank"] or 0)
    local = dp // len(starts)
    assert starts == [n * local for n in range(len(starts))]


def test_a_node_script_without_head_ip_stops_with_one_line(tmp_path: Path) -> None:
    result, _ = build(
        "multinode", "h100-bf16-vision", ["serving.data_parallel_size=2"], PlanOptions()
    )
    write_files(tmp_path, result.files)
    env = {k: v for k, v in os.environ.items() if k != "HEAD_IP"}
    proc = run_tool(["sh", str(tmp_path / "node-1.sh")], env=env)
    assert proc.returncode != 0
    assert "HEAD_IP" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The CLI itself


def test_cli_streams_yaml_to_stdout_and_prints_how_to_create_the_secret() -> None:
    proc = run_tool(
        msmall_cmd("export", "k8s", "--profile", "2x4090-fp8-vision", "--replicas", "2")
    )
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout)]
    assert kinds == ["PersistentVolumeClaim", "Deployment", "Service"]
    assert "kubectl create secret generic msmall-secrets" in proc.stderr


def test_cli_writes_files_and_lists_them(tmp_path: Path) -> None:
    out = tmp_path / "units"
    proc = run_tool(msmall_cmd("export", "multinode", "-p", "h100-bf16-vision",
                               "--set", "serving.data_parallel_size=2", "-o", str(out)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split()
    assert listed == [str(out / n) for n in
                      ("node-0.sh", "node-1.sh", "ray-head.sh", "ray-worker.sh", "ray-serve.sh",
                       "README.txt")]  # fmt: skip
    assert all(Path(p).exists() for p in listed)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_errors_are_plain_and_exit_2() -> None:
    proc = run_tool(msmall_cmd("export", "helm", "--profile", "4090-q4"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: the vLLM production-stack chart runs vLLM only, not Ollama",
        "  Pass --backend vllm (a 4-bit profile then uses its w4a16 build).",
    ]


def test_cli_never_prints_a_secret(tmp_path: Path) -> None:
    secret = "sk-msmall-NeverPrinted-555"
    env = {**os.environ, "MSMALL_API_KEY": secret, "HF_TOKEN": "hf_NeverPrinted555"}
    for target in ("compose", "k8s", "helm", "systemd"):
        proc = run_tool(
            msmall_cmd("export", target, "-p", "h100-bf16-vision", "--host", "0.0.0.0"), env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert secret not in proc.stdout + proc.stderr
        assert "hf_NeverPrinted555" not in proc.stdout + proc.stderr
        assert "VLLM_API_KEY" in proc.stdout


def test_fakes_dir_has_the_vllm_the_scripts_exec() -> None:
    assert os.access(FAKES_DIR / "vllm", os.X_OK)
