"""What every engine's plan shares: the options, the endpoint and its exposure rule, GPU choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msmall.errors import ConfigError

if TYPE_CHECKING:
    from msmall.backends.engine import Engine, Runtime
    from msmall.profiles import Profile

LOOPBACK_NAMES = frozenset({"localhost"})
# Flags that move the bind: only --host/--port (serving.host/port) may set it, through the
# exposure check below. argparse takes unambiguous prefixes (--hos), and vLLM's --config YAML
# can carry `host:` too.
BIND_FLAGS = ("--host", "--port")
BIND_FILE_FLAGS = ("--config",)
# Environment that sets where an engine listens.
BIND_ENV = frozenset({"OLLAMA_HOST"})


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
    # Bind an engine that has no authentication (Ollama) beyond loopback anyway.
    allow_unauthenticated: bool = False


def is_loopback(host: str) -> bool:
    """Only addresses that are loopback by the IP rules (127.0.0.0/8, ::1) or 'localhost'.
    '127.0.0.1.example.com' starts with '127.' and resolves anywhere."""
    import ipaddress

    name = host.strip().lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def check_api_key(api_key: str | None) -> None:
    """A key is sent as `Authorization: Bearer KEY`: it must be a non-empty header token."""
    import re

    if api_key is None:
        return
    if not api_key.strip():
        raise ConfigError(
            "the API key is empty",
            "Pass a real key with --api-key (or MSMALL_API_KEY), or leave both unset.",
        )
    if not re.fullmatch(r"[\x21-\x7e]+", api_key):
        raise ConfigError(
            "the API key cannot be sent in an HTTP header "
            "(it has spaces, control or non-ASCII characters)",
            "Use printable ASCII without spaces, e.g. `openssl rand -hex 24`.",
        )


def check_bind_routes(profile: Profile) -> None:
    """Refuse every way around --host/--port: bind flags in extra_args, bind variables in env."""
    for arg in profile.serving.extra_args:
        flag = arg.split("=", 1)[0].replace("_", "-")
        if not flag.startswith("--") or len(flag) < 3:
            continue
        for bind in BIND_FLAGS:
            if bind.startswith(flag):
                raise ConfigError(
                    f"serving.extra_args sets {bind} ({arg})",
                    f"Use serving.{bind[2:]} in the profile or {bind} on the command line: "
                    "both go through the exposure check.",
                )
        if flag in BIND_FILE_FLAGS:
            raise ConfigError(
                f"serving.extra_args passes {flag}: a config file can move the bind address",
                "Put those settings in the profile (serving.*, extra_args) instead.",
            )
    for var in profile.serving.env:
        if var.upper() in BIND_ENV:
            raise ConfigError(
                f"serving.env sets {var}, which decides where the server listens",
                "Use serving.host / serving.port or --host / --port instead.",
            )


def check_exposure(
    host: str, api_key: str | None, engine: Engine, allow_unauthenticated: bool = False
) -> list[str]:
    """Binding beyond loopback is an explicit choice and must come with a key; an engine that
    has no authentication (Ollama) is refused unless the user says so in as many words."""
    if not host.strip() or host != host.strip():
        raise ConfigError(f"--host {host!r} is not an address", "Example: --host 127.0.0.1")
    if is_loopback(host):
        return []
    if not engine.has_api_key:
        warning = (
            f"{engine.label} has no authentication: anyone who can reach {host} can use this "
            "server. Put it behind a reverse proxy with a key, or keep --host 127.0.0.1."
        )
        if not allow_unauthenticated:
            raise ConfigError(
                f"--host {host} would expose {engine.label}, which has no authentication, "
                "beyond this machine",
                "Keep --host 127.0.0.1 (put a reverse proxy with a key in front), or pass "
                "--allow-unauthenticated if anyone who can reach it may use it.",
            )
        return [warning]
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
    check_api_key(options.api_key)
    check_bind_routes(profile)
    warnings = check_exposure(host, options.api_key, engine, options.allow_unauthenticated)
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
