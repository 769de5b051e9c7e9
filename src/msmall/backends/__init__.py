"""One module per backend; each turns a Profile into a LaunchPlan."""

from __future__ import annotations

from dataclasses import dataclass, replace

from msmall.errors import ConfigError
from msmall.plan import LaunchPlan
from msmall.profiles import BACKENDS, Profile

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class PlanOptions:
    backend: str | None = None  # None: the profile's default
    host: str | None = None
    port: int | None = None
    vllm_version: str | None = None
    api_key: str | None = None
    deployment: str | None = None
    # Host driver major version, when known (Docker picks the -cu129 image below R580).
    driver_major: int | None = None
    # Let the plan detect the installed vllm when no --vllm-version is given.
    detect_installed: bool = True


def resolve_backend(profile: Profile, options: PlanOptions) -> str:
    backend = options.backend or profile.backend
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'", f"Choose one of: {', '.join(BACKENDS)}")
    return backend


def check_exposure(host: str, api_key: str | None, backend: str) -> list[str]:
    """Binding beyond loopback is an explicit choice and must come with a key where possible."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return []
    if backend == "ollama":
        return [
            f"Ollama has no authentication: anyone who can reach {host} can use this server. "
            "Put it behind a reverse proxy with a key, or keep --host 127.0.0.1."
        ]
    if not api_key:
        raise ConfigError(
            f"--host {host} exposes the server beyond this machine without an API key",
            "Pass --api-key (or set MSMALL_API_KEY), or keep the default --host 127.0.0.1.",
        )
    return []


@dataclass
class Endpoint:
    host: str  # the address the server binds
    port: int
    base_url: str  # where msmall and clients connect
    warnings: list[str]


def endpoint(profile: Profile, options: PlanOptions, backend: str) -> Endpoint:
    host = options.host or profile.serving.host
    port = options.port or profile.port_for(backend)
    warnings = check_exposure(host, options.api_key, backend)
    # A server bound to every interface is reached on loopback.
    connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in connect:
        connect = f"[{connect}]"
    return Endpoint(host, port, f"http://{connect}:{port}", warnings)


def gpu_env(profile: Profile) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a profile that names its GPUs (its own env setting wins)."""
    ids = profile.hardware.gpu_ids
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)} if ids else {}


def common_fields(profile: Profile, options: PlanOptions, ep: Endpoint) -> dict:
    """The LaunchPlan fields every backend fills the same way."""
    sv = profile.serving
    return {
        "profile": profile.name,
        "deployment": options.deployment or profile.name,
        "base_url": ep.base_url,
        "vision": sv.vision,
        "images_per_prompt": sv.images_per_prompt if sv.vision else 0,
        "tools": sv.tools,
        "max_model_len": sv.max_model_len,
        "warnings": ep.warnings,
    }


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


def _options_with_profile_key(profile: Profile, options: PlanOptions) -> PlanOptions:
    # The endpoint demands the profile's key: readiness and smoke checks must send that one.
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


def build_plan(profile: Profile, options: PlanOptions | None = None) -> LaunchPlan:
    options = options or PlanOptions()
    backend = resolve_backend(profile, options)
    if backend in ("vllm", "docker"):
        options = _options_with_profile_key(profile, options)
    if options.port is not None and not 1 <= options.port <= 65535:
        raise ConfigError(
            f"--port {options.port} is not a TCP port", "Choose a port between 1 and 65535."
        )
    if backend == "ollama":
        from msmall.backends.ollama import plan_ollama

        return plan_ollama(profile, options)
    if backend == "vllm":
        from msmall.backends.vllm import plan_vllm

        return plan_vllm(profile, options)
    if backend == "docker":
        from msmall.backends.docker import plan_docker

        return plan_docker(profile, options)
    from msmall.backends.simulator import plan_simulator

    return plan_simulator(profile, options)
