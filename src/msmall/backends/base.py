"""What every engine's plan shares: the options, the endpoint and its exposure rule, GPU choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msmall.errors import ConfigError

if TYPE_CHECKING:
    from msmall.backends.engine import Engine, Runtime
    from msmall.profiles import Profile

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


def check_exposure(host: str, api_key: str | None, engine: Engine) -> list[str]:
    """Binding beyond loopback is an explicit choice and must come with a key where possible."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return []
    if not engine.has_api_key:
        return [
            f"{engine.label} has no authentication: anyone who can reach {host} can use this "
            "server. Put it behind a reverse proxy with a key, or keep --host 127.0.0.1."
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
    warnings: list[str] = field(default_factory=list)


def endpoint(profile: Profile, options: PlanOptions, engine: Engine) -> Endpoint:
    host = options.host or profile.serving.host
    port = options.port if options.port is not None else profile.serving.port or engine.default_port
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port", "Choose a port between 1 and 65535.")
    warnings = check_exposure(host, options.api_key, engine)
    # A server bound to every interface is reached on loopback.
    connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in connect:
        connect = f"[{connect}]"
    return Endpoint(host, port, f"http://{connect}:{port}", warnings)


def gpu_env(profile: Profile) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a profile that names its GPUs (its own env setting wins)."""
    ids = profile.hardware.gpu_ids
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)} if ids else {}


def common_fields(
    profile: Profile, options: PlanOptions, ep: Endpoint, engine: Engine, runtime: Runtime
) -> dict:
    """The LaunchPlan fields every engine fills the same way."""
    sv = profile.serving
    return {
        "profile": profile.name,
        "model": profile.model.id,
        "backend": options.backend or profile.backend,
        "engine": engine.name,
        "runtime": runtime,
        "deployment": options.deployment or profile.name,
        "base_url": ep.base_url,
        "flavor": engine.flavor,
        "vision": sv.vision,
        "images_per_prompt": sv.images_per_prompt if sv.vision else 0,
        "tools": sv.tools,
        "max_model_len": sv.max_model_len,
        "warnings": ep.warnings,
    }


def secret_env(api_key: str | None) -> dict[str, str]:
    # The key goes in the environment, not argv, so `ps` on the machine never shows it.
    return {"VLLM_API_KEY": api_key} if api_key else {}
