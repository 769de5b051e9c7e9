"""vLLM: `vllm serve MODEL` with exactly the flags this model and this vLLM version need."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from msmall.backends.base import PlanOptions, common_fields, endpoint, gpu_env, secret_env
from msmall.backends.vllm import versions
from msmall.errors import ConfigError
from msmall.models import get_model
from msmall.plan import LaunchPlan

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.profiles import Profile


def target_vllm_version(profile: Profile, options: PlanOptions, use_installed: bool = True) -> str:
    model = get_model(profile.model.id)
    if options.vllm_version:
        return versions.check_vllm_version(options.vllm_version, model)
    if use_installed and options.detect_installed:
        installed = versions.installed_vllm_version()
        if installed:
            return versions.check_vllm_version(installed, model)
    return versions.VLLM_LATEST


def vllm_flags(profile: Profile, version: str, host: str, port: int) -> list[str]:
    """The flags after the model, shared by `vllm serve` and the Docker image's command."""
    sv = profile.serving
    flags = ["--served-model-name", sv.served_model_name, "--host", host, "--port", str(port)]
    if profile.model.hf_format == "mistral":
        # Mistral-native repo: read consolidated.safetensors/params.json/tekken.json. Never for
        # HF-only repos (every quantized RedHatAI build): vLLM would find no weights there.
        flags += [
            "--tokenizer-mode", "mistral",
            "--config-format", "mistral",
            "--load-format", "mistral",
        ]  # fmt: skip
    max_len = sv.max_model_len
    if max_len == "auto" and not versions.at_least(version, versions.VLLM_MAX_LEN_AUTO_FROM):
        raise ConfigError(
            f"max_model_len=auto needs vLLM {versions.VLLM_MAX_LEN_AUTO_FROM}+ (target: {version})",
            "Give a number, e.g. --set max_model_len=32768, or run `msmall serve` where GPUs "
            "are visible so msmall picks the largest context that fits.",
        )
    flags += [
        "--max-model-len", str(max_len),
        # repr: the shortest exact spelling (':g' rounds to 6 digits).
        "--gpu-memory-utilization", repr(sv.gpu_memory_utilization),
        "--tensor-parallel-size", str(sv.tensor_parallel_size),
        "--max-num-seqs", str(sv.max_num_seqs),
    ]  # fmt: skip
    if sv.data_parallel_size > 1:
        # In-process data parallelism (vllm/engine/arg_utils.py, --data-parallel-size): one API
        # server in front of data_parallel_size engines, each on its own TP group.
        flags += ["--data-parallel-size", str(sv.data_parallel_size)]
    if sv.kv_cache_dtype != "auto":
        flags += ["--kv-cache-dtype", sv.kv_cache_dtype]
    images = sv.images_per_prompt if sv.vision else 0
    flags += ["--limit-mm-per-prompt", versions.limit_mm_per_prompt(version, images)]
    if sv.tools:
        # Without both, tool calls come back as plain text in `content`.
        flags += ["--tool-call-parser", "mistral", "--enable-auto-tool-choice"]
    versions.check_extra_args(sv.extra_args, version)
    mistral_flag = _mistral_format_flag(sv.extra_args)
    if mistral_flag and profile.model.hf_format == "hf":
        raise ConfigError(
            f"extra_args has {mistral_flag} mistral, but {profile.model.hf_repo} ships HF "
            "shards only: vLLM would find no weights",
            "Remove it from extra_args (or set model.hf_format: mistral for a Mistral-native repo).",
        )
    flags += sv.extra_args
    return flags


def _mistral_format_flag(args: list[str]) -> str | None:
    """'--load-format' / '--config-format' when extra_args ask for the Mistral format."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        flag = flag.replace("_", "-")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag in ("--load-format", "--config-format") and value == "mistral":
            return flag
    return None


def profile_api_key(profile: Profile) -> str | None:
    """The key a profile hands vLLM itself: the last --api-key in extra_args, else VLLM_API_KEY.

    vLLM takes `args.api_key or envs.VLLM_API_KEY` (vllm/entrypoints/openai/api_server.py,
    build_app), and argparse keeps the last of repeated flags.
    """
    key = None
    args = profile.serving.extra_args
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in ("--api-key", "--api_key"):
            key = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return key or profile.serving.env.get("VLLM_API_KEY") or None


def with_profile_key(profile: Profile, options: PlanOptions) -> PlanOptions:
    """Options whose api_key is the one the server will demand, so readiness and smoke checks
    send that key; two different keys are refused."""
    key = profile_api_key(profile)
    if key is None or key == options.api_key:
        return options
    if options.api_key is not None and any(
        a.partition("=")[0] in ("--api-key", "--api_key") for a in profile.serving.extra_args
    ):
        raise ConfigError(
            "two API keys: --api-key (or MSMALL_API_KEY) and --api-key in the profile's extra_args",
            "Keep one: drop --api-key from serving.extra_args, or from the command line.",
        )
    return options if options.api_key is not None else replace(options, api_key=key)


def plan_vllm(profile: Profile, options: PlanOptions, engine: Engine) -> LaunchPlan:
    options = with_profile_key(profile, options)
    version = target_vllm_version(profile, options)
    ep = endpoint(profile, options, engine)
    argv = ["vllm", "serve", profile.model.hf_repo, *vllm_flags(profile, version, ep.host, ep.port)]
    return LaunchPlan(
        **common_fields(profile, options, ep, engine, "process"),
        argv=argv,
        env={**gpu_env(profile), **profile.serving.env, **secret_env(options.api_key)},
        served_model_name=profile.serving.served_model_name,
        engine_version=version,
        api_key=options.api_key,
    )
