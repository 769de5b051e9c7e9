"""The secrets a plan knows (what msmall blanks out of every engine line it shows) and what a
plan never shows: its API key in JSON, a secret flag's value at the end of argv."""

from __future__ import annotations

import pytest

from msmall.backends import PlanOptions, build_plan
from msmall.plan import REDACTED, redact_text, secret_values
from msmall.profiles import load_profile, parse_set


@pytest.fixture(autouse=True)
def _shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "VLLM_API_KEY",
                 "MSMALL_API_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def _plan(backend: str | None = None, *sets: str, **options):
    prof = load_profile("h100-bf16-vision", parse_set(list(sets)))
    return build_plan(
        prof,
        PlanOptions(backend=backend, vllm_version="0.33.0", detect_installed=False, **options),
    )


def test_api_key_never_in_json() -> None:
    plan = _plan(None, api_key="k3y-value-1")
    assert plan.api_key == "k3y-value-1"
    assert plan.to_public_dict()["api_key"] == REDACTED
    # Not a field of any other dump either (the env's VLLM_API_KEY is redacted by the callers).
    assert "api_key" not in plan.model_dump()


def test_process_plan_secrets_include_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host process inherits the shell: HF_TOKEN from there counts, with the key, the secret
    flags of argv and the plan's secret env."""
    monkeypatch.setenv("HF_TOKEN", "hf_shell_token")
    plan = _plan(None, 'extra_args=["--hf-token", "hf_flag_token"]', api_key="k3y-value-1")
    assert set(plan.secrets()) == {"k3y-value-1", "hf_shell_token", "hf_flag_token"}


def test_container_plan_secrets_are_the_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container sees only its own environment (HF_TOKEN is copied into it by name) and its
    command: OPENAI_API_KEY in msmall's shell is not the container's."""
    monkeypatch.setenv("HF_TOKEN", "hf_shell_token")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-the-containers")
    plan = _plan("docker", api_key="k3y-value-1")
    assert set(plan.secrets()) == {"k3y-value-1", "hf_shell_token"}


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["vllm", "serve", "M", "--api-key", "k3y1"], ["k3y1"]),
        (["vllm", "serve", "M", "--api-key=k3y2"], ["k3y2"]),
        (["vllm", "serve", "M", "--api-key"], []),
        (["vllm", "--hf-token", "hf_t", "--api-key", "k3y1"], ["hf_t", "k3y1"]),
    ],
)
def test_secret_values_from_argv(argv: list[str], found: list[str]) -> None:
    assert secret_values(argv, {}) == found


def test_redact_text_blanks_four_characters_and_more() -> None:
    """Values of 4+ characters are blanked; shorter ones would blank random text, so not."""
    assert redact_text("key=abcd end", ["abcd"]) == f"key={REDACTED} end"
    assert redact_text("key=abc end", ["abc"]) == "key=abc end"
    assert redact_text("a b", [None, ""]) == "a b"


def test_repr_of_a_plan_never_shows_a_secret() -> None:
    """repr() is what a traceback under MSMALL_DEBUG and a failing test print."""
    from msmall.backends import PlanOptions, build_plan
    from msmall.profiles import load_profile

    secret = "sk-repr-0123456789abcdef"
    plan = build_plan(
        load_profile("h100-bf16-vision"), PlanOptions(api_key=secret, vllm_version="0.33.0")
    )
    assert secret in " ".join(plan.argv) or secret in str(plan.env), "the plan carries the key"
    assert secret not in repr(plan) and secret not in str(plan)
