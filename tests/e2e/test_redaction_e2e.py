"""No secret reaches any output, end to end: dry-run text and JSON, state records, the engine-log
tail printed on failure, the diagnosis, `ps --json`, `profiles show --json`.

Each secret has its own value, so a leak names its source. They arrive by every route a user has:
`--api-key` and MSMALL_API_KEY, the profile's serving.env and extra_args (each flag spelling), and
the inherited environment (HF_TOKEN and friends are in the user's shell, so the engine sees them).
The fake vllm with FAKE_VLLM_LEAK_SECRETS prints all of them into its log, as vLLM's
`non-default args:` line does with --api-key and --hf-token; `msmall logs` must blank them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import msmall_cmd
from msmall.plan import REDACTED

ENV_NAMES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    "VLLM_API_KEY",
    "MSMALL_API_KEY",
)


def secret(tag: str) -> str:
    return f"s3cr3t-{tag.lower().replace('_', '-')}-value"


PROFILE_TAGS = [f"profile-{n}" for n in ENV_NAMES]
FLAG_TAGS = ["flag-api-key", "flag-api-key-eq", "flag-api_key", "flag-hf-token"]
INHERITED_TAGS = [
    f"inherited-{n}" for n in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
]
OPTION_TAG = "option-api-key"
ALL_TAGS = [*PROFILE_TAGS, *FLAG_TAGS, *INHERITED_TAGS, OPTION_TAG]


def leaky_profile(
    tmp_path: Path, extra_args: list[str] | None = None, env_names: tuple[str, ...] = ENV_NAMES
) -> Path:
    path = tmp_path / "leaky.yaml"
    env = "".join(f"    {n}: {secret(f'profile-{n}')}\n" for n in env_names) or "    {}\n"
    if extra_args is None:
        extra_args = [
            "--api-key", secret("flag-api-key"),
            "--api_key", secret("flag-api_key"),
            "--hf-token", secret("flag-hf-token"),
            f"--api-key={secret('flag-api-key-eq')}",  # the last one is the key vLLM uses
        ]  # fmt: skip
    args = "".join(f"\n    - {json.dumps(a)}" for a in extra_args) or " []"
    path.write_text(
        "extends: h100-bf16-vision\n"
        "serving:\n"
        "  max_model_len: 16384\n"
        f"  env:\n{env}"
        f"  extra_args:{args}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def env(fakes_on_path, isolated_world) -> dict[str, str]:
    out = dict(os.environ)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"):
        out[name] = secret(f"inherited-{name}")
    return out


def run(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        msmall_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def assert_clean(text: str, tags: list[str] = ALL_TAGS) -> None:
    leaked = [t for t in tags if secret(t) in text]
    assert not leaked, f"leaked {leaked} in:\n{text}"


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator", "ollama"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_dry_run(env, tmp_path: Path, backend: str, as_json: bool) -> None:
    args = ["serve", "-p", str(leaky_profile(tmp_path)), "-b", backend, "--dry-run"]
    if backend == "ollama":  # Ollama takes no vLLM flags
        args = ["serve", "-p", str(leaky_profile(tmp_path, [])), "-b", backend, "--dry-run"]
    result = run(env, *args, *(["--json"] if as_json else []))
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    assert REDACTED in result.stdout


@pytest.mark.parametrize("route", ["option", "MSMALL_API_KEY"])
def test_dry_run_with_the_key_from_msmall(env, tmp_path: Path, route: str) -> None:
    profile = str(leaky_profile(tmp_path, ["--hf_token", secret("flag-hf-token")]))
    args = ["serve", "-p", profile, "--dry-run", "--json"]
    if route == "option":
        args += ["--api-key", secret(OPTION_TAG)]
    else:
        env = {**env, "MSMALL_API_KEY": secret(OPTION_TAG)}
    result = run(env, *args)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    assert json.loads(result.stdout)["api_key"] == REDACTED


def test_two_different_keys_are_refused_without_showing_either(env, tmp_path: Path) -> None:
    profile = str(leaky_profile(tmp_path))
    result = run(env, "serve", "-p", profile, "--dry-run", "--api-key", secret(OPTION_TAG))
    assert result.returncode == 2
    assert "two API keys" in result.stderr
    assert "Traceback" not in result.stderr
    assert_clean(result.stdout + result.stderr)


def test_profiles_show_json(env, tmp_path: Path) -> None:
    result = run(env, "profiles", "show", str(leaky_profile(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_engine_printing_its_secrets_then_dying(env, tmp_path: Path, free_port: int, as_json):
    """The failure shows the log tail and a diagnosis; neither may carry a secret."""
    env = {**env, "FAKE_VLLM_LEAK_SECRETS": "die"}
    # The profile sets only the keys the user's shell does not, so the inherited ones reach it.
    profile = leaky_profile(tmp_path, env_names=("VLLM_API_KEY", "MSMALL_API_KEY"))
    result = run(
        env, "serve", "-p", str(profile), "-b", "vllm", "--port", str(free_port),
        *(["--json"] if as_json else []),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    shown = result.stdout + result.stderr
    assert_clean(shown)
    # The tail really was shown, with the engine's secrets blanked where they stood.
    assert "non-default args:" in shown
    assert "Engine core initialization failed" in shown
    assert shown.count(REDACTED) >= len(FLAG_TAGS) + len(INHERITED_TAGS)
    # The log on disk is the engine's own: it has the secrets (so this test is not vacuous).
    logs = list((tmp_path / "state").rglob("*.log"))
    on_disk = "".join(p.read_text() for p in logs)
    for tag in ("inherited-HF_TOKEN", "inherited-OPENAI_API_KEY", "flag-api-key-eq"):
        assert secret(tag) in on_disk, tag


def test_state_record_ps_and_live_log_view(env, tmp_path: Path, free_port: int) -> None:
    env = {**env, "FAKE_VLLM_LEAK_SECRETS": "1"}
    # The endpoint demands the extra_args key: msmall must use it for its own checks too.
    profile = str(leaky_profile(tmp_path, env_names=("VLLM_API_KEY", "MSMALL_API_KEY")))
    started = run(
        env, "serve", "-p", profile, "-b", "vllm", "--port", str(free_port), "--detach",
        "--json", "--name", "leaky",
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        # The live view echoes engine lines (non-default args) while loading.
        assert_clean(started.stdout + started.stderr)
        records = [
            p
            for p in (tmp_path / "state").rglob("*")
            if p.is_file() and not p.name.endswith(".log")
        ]
        assert records, "no state record written"
        for record in records:
            assert_clean(record.read_text(errors="replace"))
        ps = run(env, "ps", "--json")
        assert ps.returncode == 0, ps.stderr
        assert_clean(ps.stdout + ps.stderr)
        assert [r["name"] for r in json.loads(ps.stdout)] == ["leaky"]
        # `msmall logs` shows the engine's own log, which holds every secret in clear.
        logs = run(env, "logs", "leaky", "-n", "500")
        assert logs.returncode == 0, logs.stderr
        assert "non-default args" in logs.stdout
        assert_clean(logs.stdout + logs.stderr)
    finally:
        stopped = run(env, "stop", "--all")
    assert stopped.returncode == 0, stopped.stderr
    assert_clean(stopped.stdout + stopped.stderr)
