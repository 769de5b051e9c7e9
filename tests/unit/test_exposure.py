"""No way around the exposure rule (issue 9, class 4): every route to a non-loopback bind goes
through one check, and keys are usable HTTP header values."""

from __future__ import annotations

import json

import pytest

from msmall.backends import build_plan
from msmall.backends.base import PlanOptions, is_loopback
from msmall.errors import ConfigError
from msmall.profiles import load_profile, parse_set

KEY = "k-0123456789abcdef"


def plan(ref: str, *sets: str, **opts):
    opts.setdefault("detect_installed", False)
    return build_plan(load_profile(ref, parse_set(list(sets))), PlanOptions(**opts))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.4.5.6", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("127.0.0.1.nip.io", False),
        ("127.evil.example", False),
        ("127.1", False),  # not an address Python's ipaddress accepts: resolved like any name
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback_is_what_ipaddress_says(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
@pytest.mark.parametrize("host", ["127.0.0.1.nip.io", "127.attacker.example"])
def test_hosts_that_start_with_127_need_a_key(backend: str, host: str) -> None:
    with pytest.raises(ConfigError, match="without an API key"):
        plan("4090-q4", backend=backend, host=host)


@pytest.mark.parametrize("backend", ["vllm", "docker", "simulator"])
@pytest.mark.parametrize(
    "args",
    [
        ["--host", "0.0.0.0"],
        ["--host=0.0.0.0"],
        ["--hos", "0.0.0.0"],
        ["--port", "9"],
        ["--port=9"],
        ["--config", "/tmp/c.yaml"],
    ],
)
def test_bind_flags_in_extra_args_are_refused(backend: str, args: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"extra_args (sets|passes) --"):
        plan("4090-q4", f"extra_args={json.dumps(args)}", backend=backend)


def test_ollama_host_in_env_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"serving\.env sets OLLAMA_HOST"):
        plan("4090-q4", "serving.env.OLLAMA_HOST=0.0.0.0:11434", backend="ollama")


def test_ollama_beyond_loopback_needs_the_honest_flag() -> None:
    with pytest.raises(ConfigError, match="--allow-unauthenticated"):
        plan("4090-q4", backend="ollama", host="0.0.0.0")
    # An API key does not help: Ollama would not check it.
    with pytest.raises(ConfigError, match="no authentication"):
        plan("4090-q4", backend="ollama", host="0.0.0.0", api_key=KEY)
    p = plan("4090-q4", backend="ollama", host="0.0.0.0", allow_unauthenticated=True)
    assert any("no authentication" in w for w in p.warnings)


@pytest.mark.parametrize("key", ["", " ", "\t\n"])
def test_empty_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="API key is empty"):
        plan("4090-q4", backend="vllm", api_key=key)


@pytest.mark.parametrize("key", ["two words", "ключ", "a\nb", "a\x00b", " lead", "trail "])
def test_keys_that_cannot_be_headers_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="cannot be sent in an HTTP header") as info:
        plan("4090-q4", backend="vllm", api_key=key)
    assert key not in info.value.message


def test_a_good_key_on_a_lan_address_is_fine() -> None:
    p = plan("4090-q4", backend="vllm", host="192.168.1.20", api_key=KEY)
    assert p.api_key == KEY
