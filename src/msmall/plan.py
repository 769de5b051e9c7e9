"""LaunchPlan: the one thing every backend produces, and how it is shown.

Dry-run, state files and the runtimes all consume the same plan, so what is printed is exactly
what is run. Secret values live only in memory: every rendering here redacts them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

REDACTED = "***"
# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = frozenset(
    {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "MSMALL_API_KEY", "OPENAI_API_KEY"}
)
# Flags whose next argv item is a secret.
SECRET_FLAGS = frozenset({"--api-key", "--api_key", "--hf-token", "--hf_token"})


class ContainerSpec(BaseModel):
    """What the docker SDK's containers.run() gets (see backends/docker.py)."""

    name: str
    image: str
    command: list[str]
    environment: dict[str, str] = Field(default_factory=dict)
    # container port -> (host address, host port)
    ports: dict[str, tuple[str, int]] = Field(default_factory=dict)
    # host path -> {"bind": container path, "mode": "rw"}
    volumes: dict[str, dict[str, str]] = Field(default_factory=dict)
    gpu_count: int = -1  # -1 = all GPUs
    gpu_device_ids: list[str] | None = None
    ipc_mode: str = "host"
    # An init process as PID 1 (docker run --init): the kernel ignores SIGTERM for a PID 1 with no
    # handler, so without it `docker stop` during vLLM's imports waits out the timeout and kills.
    init: bool = True
    labels: dict[str, str] = Field(default_factory=dict)


class LaunchPlan(BaseModel):
    profile: str
    # The model record's id (models.py).
    model: str
    # What the user chose (--backend), and what it means: the engine and where it runs.
    backend: str
    engine: str
    runtime: Literal["process", "container"] = "process"
    deployment: str
    argv: list[str]
    # Environment msmall sets for the server on top of the inherited one.
    env: dict[str, str] = Field(default_factory=dict)
    base_url: str
    served_model_name: str
    # How health checks talk to it.
    flavor: Literal["vllm", "ollama"] = "vllm"
    engine_version: str | None = None
    vision: bool = True
    images_per_prompt: int = 0
    tools: bool = True
    max_model_len: int | str | None = None
    # Ollama: the tag to pull and preload.
    pull_model: str | None = None
    # Docker only.
    image: str | None = None
    container: ContainerSpec | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    warnings: list[str] = Field(default_factory=list)
    # What msmall decided on the way, for the user (profile chosen, memory check, auto resolved).
    notes: list[str] = Field(default_factory=list)
    # The preflight's verdict (launcher.final_plan): {"verdict", "reason", "forced"}; None for a
    # plan built without looking at the machine.
    preflight: dict[str, Any] | None = None

    def secrets(self) -> list[str]:
        """Every secret value this server could print into its log, to blank out of any text
        msmall shows: the key, secret flags and env of the plan, and for a host process the
        environment it inherits from msmall (HF_TOKEN from the user's shell)."""
        import os

        if self.container is not None:
            return secret_values(
                self.container.command, self.container.environment, None, self.api_key
            )
        return secret_values(self.argv, self.env, os.environ, self.api_key)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def docker_run(self) -> str | None:
        return render_docker_run(self.container) if self.container else None

    def __repr_args__(self) -> Any:
        # repr() shows in a traceback (MSMALL_DEBUG) and in test failures: redacted like JSON.
        public = self.to_public_dict()
        for name, value in super().__repr_args__():
            yield name, public[name] if name in ("argv", "env", "container") else value

    def to_public_dict(self) -> dict[str, Any]:
        """JSON-ready, secrets redacted."""
        data = self.model_dump(mode="json")
        data["argv"] = redact_argv(self.argv)
        data["env"] = redact_env(self.env)
        data["openai_base_url"] = self.openai_base_url
        data["api_key"] = REDACTED if self.api_key else None
        if self.container:
            data["container"]["environment"] = redact_env(self.container.environment)
            data["container"]["command"] = redact_argv(self.container.command)
            data["docker_run"] = self.docker_run()
        return data


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k in SECRET_ENV and v else v) for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for item in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = item.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(item)
                hide_next = True
            continue
        out.append(item)
    return out


def redact_text(text: str, secrets: list[str | None]) -> str:
    """Blank out known secret values in free text (log lines, error messages)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def secret_values(
    argv: list[str],
    env: dict[str, str],
    inherited: Mapping[str, str] | None = None,
    *extra: str | None,
) -> list[str]:
    """Every secret value an engine started with `argv`/`env` could print into its log.

    The inherited environment counts too: the engine sees HF_TOKEN from the user's shell even
    when the plan never names it.
    """
    values: list[str | None] = list(extra)
    for source in (inherited or {}, env):
        values += [v for k, v in source.items() if k in SECRET_ENV]
    for i, item in enumerate(argv):
        flag, eq, value = item.partition("=")
        if flag in SECRET_FLAGS:
            values.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else None))
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen


def _group_flags(argv: list[str]) -> list[list[str]]:
    """['vllm', 'serve', 'M', '--a', '1', '--b'] -> [['vllm', 'serve', 'M'], ['--a', '1'], ['--b']]."""
    groups: list[list[str]] = []
    for item in argv:
        if item.startswith("-") or not groups:
            groups.append([item])
        elif len(groups) > 1 and len(groups[-1]) == 1:
            groups[-1].append(item)
        elif len(groups) == 1:
            groups[0].append(item)
        else:
            groups.append([item])
    return groups


def render_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Shell-quoted, one flag per line, copy-pasteable; secrets redacted."""
    lines = [f"{k}={shlex.quote(v)}" for k, v in redact_env(env or {}).items()]
    groups = _group_flags(redact_argv(argv))
    lines += [" ".join(shlex.quote(part) for part in g) for g in groups]
    return " \\\n  ".join(lines)


def docker_run_argv(spec: ContainerSpec) -> list[str]:
    """The `docker run` equivalent of a container spec (secrets passed by name only)."""
    args = ["docker", "run", "--name", spec.name]
    if spec.gpu_device_ids:
        # docker's --gpus wants the quotes itself when listing several devices.
        args += ["--gpus", f'"device={",".join(spec.gpu_device_ids)}"']
    else:
        args += ["--gpus", "all" if spec.gpu_count == -1 else str(spec.gpu_count)]
    args.append(f"--ipc={spec.ipc_mode}")
    if spec.init:
        args.append("--init")
    for cport, (host, hport) in spec.ports.items():
        args += ["-p", f"{host}:{hport}:{cport.split('/')[0]}"]
    for host_path, vol in spec.volumes.items():
        args += ["-v", f"{host_path}:{vol['bind']}"]
    for key, value in spec.environment.items():
        # Secrets pass by name so the value is read from the caller's environment, never printed.
        args += ["-e", key if key in SECRET_ENV else f"{key}={value}"]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    args.append(spec.image)
    args += redact_argv(spec.command)
    return args


def render_docker_run(spec: ContainerSpec) -> str:
    return render_command(docker_run_argv(spec))
