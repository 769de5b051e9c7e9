"""The CLI for profiles and dry-run plans: `msmall profiles ...` and `msmall serve --dry-run`.

Most cases run `msmall.cli.app.main()` in-process (so the MsmallError -> exit code mapping is the
real one); a few run the CLI as a real subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import DATA_DIR, msmall_cmd
from msmall import paths
from msmall.cli.app import main

MALFORMED = DATA_DIR / "malformed"
SHIPPED = sorted(p.stem for p in paths.builtin_profiles_dir().glob("*.yaml"))
API_SECRET = "sk-cli-Secret-4242"
HF_SECRET = "hf_cliSecret0000"
# Pin the target vLLM where the test is not about it: no `vllm --version` probe on machines with vLLM.
PINNED = ("--vllm-version", "0.33.0")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `msmall ARGS` through main() in this process."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["msmall", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, env: dict[str, str] | None = None) -> Result:
    proc = subprocess.run(
        msmall_cmd(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_config_error(result: Result, expected: str) -> None:
    """Exit 2, one or two lines on stderr, the expected words, never a traceback."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err + result.out
    assert 1 <= len(result.err_lines) <= 2, result.err
    assert result.err_lines[0].startswith("error: ")
    assert expected in result.err, result.err


# ---------------------------------------------------------------------------------------------
# profiles list / show / validate


def test_profiles_list_table(cli) -> None:
    result = cli("profiles", "list")
    assert result.code == 0
    rows = result.out.splitlines()
    assert rows[0].split()[:3] == ["profile", "backend", "needs"]
    assert [row.split()[0] for row in rows[1:]] == SHIPPED
    q4 = next(row for row in rows if row.startswith("4090-q4 "))
    assert "ollama" in q4 and "1 GPU x 22 GiB" in q4 and "32768" in q4 and "1/prompt" in q4
    demo = next(row for row in rows if row.startswith("demo "))
    assert "simulator" in demo and "no GPU" in demo


def test_profiles_list_json_has_resolved_profiles_and_user_ones(cli) -> None:
    user = paths.user_profiles_dir()
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("extends: 4090-q4\nserving:\n  max_model_len: 8192\n")
    (user / "zz-broken.yaml").write_text("serving:\n  gpu_memory_utilization: 2\n")
    result = cli("profiles", "list", "--json")
    assert result.code == 0
    data = json.loads(result.out)
    by_name = {p["name"]: p for p in data if "name" in p}
    assert sorted(by_name) == sorted([*SHIPPED, "mine"])
    assert by_name["mine"]["serving"]["max_model_len"] == 8192
    assert by_name["mine"]["model"]["weights"] == "w4a16"  # inherited
    assert by_name["h100-bf16-vision"]["serving"]["images_per_prompt"] == 8
    errors = [p["error"] for p in data if "error" in p]
    assert len(errors) == 1 and "zz-broken.yaml:2" in errors[0] and "(0, 1]" in errors[0]


def test_profiles_show_yaml_round_trips(cli) -> None:
    result = cli("profiles", "show", "2x4090-bf16-vision")
    assert result.code == 0
    first, _, body = result.out.partition("\n")
    assert first == f"# {paths.builtin_profiles_dir() / '2x4090-bf16-vision.yaml'}"
    data = yaml.safe_load(body)
    assert data["name"] == "2x4090-bf16-vision"
    assert data["serving"]["tensor_parallel_size"] == 2  # from the parent
    assert data["serving"]["env"] == {"NCCL_P2P_DISABLE": "1"}
    assert data["model"]["hf_format"] == "mistral"


def test_profiles_show_json_with_set(cli) -> None:
    result = cli(
        "profiles", "show", "4090-q4", "--json", "--set", "max_model_len=16k",
        "--set", "serving.vision=false",
    )  # fmt: skip
    assert result.code == 0
    data = json.loads(result.out)
    assert data["serving"]["max_model_len"] == 16000
    assert data["serving"]["vision"] is False
    assert data["source"].endswith("4090-q4.yaml (with --set)")


