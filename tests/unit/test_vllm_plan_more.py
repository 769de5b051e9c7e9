"""vLLM's command line for settings the golden plans do not exercise: data parallel, an FP8
cache, Mistral-format flags in extra_args, and the API key a profile hands vLLM."""

from __future__ import annotations

import json

import pytest

from msmall.backends import PlanOptions, build_plan
from msmall.errors import ConfigError
from msmall.profiles import load_profile, parse_set


def _argv(name: str, *sets: str, **options) -> list[str]:
    prof = load_profile(name, parse_set(list(sets)))
    opts = PlanOptions(vllm_version="0.33.0", detect_installed=False, **options)
    return build_plan(prof, opts).argv


def _after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_data_parallel_is_passed_only_above_one() -> None:
    """vllm/engine/arg_utils.py --data-parallel-size: one API server, N engines."""
    dp = _argv("h100-bf16-vision", "serving.data_parallel_size=2", "hardware.gpu_count=2")
    assert _after(dp, "--data-parallel-size") == "2"
    assert "--data-parallel-size" not in _argv("h100-bf16-vision")


def test_fp8_cache_flag() -> None:
    assert (
        _after(_argv("h100-bf16-vision", "serving.kv_cache_dtype=fp8"), "--kv-cache-dtype") == "fp8"
    )
    assert "--kv-cache-dtype" not in _argv("h100-bf16-vision")


def test_text_only_limits_images_to_zero() -> None:
    argv = _argv("h100-bf16-vision", "serving.vision=false")
    assert _after(argv, "--limit-mm-per-prompt") == '{"image":0}'


@pytest.mark.parametrize(
    "args",
    [["--load-format", "mistral"], ["--load_format=mistral"], ["--config-format=mistral"],
     ["--config_format", "mistral"]],
)  # fmt: skip
def test_mistral_format_in_extra_args_refused_on_hf_repos(args: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        _argv("2x4090-fp8-vision", f"extra_args={json.dumps(args)}")
    assert "ships HF shards only" in info.value.message


def test_other_formats_in_extra_args_pass_on_hf_repos() -> None:
    argv = _argv("2x4090-fp8-vision", 'extra_args=["--load-format", "safetensors"]')
    assert argv[-2:] == ["--load-format", "safetensors"]


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--api-key", "a1"], {}, "a1"),
        (["--api_key=a2"], {}, "a2"),
        (["--api-key", "a1", "--api-key=a3"], {}, "a3"),  # argparse keeps the last
        ([], {"VLLM_API_KEY": "e1"}, "e1"),
        (["--api-key", "a1"], {"VLLM_API_KEY": "e1"}, "a1"),  # args.api_key or envs.VLLM_API_KEY
        (["--api-key"], {}, None),
    ],
)
def test_the_profiles_own_key_is_the_plans(args, env, key) -> None:
    """vllm/entrypoints/openai/api_server.py build_app: `args.api_key or envs.VLLM_API_KEY`."""
    sets = [f"extra_args={json.dumps(args)}"] + [f"serving.env.{k}={v}" for k, v in env.items()]
    prof = load_profile("h100-bf16-vision", parse_set(sets))
    plan = build_plan(prof, PlanOptions(vllm_version="0.33.0", detect_installed=False))
    assert plan.api_key == key


def test_same_key_twice_is_fine_a_different_one_is_refused() -> None:
    prof = load_profile("h100-bf16-vision", parse_set(['extra_args=["--api-key", "a1"]']))
    same = build_plan(
        prof, PlanOptions(vllm_version="0.33.0", detect_installed=False, api_key="a1")
    )
    assert same.api_key == "a1"
    with pytest.raises(ConfigError) as info:
        build_plan(prof, PlanOptions(vllm_version="0.33.0", detect_installed=False, api_key="b2"))
    assert info.value.message.startswith("two API keys")
    env_only = load_profile("h100-bf16-vision", parse_set(["serving.env.VLLM_API_KEY=e1"]))
    # A key only in the profile's env and another on the command line: the command line's
    # goes into the plan's environment (secret_env) and wins there.
    cli = build_plan(
        env_only, PlanOptions(vllm_version="0.33.0", detect_installed=False, api_key="b2")
    )
    assert cli.api_key == "b2"
    assert cli.env["VLLM_API_KEY"] == "b2"


@pytest.mark.parametrize(
    "args",
    [["--api-key=a1"], ["--api_key", "a1"], ["--api_key=a1"]],
    ids=["eq", "underscore", "underscore-eq"],
)
def test_two_keys_refused_in_every_spelling(args: list[str]) -> None:
    prof = load_profile("h100-bf16-vision", parse_set([f"extra_args={json.dumps(args)}"]))
    with pytest.raises(ConfigError) as info:
        build_plan(prof, PlanOptions(vllm_version="0.33.0", detect_installed=False, api_key="b2"))
    assert info.value.message.startswith("two API keys")
