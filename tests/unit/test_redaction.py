"""Every secret spelling, through every in-process rendering: argv, env, plan JSON, dry-run text,
the docker run line, profile JSON and free text (log tails).

The names are FACTS.md's: vLLM reads --api-key / VLLM_API_KEY and accepts underscore spellings
of every flag (FlexibleArgumentParser); huggingface_hub reads HF_TOKEN and the older
HUGGING_FACE_HUB_TOKEN; vLLM's --hf-token takes the token (or, bare, means "use the login").
The end-to-end side (subprocesses, state files, log tails, ps) is tests/e2e/test_redaction_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msmall.backends import PlanOptions, build_plan
from msmall.backends.vllm.plan import profile_api_key
from msmall.errors import ConfigError
from msmall.plan import (
    REDACTED,
    SECRET_ENV,
    SECRET_FLAGS,
    redact_argv,
    redact_env,
    redact_text,
    render_command,
    secret_values,
)
from msmall.profiles import load_profile, parse_set, profile_to_dict

ENV_NAMES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    "VLLM_API_KEY",
    "MSMALL_API_KEY",
)
FLAG_NAMES = ("--api-key", "--api_key", "--hf-token", "--hf_token")


def secret(tag: str) -> str:
    return f"s3cr3t-{tag.strip('-').replace('_', '-').lower()}-value"


def test_the_secret_lists_name_every_spelling() -> None:
    assert set(ENV_NAMES) <= SECRET_ENV
    assert set(FLAG_NAMES) <= SECRET_FLAGS


@pytest.mark.parametrize("flag", FLAG_NAMES)
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_redact_argv_each_flag_spelling(flag: str, form: str) -> None:
    value = secret(flag)
    argv = ["vllm", "serve", "M", *([flag, value] if form == "separate" else [f"{flag}={value}"])]
    argv.append("--port")
    argv.append("8000")
    out = redact_argv(argv)
    assert value not in " ".join(out)
    expected = [flag, REDACTED] if form == "separate" else [f"{flag}={REDACTED}"]
    assert out == ["vllm", "serve", "M", *expected, "--port", "8000"]


def test_redact_argv_leaves_other_flags_alone() -> None:
    argv = ["vllm", "serve", "M", "--api-keys-file", "x", "--served-model-name", "api-key"]
    assert redact_argv(argv) == argv


@pytest.mark.parametrize("name", ENV_NAMES)
def test_redact_env_each_name(name: str) -> None:
    out = redact_env({name: secret(name), "NCCL_P2P_DISABLE": "1"})
    assert out == {name: REDACTED, "NCCL_P2P_DISABLE": "1"}


def test_redact_text_blanks_every_known_value() -> None:
    values = [secret(n) for n in ENV_NAMES]
    line = "INFO non-default args: " + " ".join(values)
    out = redact_text(line, [*values, None, ""])
    assert all(v not in out for v in values)
    assert out.count(REDACTED) == len(values)
    # Too-short values are not blanked: "a" would eat every letter a of the log.
    assert redact_text("a cat", ["a"]) == "a cat"


def _profile_with_every_secret(tmp_path: Path) -> Path:
    path = tmp_path / "leaky.yaml"
    env = "\n".join(f"    {n}: {secret(n)}" for n in ENV_NAMES)
    path.write_text(
        "extends: h100-bf16-vision\n"
        "serving:\n"
        "  env:\n"
        f"{env}\n"
        "  extra_args:\n"
        f"    - --api-key\n    - {secret('extra-api-key')}\n"
        f"    - --hf_token={secret('extra-hf-token')}\n",
        encoding="utf-8",
    )
    return path


ALL_TAGS = (*ENV_NAMES, "extra-api-key", "extra-hf-token", "option-api-key")


def _assert_clean(text: str) -> None:
    leaked = [t for t in ALL_TAGS if secret(t) in text]
    assert not leaked, f"secrets leaked: {leaked}\n{text}"


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
def test_plan_json_and_command_text_redact_everything(tmp_path: Path, backend: str) -> None:
    prof = load_profile(str(_profile_with_every_secret(tmp_path)))
    plan = build_plan(
        prof,
        PlanOptions(
            backend=backend,
            # vLLM and Docker adopt the profile's own --api-key (two different keys are refused).
            api_key=None if backend in ("vllm", "docker") else secret("option-api-key"),
            vllm_version="0.33.0",
            detect_installed=False,
        ),
    )
    public = json.dumps(plan.to_public_dict())
    _assert_clean(public)
    assert REDACTED in public
    _assert_clean(render_command(plan.argv, plan.env))
    if plan.container is not None:
        run_line = plan.docker_run() or ""
        _assert_clean(run_line)
        # Secrets reach the container by name (-e HF_TOKEN), read from the caller's environment.
        assert "-e HF_TOKEN " in run_line or "-e HF_TOKEN\\" in run_line
    if backend in ("vllm", "docker"):
        assert plan.api_key == secret("extra-api-key")
    # The plan really carries them (so redaction, not omission, is what is tested).
    raw = json.dumps([plan.argv, plan.env, plan.container.model_dump() if plan.container else {}])
    assert secret("extra-api-key") in raw


def test_profile_json_redacts_env_and_extra_args(tmp_path: Path) -> None:
    prof = load_profile(str(_profile_with_every_secret(tmp_path)))
    text = json.dumps(profile_to_dict(prof))
    _assert_clean(text)
    data = profile_to_dict(prof)
    assert all(data["serving"]["env"][n] == REDACTED for n in ENV_NAMES)


def test_secret_values_collects_every_source() -> None:
    argv = ["vllm", "serve", "M", "--api-key", "k-one", "--hf_token=k-two", "--port", "1"]
    env = {"HF_TOKEN": "k-three", "NCCL_P2P_DISABLE": "1"}
    inherited = {"HUGGING_FACE_HUB_TOKEN": "k-four", "PATH": "/bin", "OPENAI_API_KEY": ""}
    values = secret_values(argv, env, inherited, "k-five")
    assert set(values) == {"k-one", "k-two", "k-three", "k-four", "k-five"}


@pytest.mark.parametrize(
    ("extra_args", "env", "key"),
    [
        (["--api-key", "k1"], {}, "k1"),
        (["--api_key=k2"], {}, "k2"),
        (["--api-key", "k1", "--api-key=k3"], {}, "k3"),  # argparse keeps the last
        ([], {"VLLM_API_KEY": "k4"}, "k4"),
        (["--api-key", "k5"], {"VLLM_API_KEY": "k4"}, "k5"),  # vLLM: args.api_key first
        ([], {}, None),
        (["--hf-token", "t"], {"HF_TOKEN": "t"}, None),
    ],
)
def test_profile_api_key(extra_args: list[str], env: dict[str, str], key: str | None) -> None:
    prof = load_profile(
        "h100-bf16-vision",
        parse_set(
            [
                f"extra_args={json.dumps(extra_args)}",
                *(f"serving.env.{k}={v}" for k, v in env.items()),
            ]
        ),
    )
    assert profile_api_key(prof) == key
    plan = build_plan(prof, PlanOptions(vllm_version="0.33.0", detect_installed=False))
    assert plan.api_key == key


def test_a_second_different_key_is_refused_and_the_same_one_is_fine() -> None:
    prof = load_profile("h100-bf16-vision", parse_set(['extra_args=["--api-key", "k1"]']))
    options = dict(vllm_version="0.33.0", detect_installed=False)
    with pytest.raises(ConfigError, match="two API keys") as info:
        build_plan(prof, PlanOptions(api_key="k2", **options))
    assert "k1" not in str(info.value) and "k2" not in str(info.value)
    assert build_plan(prof, PlanOptions(api_key="k1", **options)).api_key == "k1"
    # VLLM_API_KEY in the profile's env is simply replaced by the command line's key.
    prof = load_profile("h100-bf16-vision", parse_set(["serving.env.VLLM_API_KEY=k1"]))
    plan = build_plan(prof, PlanOptions(api_key="k2", **options))
    assert (plan.api_key, plan.env["VLLM_API_KEY"]) == ("k2", "k2")
