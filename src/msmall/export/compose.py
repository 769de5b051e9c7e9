"""Docker Compose: the container plan as one service, for Compose v2 and Debian's docker-compose.

What the plan's `docker run` has, Compose gets: the GPU device reservation (count or the device
ids), `ipc: host` (vLLM's NCCL and shm queues need more than Docker's 64 MiB /dev/shm), the port
published on the plan's host address (127.0.0.1 unless --host), the HF cache, and secrets by name
(`- HF_TOKEN` takes the value from the shell or a `.env` next to the file). On top: a restart
policy and a health check on /health whose start period covers a first download.
Ollama: the ollama/ollama image, its model store in a named volume, and a one-shot `pull`
service that waits for the server to be healthy and pulls the profile's tag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmall.export import (
    API_KEY_ENV,
    HF_TOKEN_ENV,
    OLLAMA_PORT,
    Export,
    ExportOptions,
    dump_yaml,
    header,
    public_env,
    safe_name,
    secret_instructions,
    startup_budget_s,
)

if TYPE_CHECKING:
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

FILENAME = "compose.yaml"
OLLAMA_IMAGE = "ollama/ollama:latest"
# Python, not curl: vLLM's image has both (docker/Dockerfile, vllm-base), but the server needs
# Python, so the probe depends on nothing else.
_PY_HEALTH = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5)"
)


def gpu_reservation(count: int, device_ids: list[str] | None) -> dict:
    device: dict = {"driver": "nvidia"}
    if device_ids:
        device["device_ids"] = list(device_ids)
    else:
        device["count"] = "all" if count < 0 else count
    device["capabilities"] = ["gpu"]
    return {"resources": {"reservations": {"devices": [device]}}}


def healthcheck(test: list[str], start_s: int) -> dict:
    # interval x retries after the start period: a hung server is marked unhealthy in 90 s;
    # failures inside start_period do not count, so a 20-minute first download is no failure.
    return {
        "test": test,
        "interval": "30s",
        "timeout": "10s",
        "retries": 3,
        "start_period": f"{start_s}s",
    }


def _environment(env: dict[str, str], secrets: list[str]) -> list[str]:
    plain, secret = public_env(env)
    names = list(dict.fromkeys([*secret, *secrets]))
    return [f"{k}={v}" for k, v in plain.items()] + names


def render(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    if plan.engine == "ollama":
        return _render_ollama(plan, profile, opts)
    spec = plan.container
    assert spec is not None, "compose renders container plans"
    service = safe_name(plan.deployment)
    secrets = [HF_TOKEN_ENV] + ([API_KEY_ENV] if plan.api_key else [])
    ((cport, (host, hport)),) = spec.ports.items()
    cport = cport.split("/")[0]
    budget = startup_budget_s(profile)
    svc: dict = {
        "image": opts.image or spec.image,
        "command": list(spec.command),
        "environment": _environment(spec.environment, secrets),
        "ports": [f"{host}:{hport}:{cport}"],
        "volumes": [f"{src}:{v['bind']}" for src, v in spec.volumes.items()],
        "ipc": spec.ipc_mode,
        "restart": "unless-stopped",
        "deploy": gpu_reservation(spec.gpu_count, spec.gpu_device_ids),
        "healthcheck": healthcheck(["CMD", "python3", "-c", _PY_HEALTH.format(port=cport)], budget),
        "labels": dict(spec.labels),
    }
    text = header(plan, "compose") + (
        f"# Health: /health answers without the API key; start_period {budget}s covers a cold\n"
        f"# download of the weights at 50 MB/s plus 300 s of load (docs/export.md).\n"
    )
    text += dump_yaml({"services": {service: svc}})
    return Export({FILENAME: text}, _instructions(secrets, plan))


def _render_ollama(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    service = safe_name(plan.deployment)
    bind = plan.env.get("OLLAMA_HOST", f"127.0.0.1:{OLLAMA_PORT}")
    host, _, port = bind.rpartition(":")
    env = {**plan.env, "OLLAMA_HOST": f"0.0.0.0:{OLLAMA_PORT}"}
    image = opts.image or OLLAMA_IMAGE
    # `ollama list` talks to the server over OLLAMA_HOST: a health check without curl.
    server: dict = {
        "image": image,
        "environment": _environment(env, []),
        "ports": [f"{host or '127.0.0.1'}:{port or OLLAMA_PORT}:{OLLAMA_PORT}"],
        "volumes": ["ollama:/root/.ollama"],
        "restart": "unless-stopped",
        "deploy": gpu_reservation(profile.hardware.gpu_count or -1, profile.hardware.gpu_ids),
        "healthcheck": healthcheck(["CMD", "ollama", "list"], 60),
        "labels": {"msmall.deployment": plan.deployment, "msmall.profile": plan.profile},
    }
    pull: dict = {
        "image": image,
        "command": ["pull", plan.pull_model or plan.served_model_name],
        "environment": [f"OLLAMA_HOST={service}:{OLLAMA_PORT}"],
        "depends_on": {service: {"condition": "service_healthy"}},
        "restart": "no",
    }
    text = header(plan, "compose") + (
        f"# `{service}-pull` runs once the server is healthy and pulls {plan.pull_model}\n"
        "# (about 15 GB the first time); the server keeps it in the `ollama` volume.\n"
    )
    text += dump_yaml(
        {"services": {service: server, f"{service}-pull": pull}, "volumes": {"ollama": {}}}
    )
    return Export({FILENAME: text}, _instructions([], plan))


def _instructions(secrets: list[str], plan: LaunchPlan) -> list[str]:
    lines = secret_instructions("shell", secrets, "docker compose up -d")
    if secrets:
        lines.append("(or write them to a .env file next to compose.yaml, mode 600)")
    lines.append(f"then: docker compose up -d && msmall health {plan.base_url}")
    return lines