def test_profiles_show_never_prints_secrets(cli, tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(
        f"extends: 4090-q4\nserving:\n  env:\n    HF_TOKEN: {HF_SECRET}\n"
        f"  extra_args: [--api-key, {API_SECRET}]\n"
    )
    for args in (("profiles", "show", str(path)), ("profiles", "show", str(path), "--json")):
        result = cli(*args)
        assert result.code == 0
        assert HF_SECRET not in result.out and API_SECRET not in result.out
        assert "***" in result.out


def test_profiles_validate_ok(cli, tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("extends: h100-bf16-vision\nserving:\n  max_model_len: 131072\n")
    result = cli("profiles", "validate", str(path))
    assert result.code == 0
    assert result.out.strip() == f"ok: {path} is a valid profile ('good', backend vllm)"


@pytest.mark.parametrize("name", SHIPPED)
def test_profiles_validate_every_shipped_file(cli, name: str) -> None:
    result = cli("profiles", "validate", str(paths.builtin_profiles_dir() / f"{name}.yaml"))
    assert result.code == 0 and f"('{name}'," in result.out


# ---------------------------------------------------------------------------------------------
# The malformed corpus: file -> expected message. "profile" errors are refused by the schema;
# "plan" errors are valid schemas whose launch plan is refused (vLLM 0.33 target). Both fail
# `profiles validate` and `serve`.

CORPUS: dict[str, tuple[str, str]] = {
    "yaml-bad-indent.yaml": ("profile", "yaml-bad-indent.yaml:4: malformed YAML: expected <block end>"),
    "yaml-tab-indent.yaml": ("profile", "yaml-tab-indent.yaml:3: malformed YAML: found character '\\t'"),
    "yaml-unclosed-quote.yaml": ("profile", "quoted scalar started on line 1"),
    "yaml-bad-date.yaml": ("profile", "yaml-bad-date.yaml: malformed YAML: month must be in 1..12"),
    "not-a-mapping.yaml": ("profile", "not-a-mapping.yaml: a profile must be a YAML mapping of keys, not list"),
    "not-utf8.yaml": ("profile", "cannot read profile"),
    "unknown-key-top.yaml": ("profile", "unknown-key-top.yaml:3: unknown key 'gpus'"),
    "unknown-key-nested.yaml": ("profile", "unknown-key-nested.yaml:4: unknown key 'serving.max_len'"),
    "wrong-type-tensor-parallel.yaml": ("profile", ":5: 'serving.tensor_parallel_size' input should be a valid integer"),
    "tensor-parallel-3.yaml": ("profile", ":5: 'serving.tensor_parallel_size' must divide the model's 8 KV heads: one of 1, 2, 4, 8"),
    "tensor-parallel-exceeds-gpus.yaml": ("profile", "serving.tensor_parallel_size 4 needs more GPUs than hardware.gpu_count 2"),
    "gpu-util-zero.yaml": ("profile", "gpu-util-zero.yaml:3: 'serving.gpu_memory_utilization' must be in (0, 1]"),
    "gpu-util-above-one.yaml": ("profile", "gpu-util-above-one.yaml:3: 'serving.gpu_memory_utilization' must be in (0, 1]"),
    "context-too-long.yaml": ("profile", ":3: 'serving.max_model_len' must be between 256 and 131072"),
    "context-not-a-number.yaml": ("profile", "'serving.max_model_len' must be a number of tokens"),
    "images-negative.yaml": ("profile", "images-negative.yaml:4: 'serving.images_per_prompt' must be between 0 and 256"),
    "unknown-backend.yaml": ("profile", "unknown-backend.yaml:2: 'backend' must be one of: ollama, vllm, docker, simulator (got 'tgi')"),
    "bad-hf-format.yaml": ("profile", ":4: 'model.hf_format' input should be 'mistral' or 'hf' (got 'gguf')"),
    "bad-min-cuda.yaml": ("profile", "bad-min-cuda.yaml:3: 'hardware.min_cuda' must look like '12.1'"),
    "port-out-of-range.yaml": ("profile", ":3: 'serving.port' must be between 1 and 65535"),
    "infinite-vram.yaml": ("profile", ":3: 'hardware.min_vram_gib' input should be a finite number"),
    "env-not-a-mapping.yaml": ("profile", ":3: 'serving.env' input should be a valid dictionary"),
    "extra-args-not-a-list.yaml": ("profile", ":3: 'serving.extra_args' input should be a valid list"),
    "extends-unknown.yaml": ("profile", "extends-unknown.yaml: extends: unknown profile '4090-q5'. Known profiles: 2x4090-bf16-vision"),
    "extends-not-a-name.yaml": ("profile", "'extends' must be a profile name or a file path"),
    "extends-cycle-a.yaml": ("profile", "extends-cycle-a.yaml: 'extends' makes a cycle"),
    "extends-cycle-b.yaml": ("profile", "extends-cycle-b.yaml: 'extends' makes a cycle"),
    "extends-bad-parent.yaml": ("profile", "yaml-bad-indent.yaml:4: malformed YAML"),
    "removed-flag.yaml": ("plan", "--disable-mm-preprocessor-cache was removed in vLLM 0.33.0"),
    "old-limit-mm-format.yaml": ("plan", "--limit-mm-per-prompt image=2 is the pre-0.10 format"),
    "mistral-flags-on-hf-repo.yaml": ("plan", "extra_args has --load-format mistral, but RedHatAI/"),
}  # fmt: skip


def test_corpus_table_covers_every_file() -> None:
    assert sorted(CORPUS) == sorted(p.name for p in MALFORMED.iterdir())
    assert sum(stage == "profile" for stage, _ in CORPUS.values()) >= 15


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_profile(cli, name: str) -> None:
    _stage, expected = CORPUS[name]
    path = str(MALFORMED / name)
    serve = cli("serve", "--profile", path, "--dry-run", "--vllm-version", "0.33.0")
    assert_config_error(serve, expected)
    # validate builds the plan too, so "plan" errors fail it like "profile" errors do.
    validate = cli("profiles", "validate", path)
    assert_config_error(validate, expected)


def test_profiles_validate_json(cli, tmp_path: Path) -> None:
    good = cli("profiles", "validate", str(paths.builtin_profiles_dir() / "4090-q4.yaml"), "--json")
    assert good.code == 0
    assert json.loads(good.out) == {
        "valid": True, "path": str(paths.builtin_profiles_dir() / "4090-q4.yaml"),
        "name": "4090-q4", "backend": "ollama",
    }  # fmt: skip
    bad = cli("profiles", "validate", str(MALFORMED / "removed-flag.yaml"), "--json")
    assert bad.code == 2
    report = json.loads(bad.out)
    assert report["valid"] is False
    assert "--disable-mm-preprocessor-cache was removed" in report["error"]
    assert "--mm-processor-cache-gb 0" in report["fix"]


def test_unknown_profile_shows_known_ones_and_closest(cli) -> None:
    result = cli("serve", "--profile", "h100", "--dry-run")
    assert_config_error(result, "unknown profile 'h100'. Known profiles: " + ", ".join(SHIPPED))
    assert "Did you mean 'h100-bf16-vision'?" in result.err_lines[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backend", "tgi"], "unknown backend 'tgi'"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
        (["--set", "tensor_parallel_size=3"], "must divide the model's 8 KV heads"),
        (["--set", "gpu_memory_utilization=1.5"], "must be in (0, 1]"),
        (["--set", "max_model_len=200000"], "must be between 256 and 131072"),
        (["--set", "images_per_prompt=-2"], "must be between 0 and 256"),
        (["--set", "max_model_len"], "--set expects key=value"),
        (["--set", "max_len=1"], "Did you mean 'max_model_len'?"),
        (["--backend", "vllm", "--vllm-version", "0.7.2"], "cannot serve Mistral Small 3.1"),
        (["--backend", "vllm", "--vllm-version", "banana"], "'banana' is not a vLLM version"),
        (["--pull", "sometimes"], "--pull must be never, missing or always"),
    ],
)
def test_serve_bad_options_exit_2(cli, args: list[str], expected: str) -> None:
    assert_config_error(cli("serve", "--profile", "4090-q4", *args, "--dry-run"), expected)


def test_serve_without_profile_says_how_to_pick_one(cli) -> None:
    # The same answer as `serve` without --profile on a machine with no GPU: exit 3, the demo.
    result = cli("serve", "--dry-run")
    assert result.code == 3 and "Traceback" not in result.err
    assert result.err_lines[0].startswith("error: no --profile given and no shipped profile fits")
    assert "--profile demo" in result.err_lines[1]


def test_debug_shows_the_traceback_instead(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from msmall.errors import ConfigError

    # --debug sets MSMALL_DEBUG in os.environ; registering it here makes the teardown remove it.
    monkeypatch.setenv("MSMALL_DEBUG", "")
    with pytest.raises(ConfigError):
        cli("--debug", "serve", "--profile", "nope", "--dry-run")


# ---------------------------------------------------------------------------------------------
# serve --dry-run


def test_dry_run_ollama_text(cli) -> None:
    result = cli("serve", "--profile", "4090-q4", "--dry-run")
    # stderr holds only the preflight's notes, as serve would print them (no GPU here).
    assert result.code == 0 and result.err_lines == [
        "# no GPU readable (GPU detection is turned off (MSMALL_GPU_SOURCE=none)): skipping the "
        "memory check"
    ]
    lines = result.out.splitlines()
    assert lines[0] == "# profile 4090-q4, backend ollama"
    assert "OLLAMA_HOST=127.0.0.1:11434 \\" in lines
    assert "  ollama serve" in lines
    assert "pulls and preloads mistral-small3.1:24b-instruct-2503-q4_K_M" in result.out
    assert lines[-1].startswith("# OpenAI base URL: http://127.0.0.1:11434/v1")


def test_dry_run_vllm_text_is_a_runnable_command(cli) -> None:
    result = cli(
        "serve", "--profile", "h100-bf16-vision", "--backend", "vllm", "--vllm-version", "0.9.2",
        "--set", "max_model_len=131072", "--port", "8123", "--dry-run",
    )  # fmt: skip
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == "# profile h100-bf16-vision, backend vllm, vLLM 0.9.2"
    command = "\n".join(line for line in lines if not line.startswith("#"))
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == ["vllm", "serve", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    assert argv[argv.index("--max-model-len") + 1] == "131072"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == "image=8"


def test_dry_run_json_is_the_public_plan(cli) -> None:
    result = cli(
        "serve", "--profile", "2x4090-fp8-vision", "--vllm-version", "0.33.0", "--set",
        "kv_cache_dtype=fp8", "--dry-run", "--json",
    )  # fmt: skip
    assert result.code == 0
    data = json.loads(result.out)
    assert data["backend"] == "vllm" and data["engine_version"] == "0.33.0"
    argv = data["argv"]
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image":4}'
    assert "--load-format" not in argv
    assert data["env"] == {"NCCL_P2P_DISABLE": "1"}
    assert data["openai_base_url"] == "http://127.0.0.1:8000/v1"
    assert data["api_key"] is None
    # The serve preflight ran (no GPU visible here, so it says it skipped the memory check).
    assert data["preflight"]["verdict"] == "skipped"
    assert data["notes"] == [
        "no GPU readable (GPU detection is turned off (MSMALL_GPU_SOURCE=none)): skipping the "
        "memory check"
    ]


def test_dry_run_docker_shows_the_docker_run_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    result = cli("serve", "--profile", "4090-q4", "--backend", "docker", "--dry-run")
    assert result.code == 0
    assert "docker run \\" in result.out
    assert "  -e HF_TOKEN \\" in result.out
    assert "  vllm/vllm-openai:v0.33.0 \\" in result.out
    assert HF_SECRET not in result.out + result.err
    data = json.loads(
        cli("serve", "--profile", "4090-q4", "--backend", "docker", "--dry-run", "--json").out
    )
    assert data["container"]["environment"]["HF_TOKEN"] == "***"
    assert data["docker_run"].startswith("docker run")
    assert HF_SECRET not in json.dumps(data)


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
def test_host_0000_without_a_key_is_refused(cli, backend: str) -> None:
    result = cli("serve", "--profile", "4090-q4", "--backend", backend, "--host", "0.0.0.0", *PINNED, "--dry-run")  # fmt: skip
    assert_config_error(result, "--host 0.0.0.0 exposes the server beyond this machine")
    assert "--api-key" in result.err_lines[1]


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
def test_host_0000_with_a_key_is_allowed_and_the_key_hidden(
    cli, monkeypatch: pytest.MonkeyPatch, backend: str, as_json: bool
) -> None:
    args = ["serve", "-p", "4090-q4", "-b", backend, "--host", "0.0.0.0", *PINNED, "--dry-run"]
    result = cli(*args, "--api-key", API_SECRET, *(["--json"] if as_json else []))
    assert result.code == 0, result.err
    assert API_SECRET not in result.out + result.err
    assert "***" in result.out or (backend == "docker" and "-e VLLM_API_KEY" in result.out)
    # The same through the environment variable.
    monkeypatch.setenv("MSMALL_API_KEY", API_SECRET)
    result = cli(*args, *(["--json"] if as_json else []))
    assert result.code == 0, result.err
    assert API_SECRET not in result.out + result.err
    if as_json:
        assert json.loads(result.out)["api_key"] == "***"


def test_ollama_on_0000_warns_on_stderr(cli) -> None:
    refused = cli("serve", "--profile", "4090-q4", "--host", "0.0.0.0", "--dry-run")
    assert refused.code == 2 and "--allow-unauthenticated" in refused.err
    result = cli(
        "serve", "--profile", "4090-q4", "--host", "0.0.0.0", "--allow-unauthenticated", "--dry-run"
    )
    assert result.code == 0
    assert result.err_lines[1].startswith("warning: Ollama has no authentication")
    assert "OLLAMA_HOST=0.0.0.0:11434" in result.out


# ---------------------------------------------------------------------------------------------
# Real subprocesses for the main paths


def test_subprocess_dry_run_default_profile() -> None:
    result = run_subprocess("serve", "--profile", "4090-q4", "--dry-run")
    assert result.code == 0, result.err
    assert "ollama serve" in result.out and "OLLAMA_CONTEXT_LENGTH=32768" in result.out


def test_subprocess_dry_run_vllm_json() -> None:
    result = run_subprocess(
        "serve", "--profile", "4090-q4", "--backend", "vllm", "--vllm-version", "0.33.0",
        "--set", "max_model_len=16384", "--dry-run", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    argv = json.loads(result.out)["argv"]
    assert argv[:3] == [
        "vllm", "serve", "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16",
    ]  # fmt: skip
    assert argv[argv.index("--max-model-len") + 1] == "16384"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_subprocess_errors_exit_2_without_traceback() -> None:
    assert_config_error(run_subprocess("serve", "--profile", "4090q4", "--dry-run"), "Did you mean '4090-q4'?")  # fmt: skip
    assert_config_error(
        run_subprocess("profiles", "validate", str(MALFORMED / "unknown-key-nested.yaml")),
        "unknown key 'serving.max_len'",
    )
    assert_config_error(
        run_subprocess(
            "serve", "-p", "4090-q4", "-b", "vllm", "--host", "0.0.0.0", *PINNED, "--dry-run"
        ),
        "without an API key",
    )


def test_subprocess_exposed_with_env_key_never_prints_it() -> None:
    result = run_subprocess(
        "serve", "-p", "h100-bf16-vision", "-b", "docker", "--host", "0.0.0.0", "--dry-run",
        env={"MSMALL_API_KEY": API_SECRET, "HF_TOKEN": HF_SECRET},
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "-p 0.0.0.0:8000:8000" in result.out and "-e VLLM_API_KEY" in result.out
    assert API_SECRET not in result.out + result.err
    assert HF_SECRET not in result.out + result.err


def test_subprocess_picks_up_the_installed_vllm(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo 0.9.2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = run_subprocess("serve", "-p", "h100-bf16-vision", "-b", "vllm", "--dry-run", env=env)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "# profile h100-bf16-vision, backend vllm, vLLM 0.9.2"
    assert "--limit-mm-per-prompt image=8" in result.out
    # --vllm-version overrides it.
    result = run_subprocess(
        "serve", "-p", "h100-bf16-vision", "-b", "vllm", "--vllm-version", "0.33.0", "--dry-run",
        env=env,
    )  # fmt: skip
    assert "--limit-mm-per-prompt '{\"image\":8}'" in result.out
